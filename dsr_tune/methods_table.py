"""Every method label of the comparison and what it is, in one table. Imports nothing.

The config (which ``sparsity.method`` values exist), the trainer's baseline
hooks (``dsr_tune.baselines.setup``: which methods it builds, which have no
masks), the derivation of each row's config (``dsr_tune.baselines.derive``)
and ``dsr-tune compare`` (its default rows) all read their lists from here, so
a new method is added in one place. The config module must stay importable
without torch, hence a module of its own outside ``dsr_tune.baselines``.

Columns of :data:`TABLE`:

- ``runs``: the ``sparsity.method`` the row trains with (the label itself,
  except for the ablations: static on other masks, and ``dsr_stop``: dsr);
- ``kind``: "dense", "static" (fixed masks), "dynamic" (the sparse registry's
  reallocation methods, ``dsr_tune.sparse.METHODS``), "baseline" (model or
  masking built by ``dsr_tune.baselines.setup``) or "ablation";
- ``masks``: the run has a masking (False: dense, thin dense, HashedNet);
- ``stretched``: trained ``sparsity.epoch_factor`` x the DSR run's epochs;
- ``needs``: the finished run it starts from: "dsr", "dense" or None;
- ``default``: a row of ``dsr-tune compare`` when no ``--methods`` is given
  (the ablations come on request: ``--methods ablations``).
"""

from __future__ import annotations

from typing import NamedTuple


class Method(NamedTuple):
    label: str
    runs: str
    kind: str
    masks: bool = True
    stretched: bool = False
    needs: str | None = None
    default: bool = True


#: In the order of the comparison's rows. ``dsr_stop`` takes an argument: ``dsr_stop:E``.
TABLE: tuple[Method, ...] = (
    Method("dense", "dense", "dense", masks=False),
    Method("thin_dense", "thin_dense", "baseline", masks=False, stretched=True),
    Method("static", "static", "static", stretched=True),
    Method("gmp", "gmp", "baseline", needs="dense"),
    Method("hashednet", "hashednet", "baseline", masks=False),
    Method("dsd", "dsd", "baseline"),
    Method("dsr", "dsr", "dynamic"),
    Method("set", "set", "dynamic"),
    Method("deepr", "deepr", "dynamic"),
    Method("rigl", "rigl", "dynamic"),
    Method("snfs", "snfs", "dynamic"),
    Method("final_reinit", "static", "ablation", needs="dsr", default=False),
    Method("final_init", "static", "ablation", needs="dsr", default=False),
    Method("random_control", "static", "ablation", default=False),
    Method("dsr_stop", "dsr", "ablation", default=False),
)
BY_LABEL: dict[str, Method] = {m.label: m for m in TABLE}
PARAMETRIC = ("dsr_stop",)  # labels written label:E


def labels(**where) -> tuple[str, ...]:
    """Labels whose columns equal ``where`` (e.g. ``labels(kind="ablation")``), in table order."""
    return tuple(m.label for m in TABLE if all(getattr(m, k) == v for k, v in where.items()))


#: ``sparsity.method`` values whose model or masking ``dsr_tune.baselines.setup`` builds
BASELINE_METHODS = labels(kind="baseline")
#: ``sparsity.method`` values with no masking at all
NO_MASKS = labels(masks=False)
#: every ``sparsity.method`` value a config may hold
CONFIG_METHODS = tuple(dict.fromkeys(m.runs for m in TABLE))
