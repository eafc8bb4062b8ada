"""GMP (Zhu & Gupta 2017): gradual magnitude pruning of a trained dense model on
a cubic schedule, then fine-tuning. Keys: ``sparsity.gmp.*``."""

import logging

from ..runfolder import CHECKPOINT, require_run_file, run_file
from ..schema import ConfigError, Section, opt
from .registry import Method, register

log = logging.getLogger("dsr_tune")


class GMPOptions(Section):
    dense_from: str | None = opt(None, "run folder (its checkpoint.pt) or checkpoint file of the trained dense "
                                 "model to prune")
    steps: int = opt(20, "pruning steps of the cubic schedule (the last one reaches sparsity.sparsity)", ge=1)
    every: int = opt(2, "epochs between pruning steps", ge=1)
    start: int = opt(0, "epoch of the first pruning step", ge=0)
    finetune: int = opt(10, "fine-tuning epochs after the last step (comparisons set train.epochs from it)", ge=0)


def check(cfg) -> None:
    g, epochs = cfg.sparsity.gmp, cfg.train.epochs
    if not g.dense_from:
        raise ConfigError("sparsity.gmp.dense_from", "None: method 'gmp' prunes a trained dense model; "
                                                     "give its run folder")
    last = g.start + (g.steps - 1) * g.every
    if last >= epochs:
        raise ConfigError("train.epochs", f"{epochs}: gmp's last pruning step is at epoch {last} "
                                          "(start + (steps - 1) * every); need more epochs")


def check_paths(cfg) -> None:
    require_run_file("sparsity.gmp.dense_from", cfg.sparsity.gmp.dense_from, CHECKPOINT)


def start(cfg, model) -> None:
    """The trained dense weights GMP prunes."""
    from ..checkpoint import load_weights

    path = run_file(cfg.sparsity.gmp.dense_from, CHECKPOINT)
    load_weights(model, path, "sparsity.gmp.dense_from", part="model")
    log.info("GMP starts from the dense model in %s", path)


def masking(cfg, model, optimizer, steps_per_epoch: int):
    from ..sparse.pruning_schedules import GradualMagnitudePruning
    from .registry import sparse_masking

    g = cfg.sparsity.gmp
    return sparse_masking(cfg, model, optimizer, GradualMagnitudePruning(cfg.sparsity.sparsity, g.steps, g.every,
                                                                           g.start), sparsity=0.0)


def derive(data: dict, parent: str | None, arg: int | None) -> None:
    """GMP prunes an already trained model: the spec gives its steps (20, one
    every 2 epochs) and 10 fine-tuning epochs, not its LR. The pruning runs at
    the dense schedule's second rate (lr * gamma), the fine-tuning one step
    lower (lr * gamma**2), no warm-up."""
    g, o = data["sparsity"]["gmp"], data["optim"]
    g["dense_from"] = parent
    prune_end = g["start"] + g["steps"] * g["every"]
    data["train"]["epochs"] = prune_end + g["finetune"]
    # gmp reads neither: DSR's schedules, resolved again at gmp's own length (they may lie beyond it)
    data["sparsity"]["period_schedule"] = data["sparsity"]["stop_epoch"] = None
    o["lr"] = o["lr"] * o["gamma"]
    o["milestones"] = [prune_end] if g["finetune"] > 0 else []
    o["warmup_epochs"] = 0


register(Method("gmp", "baseline", "gradual magnitude pruning of a trained dense run (sparsity.gmp.dense_from)",
                options=GMPOptions, needs="dense", check=check, check_paths=check_paths, start=start,
                masking=masking, derive=derive, rebuilt_as="static"))
