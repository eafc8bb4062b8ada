"""A digest of a masking's state, equal on every DDP rank that took the same decisions."""

from __future__ import annotations

import hashlib

import torch

from ..sparse import Masking


def _feed(h, obj) -> None:
    """Hash a nested state (dicts, lists, tensors, numbers) in a fixed order."""
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _feed(h, v)
    elif torch.is_tensor(obj):
        h.update(obj.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(repr(obj).encode())


def _without_per_weight(obj):
    """A method state minus its per-weight tensors (DeepR's signs, SNFS's
    dense momentum): the scalars and counters that decide reallocations."""
    if isinstance(obj, dict):
        return {k: _without_per_weight(v) for k, v in obj.items() if not _per_weight(v)}
    return obj


def _per_weight(v) -> bool:
    if torch.is_tensor(v):
        return v.numel() > 64
    return isinstance(v, dict) and any(torch.is_tensor(t) and t.numel() > 64 for t in v.values())


def mask_fingerprint(masking: Masking) -> str:
    """A short digest of the masks, the generator and the method's scalar state.

    Equal on every DDP rank when all ranks took the same reallocation
    decisions; logged per epoch so that can be checked. Per-weight method
    state follows from the rest, and hashing it would copy every weight to
    the host each epoch.
    """
    h = hashlib.sha256()
    state = masking.state_dict()
    _feed(h, {"masks": state["masks"], "generator": state["generator"],
              "method": _without_per_weight(state["method"])})
    return h.hexdigest()[:16]
