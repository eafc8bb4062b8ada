"""The PyTorch trainer (no Ray, no MLflow in its import path).

``train``, ``evaluate``, ``pick_device``, ``DistInfo`` and ``export_run`` load
torch on first use, so ``dsr_tune.train.metrics`` stays light.
"""

_LAZY = {"train": "recipe", "evaluate": "loop", "pick_device": "setup", "DistInfo": "setup",
         "export_run": "export", "load_exported": "export"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
