"""spadim: SPADE and PaDiM anomaly detection on normal-only training data."""

__version__ = "0.1.0"
