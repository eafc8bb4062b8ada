"""The PyTorch trainer (no Ray, no MLflow in its import path)."""

from .trainer import DistInfo, evaluate, pick_device, train

__all__ = ["DistInfo", "evaluate", "pick_device", "train"]
