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
final_reinit       final masks of ``dsr_run``, fresh random init, static, 1x
final_init         final masks of ``dsr_run`` from its own initial values, 1x
random_control     random masks, random init, static, 1x (the control)
=================  ==========================================================
"""

from __future__ import annotations

from pathlib import Path

from .. import config as C

STATIC = ("static", "thin_dense")  # trained epoch_factor x as long
ABLATIONS = ("final_reinit", "final_init", "random_control")
NEEDS_DSR = ("final_reinit", "final_init")
REINIT_SEED_OFFSET = 100_000  # final_reinit: a seed no comparison run uses, for a fresh init


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
    from ..sparse import METHODS

    return ["dense", "thin_dense", "static", *METHODS, "gmp", "hashednet", "dsd", *ABLATIONS, "dsr_stop:E"]


def parse_label(label: str) -> tuple[str, int | None]:
    """``"dsr_stop:30"`` -> ("dsr_stop", 30); other labels -> (label, None).
    Raises ConfigError for a label no method has."""
    from ..sparse import METHODS

    base, _, arg = label.partition(":")
    if base == "dsr_stop":
        if not arg.isdigit():
            raise C.ConfigError("methods", f"{label!r}: write dsr_stop:E with E the stop epoch, e.g. dsr_stop:10")
        return base, int(arg)
    if arg or label not in ("dense", "thin_dense", "static", "gmp", "hashednet", "dsd", *ABLATIONS, *METHODS):
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
    data = cfg.to_dict()
    s, factor = data["sparsity"], cfg.sparsity.epoch_factor if factor is None else factor
    s["mask_from"] = s["init_from"] = s["dense_from"] = None
    if base in STATIC:
        s["method"] = base
        stretched(data, factor)
    elif base == "dsr_stop":
        s["method"], s["stop_epoch"] = "dsr", arg
    elif base in ABLATIONS:
        s["method"] = "static"
        if base in NEEDS_DSR:
            if dsr_run is None:
                raise C.ConfigError("sparsity.mask_from", f"None: {label} needs the finished DSR run to take masks from")
            s["mask_from"] = str(dsr_run)
        if base == "final_init":
            s["init_from"] = str(dsr_run)
        if base == "final_reinit":
            data["train"]["seed"] += REINIT_SEED_OFFSET
    elif base == "gmp":
        s["method"], s["dense_from"] = "gmp", None if dense_run is None else str(dense_run)
        _gmp_schedule(data)
    else:  # dense, hashednet, dsd, dsr and the sparse registry's methods: as configured
        s["method"] = base
        if base == "dsd":
            s["dsd_phases"] = []
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
    return "dsr" if base in NEEDS_DSR else "dense" if base == "gmp" else None
