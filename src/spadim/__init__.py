"""spadim: visual anomaly detection from good images only (SPADE, PaDiM, PatchCore), evaluated per pixel,
with calibrated OK/defect decisions and defect regions for inspection."""

__version__ = "0.1.0"
