"""The comparison's rows: a label a user writes, what rows it stands for, and
how a row's config differs from the DSR config it is compared with.

A row is a registered method (or ablation) at an epoch budget; a control
(static, thin dense) comes at 1x the DSR run's epochs, which separates the
method from the training length, at ``sparsity.epoch_factor`` x, the
paper's rule, and on request compute-matched (``static_cm``): as many epochs
as the DSR run of its sparsity and seed spent training FLOPs, which asks
"better at equal training compute?" directly. :func:`row_config` (and
:func:`matched` for the compute-matched epochs, known once DSR has trained)
is the only place that knows how a row's config differs from DSR's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import config as C
from .. import methods
from .terms import REFERENCE, slug


MATCHED = "cm"  # a control's compute-matched budget, as its label writes it: static_cm


@dataclass(frozen=True)
class Row:
    label: str             # dsr, static_1x, static_2x, static_cm, gmp, dsr_stop:5, ...
    method: str            # the registry entry
    factor: float = 1.0    # epochs x the DSR config's
    arg: int | None = None  # dsr_stop's epoch
    matched: bool = False  # epochs bought by the DSR run's measured training FLOPs (:func:`matched`)

    @property
    def needs(self) -> str | None:
        """The finished run this row waits for: the one it starts from, or for a
        compute-matched row the DSR run whose training FLOPs set its epochs."""
        return REFERENCE if self.matched else methods.get(self.method).needs

    @property
    def slug(self) -> str:
        """The label as a folder name."""
        return slug(self.label)


def _factor_label(factor: float) -> str:
    return f"{factor:g}x"


def parse(label: str, epoch_factor: float) -> list[Row]:
    """The rows one label stands for; ConfigError for a label no method has."""
    base, _, arg = label.partition(":")
    for name, m in methods.REGISTRY.items():
        if not m.controls:
            continue
        factors = {"1x": 1.0, _factor_label(epoch_factor): epoch_factor}
        if base == name and not arg:
            return [Row(f"{name}_{k}", name, f) for k, f in factors.items()]
        for k, f in factors.items():
            if base == f"{name}_{k}" and not arg:
                return [Row(base, name, f)]
        if base == f"{name}_{MATCHED}" and not arg:
            return [Row(base, name, matched=True)]
    entry = methods.REGISTRY.get(base)
    if entry is None or arg and not entry.parametric:
        raise C.ConfigError("methods", f"unknown method {label!r}; allowed: {', '.join(known_labels(epoch_factor))}")
    if entry.parametric:
        if not arg.isdigit():
            raise C.ConfigError("methods", f"{label!r}: write {base}:E with E the epoch, e.g. {base}:10")
        return [Row(label, base, 1.0, int(arg))]
    return [Row(label, base)]


def known_labels(epoch_factor: float = 2.0) -> list[str]:
    """Every label as written (``dsr_stop:E`` with its argument, controls with their budgets)."""
    out = []
    for name, m in methods.REGISTRY.items():
        if m.controls:
            out += [name, f"{name}_1x", f"{name}_{_factor_label(epoch_factor)}", f"{name}_{MATCHED}"]
        else:
            out.append(f"{name}:E" if m.parametric else name)
    return out + ["ablations"]


def default_labels() -> list[str]:
    """Every method row (the ablations only on request)."""
    return list(methods.names(default_row=True))


def rows(labels: Sequence[str], epoch_factor: float, epochs: int) -> list[Row]:
    """Every row for ``labels`` (``ablations`` expanded), duplicates dropped, table order kept."""
    out: list[Row] = []
    for label in labels:
        items = [*methods.names(kind="ablation", parametric=False),
                 f"dsr_stop:{max(1, epochs // 4)}", f"dsr_stop:{max(1, epochs // 2)}"] if label == "ablations" else [label]
        for item in items:
            for row in parse(item, epoch_factor):
                if row not in out:
                    out.append(row)
    return out


# ---------------------------------------------------------------- one row's config


def _stretch(epochs: list[int], factor: float, below: int | None = None) -> list[int]:
    """Scale epoch indices, keeping them strictly increasing (and < ``below``)."""
    out: list[int] = []
    for e in epochs:
        v = round(e * factor)
        if (not out or v > out[-1]) and (below is None or v < below):
            out.append(v)
    return out


def stretched(data: dict, factor: float) -> dict:
    """``train.epochs``, the LR milestones and the period-schedule and stop
    epochs, all multiplied by ``factor`` (a nested config dict, changed in place)."""
    epochs = max(1, round(data["train"]["epochs"] * factor))
    data["train"]["epochs"] = epochs
    data["optim"]["milestones"] = _stretch(data["optim"]["milestones"], factor, below=epochs)
    s = data["sparsity"]
    periods: list[list[int]] = []
    for start, period in s["period_schedule"]:  # a start that collides after rounding is dropped
        if not periods or round(start * factor) > periods[-1][0]:
            periods.append([round(start * factor), period])
    s["period_schedule"] = periods
    s["stop_epoch"] = min(epochs, round(s["stop_epoch"] * factor))
    return data


def row_config(cfg: C.Config, row: Row | str, parent: str | Path | None = None) -> C.Config:
    """The config of ``row`` compared with the DSR config ``cfg``.

    parent: the finished run folder the row starts from (``row.needs``: the
    DSR run for the ablations, the dense run for gmp). Sparsity, seed, model,
    data and optimizer settings are ``cfg``'s unless the row's method says
    otherwise. The result is validated like any config (no file checks).
    """
    if isinstance(row, str):
        found = parse(row, cfg.sparsity.epoch_factor)
        if len(found) != 1:
            raise C.ConfigError("methods", f"{row!r} stands for {len(found)} rows; name one: "
                                           f"{', '.join(r.label for r in found)}")
        row = found[0]
    entry = methods.get(row.method)
    if entry.needs and parent is None:
        raise C.ConfigError("sparsity.mask_from" if entry.needs == REFERENCE else "sparsity.gmp.dense_from",
                            f"None: {row.label} needs the finished {entry.needs} run it starts from")
    data = cfg.to_dict()
    s = data["sparsity"]
    s["mask_from"] = s["init_from"] = None
    s["gmp"]["dense_from"] = None
    s["method"] = entry.trains_as
    if row.factor != 1.0:
        stretched(data, row.factor)
    if entry.derive is not None:
        entry.derive(data, None if parent is None else str(parent), row.arg)
    return C.from_dict(data)


# ---------------------------------------------------------------- compute-matched epochs


def matched(data: dict, budget: int, per_epoch: int) -> tuple[dict, dict]:
    """A compute-matched row's config (``data``, its config at DSR's epochs) and
    what matched it: the epochs that ``budget`` (the DSR run's training FLOPs)
    buys at ``per_epoch`` (this row's own training FLOPs an epoch), rounded to
    the nearest whole epoch (at least 1), so its total lies within half an
    epoch's FLOPs of DSR's; the LR milestones and the period and stop epochs
    stretched alike (:func:`stretched`)."""
    epochs = max(1, round(budget / per_epoch))
    data = stretched(data, epochs / data["train"]["epochs"])
    data["train"]["epochs"] = epochs
    return data, {"budget": budget, "per_epoch": per_epoch, "epochs": epochs}


def epoch_flops(cfg: C.Config, images: int, num_classes: int, in_channels: int) -> int:
    """Training FLOPs an epoch of ``images`` costs ``cfg``'s run, counted before
    it trains (exact for masks that never move: static sparse, thin dense)."""
    from ..train.flops import planned_flops

    return planned_flops(cfg, num_classes, in_channels)[1] * images
