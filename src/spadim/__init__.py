"""spadim: visual anomaly detection from good images only (SPADE, PaDiM, PatchCore), evaluated per pixel,
with calibrated OK/defect decisions and defect regions for inspection.

    from spadim import Inspector, PatchCore
    inspector = Inspector(PatchCore(layers="auto"), backbone="resnet50_caffe", far=0.05).fit("good/")
    prediction = inspector.predict("part.png")

The names below load on first use, so ``import spadim`` alone stays light and sets nothing global.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Inspector": ("spadim.inspect", "Inspector"),
    "Prediction": ("spadim.inspect", "Prediction"),
    "PatchCore": ("spadim.methods", "PatchCore"),
    "PaDiM": ("spadim.methods", "Padim"),
    "SPADE": ("spadim.methods", "Spade"),
    "SpadimError": ("spadim.errors", "SpadimError"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spadim' has no attribute {name!r}")
    import importlib

    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value
