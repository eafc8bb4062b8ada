"""The saved state of a method's parts, written once.

A part whose whole state is a few attributes declares them in its class body::

    class ThresholdPrune:
        state_dict, load_state_dict = saved_state(threshold=float)

and gets ``state_dict() -> {"threshold": ...}`` and the matching
``load_state_dict``, so a checkpoint's keys are the attribute names. Each
attribute is a number (loaded through its type, ``int`` or ``float``) or,
marked :data:`PER_TENSOR`, a ``{parameter name: tensor}`` dict: saved on the
CPU, and loaded in place, each tensor onto the device of the one it replaces
(a name not there yet is kept as saved). No imports: torch is not needed.
"""

from __future__ import annotations

from collections.abc import Callable

PER_TENSOR = "per tensor"  # a {parameter name: tensor} attribute


def saved_state(**fields: type | str) -> tuple[Callable, Callable]:
    """``(state_dict, load_state_dict)`` over the attributes ``fields``
    (name -> ``int``, ``float`` or :data:`PER_TENSOR`), for a class body."""

    def state_dict(self) -> dict:
        return {name: {n: t.cpu() for n, t in getattr(self, name).items()} if kind == PER_TENSOR
                else getattr(self, name) for name, kind in fields.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, kind in fields.items():
            if kind != PER_TENSOR:
                setattr(self, name, kind(state[name]))
                continue
            own = getattr(self, name)
            for n, t in state[name].items():
                own[n] = t.to(own[n].device) if n in own else t

    return state_dict, load_state_dict
