"""Dense: the full network, no masks (the reference row)."""

from .registry import Method, register

register(Method("dense", "dense", "the full dense network, the same epochs as DSR", masks=False,
                masking=lambda cfg, model, optimizer, steps_per_epoch: None))
