"""Static sparse: a fixed random mask, never reallocated (the paper's baseline,
trained at 1x and at ``sparsity.epoch_factor`` x DSR's epochs)."""

from .registry import Method, register

register(Method("static", "static", "fixed random masks, never reallocated", controls=True))
