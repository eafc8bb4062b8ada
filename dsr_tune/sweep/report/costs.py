"""What each row of the table cost, against the dense run: training FLOPs as a
multiple of the dense run's at 1x (the DSR run's epochs), inference FLOPs per
image as a fraction of the dense model's, the mean wall time and the device.

The dense reference is the table's own dense row when it has one; otherwise it
is computed from the records: the dense model's forward FLOPs per image (each
run records it, ``dense_flops``) times 3 (a training image costs three
forwards, see :mod:`dsr_tune.train.flops`) times the training images an epoch
of DSR's run saw times DSR's epochs. A row that starts from another run (GMP
from the dense run, the ablations from DSR's) shows that run's multiple apart,
``+ parent``: its own count holds only its own training. Pure: no files.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..terms import DENSE, REFERENCE


@dataclass
class Cost:
    """A row's mean cost over its runs (None where a run did not record it)."""

    train_flops: float | None
    infer_flops: float | None
    train_time: float | None
    device: str
    dense_flops: float | None = None     # the dense model's forward FLOPs per image (the unit)
    epoch_images: float | None = None    # training images an epoch
    train_x: float | None = None         # train_flops / the dense run's at 1x
    infer_x: float | None = None         # infer_flops / dense_flops
    parent_x: float | None = None        # the run it starts from, in the same unit


def _mean(runs, key: str) -> float | None:
    values = [r.metrics.get(key) for r in runs]
    return statistics.mean(values) if values and all(isinstance(v, (int, float)) for v in values) else None


def of_runs(runs) -> Cost:
    """The mean cost of one row's runs (:class:`~.stats.RunRow`)."""
    images = [r.metrics["train_images"] / r.metrics["epochs_done"] for r in runs
              if r.metrics.get("train_images") and r.metrics.get("epochs_done")]
    return Cost(_mean(runs, "train_flops"), _mean(runs, "infer_flops"), _mean(runs, "train_time"),
                ", ".join(sorted({r.device for r in runs if r.device})) or "-", _mean(runs, "dense_flops"),
                statistics.mean(images) if images else None)


def reference(lines) -> tuple[float | None, str]:
    """The dense run's training FLOPs at 1x for one section's lines, and a sentence saying where it is from."""
    by = {ln.method: ln for ln in lines}
    dense = by.get(DENSE)
    if dense is not None and dense.cost.train_flops:
        return dense.cost.train_flops, "the dense row's own training FLOPs"
    unit = next((ln.cost.dense_flops for ln in lines if ln.cost.dense_flops), None)
    ref = by.get(REFERENCE) or next((ln for ln in lines if ln.cost.epoch_images), None)
    if not unit or ref is None or not ref.cost.epoch_images:
        return None, "no dense reference: the runs recorded no dense FLOPs or training images"
    images = ref.cost.epoch_images * ref.epochs
    return 3 * unit * images, (f"no dense row: computed as 3 x the dense model's {unit:,.0f} forward FLOPs per image "
                               f"x {images:,.0f} training images ({ref.epochs} epochs of {ref.method}'s run)")


def attach(lines) -> str:
    """Set every line's multiples (in place); returns where the reference came from."""
    from ... import methods

    ref, said = reference(lines)
    by = {ln.method: ln for ln in lines}
    for ln in lines:
        c = ln.cost
        c.train_x = c.train_flops / ref if ref and c.train_flops is not None else None
        c.infer_x = c.infer_flops / c.dense_flops if c.dense_flops and c.infer_flops is not None else None
    for ln in lines:
        entry = methods.REGISTRY.get(ln.method.partition(":")[0])
        parent = by.get(entry.needs) if entry is not None and entry.needs else None
        if parent is not None:
            ln.cost.parent_x = parent.cost.train_x
    return said
