"""Derive each comparison row's config from the DSR config it is compared with.

``baseline_config(cfg, "static")`` is the one place that knows how a baseline
differs from the DSR run: the method, the epoch budget (static baselines train
``sparsity.epoch_factor`` times as long, LR milestones stretched alike), and
for GMP and the ablations, which finished run they start from. ``compare`` and
the sweep use it; the result is validated like any config.

Labels (what a row is called) and the method they run:

=================  ==========================================================
dense              the full network, same epochs
thin_dense         narrower dense network of the same size, epoch_factor x
static             fixed random mask, epoch_factor x
dsr, <sparse>      DSR or any method of the sparse registry (SET, RigL, ...), 1x
gmp                prune a trained dense run (``dense_run``): gmp_steps every
                   gmp_every epochs, then gmp_finetune epochs
hashednet          hashed weight sharing, bank = budget, 1x
dsd                dense, sparse, dense at a tenth of the LR, 1x
dsr_stop:E         DSR with reallocation stopped at epoch E, 1x
final_reinit       final masks of ``dsr_run``, static, 1x, fresh random init from
                   another seed (``train.init_seed``; the same data order)
final_init         final masks of ``dsr_run`` from its own initial values, 1x
random_control     random masks, random init, static, 1x (the control)
=================  ==========================================================

Which labels exist and what each one is (its method, epoch budget, the run it
needs) comes from :data:`dsr_tune.methods_table.TABLE`; this module applies it.

final_reinit's fresh init comes from ``train.init_seed`` (see
:data:`REINIT_SEED_OFFSET`), which seeds the initial weights only: the data
order, augmentation and everything else follow ``train.seed`` as in
final_init, so the two differ in their initial values alone.
"""

from __future__ import annotations

from pathlib import Path

from .. import config as C
from .. import methods_table as T

ABLATIONS = tuple(a for a in T.labels(kind="ablation") if a not in T.PARAMETRIC)  # compare's "ablations"
# final_reinit's train.init_seed is train.seed + this (wrapped into [0, 2**31 - 1]):
# a seed no comparison run of ordinary seeds uses, so its weights are a fresh draw
REINIT_SEED_OFFSET = 100_000
SEED_LIMIT = 2**31  # train.seed must stay below this


def _stretch(epochs: list[int], factor: float, below: int | None = None) -> list[int]:
    """Scale epoch indices, keeping them strictly increasing (and < ``below``)."""
    out: list[int] = []
    for e in epochs:
        v = round(e * factor)
        if (not out or v > out[-1]) and (below is None or v < below):
            out.append(v)
    return out


def stretched(data: dict, factor: float) -> dict:
    """``train.epochs``, the LR milestones and DSR's period-schedule and stop
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
    s["stop_epoch"] = round(s["stop_epoch"] * factor)
    return data


def known_labels() -> list[str]:
    """Every label, as written (``dsr_stop:E`` with its argument)."""
    return [f"{m}:E" if m in T.PARAMETRIC else m for m in T.labels()]


def parse_label(label: str) -> tuple[str, int | None]:
    """``"dsr_stop:30"`` -> ("dsr_stop", 30); other labels -> (label, None).
    Raises ConfigError for a label no method has."""
    base, _, arg = label.partition(":")
    if base in T.PARAMETRIC:
        if not arg.isdigit():
            raise C.ConfigError("methods", f"{label!r}: write {base}:E with E the stop epoch, e.g. {base}:10")
        return base, int(arg)
    if arg or label not in T.BY_LABEL:
        raise C.ConfigError("methods", f"unknown method {label!r}; allowed: {', '.join(known_labels())}")
    return label, None


def baseline_config(cfg: C.Config, label: str, factor: float | None = None, *,
                    dsr_run: str | Path | None = None, dense_run: str | Path | None = None) -> C.Config:
    """The config of row ``label`` compared with the DSR config ``cfg``.

    factor: the static baselines' epoch factor (default ``cfg.sparsity.epoch_factor``).
    dsr_run: the finished DSR run folder final_reinit / final_init start from.
    dense_run: the trained dense run folder gmp prunes.
    Sparsity, seed, model, data and optimizer settings are ``cfg``'s unless the
    table above says otherwise. Raises ConfigError (like any config) when a
    needed run folder is missing or does not hold its files.
    """
    base, arg = parse_label(label)
    row = T.BY_LABEL[base]
    data = cfg.to_dict()
    s, factor = data["sparsity"], cfg.sparsity.epoch_factor if factor is None else factor
    s["mask_from"] = s["init_from"] = s["dense_from"] = None
    s["method"] = row.runs
    if row.stretched:
        stretched(data, factor)
    if row.needs == "dsr":
        if dsr_run is None:
            raise C.ConfigError("sparsity.mask_from", f"None: {label} needs the finished DSR run to take masks from")
        s["mask_from"] = str(dsr_run)
    if base == "dsr_stop":
        s["stop_epoch"] = arg
    elif base == "final_init":
        s["init_from"] = str(dsr_run)
    elif base == "final_reinit":  # a fresh init, the same data order
        data["train"]["init_seed"] = (data["train"]["seed"] + REINIT_SEED_OFFSET) % SEED_LIMIT
    elif base == "gmp":
        s["dense_from"] = None if dense_run is None else str(dense_run)
        _gmp_schedule(data)
    elif base == "dsd":
        s["dsd_phases"] = []  # thirds of this run's epochs
    return C.from_dict(data)


def _gmp_schedule(data: dict) -> None:
    """GMP prunes an already trained model: the spec gives its steps (20, one
    every 2 epochs) and 10 fine-tuning epochs, not its LR. We run the pruning
    at the dense schedule's second rate (lr * gamma) and the fine-tuning one
    step lower (lr * gamma**2), no warm-up."""
    s, o = data["sparsity"], data["optim"]
    prune_end = s["gmp_start"] + s["gmp_steps"] * s["gmp_every"]
    data["train"]["epochs"] = prune_end + s["gmp_finetune"]
    o["lr"] = o["lr"] * o["gamma"]
    o["milestones"] = [prune_end] if s["gmp_finetune"] > 0 else []
    o["warmup_epochs"] = 0


def dependencies(label: str) -> str | None:
    """Which run a row needs first: "dsr" (same sparsity and seed), "dense" (same seed) or None."""
    base, _ = parse_label(label)
    return T.BY_LABEL[base].needs
