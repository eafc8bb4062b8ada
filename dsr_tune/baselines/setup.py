"""The trainer's hooks for the baselines and ablations (thin dense, HashedNet,
GMP, DSD, and the ablations' masks and initial values from other runs).

The trainer calls these at four points and knows nothing else about them:

- :func:`build_run_model`: the architecture (thin dense solves its width;
  HashedNet swaps its sparse layers for hashed ones) and its starting values
  (``sparsity.init_from``: a run's initial weights; ``sparsity.dense_from``:
  a trained dense model for GMP);
- :func:`baseline_masking`: the masking of the methods that change the budget
  (GMP, DSD) and of those with no masks at all (thin dense, HashedNet);
- :func:`load_masks_from`: ``sparsity.mask_from``: the final masks of a
  finished run replace the random ones;
- :func:`phase_lr_factor`: DSD's last, dense phase runs at a tenth of the LR.

On resume (``resuming=True``) the run's own checkpoint overwrites the weights
and masks right after, so the other runs' files are not read at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .. import config as C
from .. import methods_table
from ..models import build_model, sparse_names
from ..sparse import Masking, layer_counts
from ..sparse.gmp import DenseSparseDense, GradualMagnitudePruning
from .hashed import hash_layers
from .thin import thin_width

log = logging.getLogger("dsr_tune")

# methods whose masking (or lack of it) is built here, not by the sparse registry
OWN_METHODS = methods_table.BASELINE_METHODS
NO_MASKS = methods_table.NO_MASKS


def _load(path: Path) -> dict:
    # our own files: they hold generator states and config dicts, not only tensors
    return torch.load(path, map_location="cpu", weights_only=False)


def run_file(run: str | Path, name: str) -> Path:
    """``run`` is a run folder (take ``name`` in it) or a file."""
    run = Path(run).expanduser()
    return run / name if run.is_dir() else run


def make_model(cfg: C.Config, num_classes: int, in_channels: int) -> nn.Module:
    """The run's architecture, with freshly drawn values (global RNG, as build_model)."""
    m, s = cfg.model, cfg.sparsity
    width = thin_width(cfg, num_classes, in_channels).width if s.method == "thin_dense" else m.width
    model = build_model(m.name, width=width, depth=m.depth, num_classes=num_classes, in_channels=in_channels)
    if s.method == "hashednet":
        names = sparse_names(m.name, model, m.sparse_layers, m.dense_layers)
        shapes = {n: p.shape for n, p in model.named_parameters() if n in names}
        hash_layers(model, layer_counts(shapes, 1.0 - s.sparsity, s.distribution), seed=cfg.train.seed)
    return model


def _load_weights(model: nn.Module, state: dict, key: str, source: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise C.ConfigError(key, f"{str(source)!r} does not fit this model ({first[0] if first else exc}); "
                                 "the model section must match the run it comes from") from None


def build_run_model(cfg: C.Config, num_classes: int, in_channels: int, *, resuming: bool = False) -> nn.Module:
    """:func:`make_model`, then the starting values asked for by the config.

    resuming: the caller loads the run's own checkpoint next, which replaces
    every value: ``init_from`` / ``dense_from`` are then not read (the model
    keeps its fresh values until that load)."""
    model = make_model(cfg, num_classes, in_channels)
    s = cfg.sparsity
    if resuming:
        return model
    if s.init_from:
        path = run_file(s.init_from, "init.pt")
        _load_weights(model, _load(path)["model"], "sparsity.init_from", path)
        log.info("initial weights from %s", path)
    if s.method == "gmp":
        path = run_file(s.dense_from, "checkpoint.pt")
        state = _load(path)
        _load_weights(model, state.get("model", state), "sparsity.dense_from", path)
        log.info("GMP starts from the dense model in %s", path)
    return model


def baseline_masking(cfg: C.Config, model: nn.Module, optimizer) -> Masking | None:
    """Masking for thin_dense / hashednet (none) and GMP / DSD (all weights
    active at first; the schedule prunes)."""
    s = cfg.sparsity
    if s.method in NO_MASKS:
        return None
    if s.method == "gmp":
        method = GradualMagnitudePruning(s.sparsity, s.gmp_steps, s.gmp_every, s.gmp_start)
    elif s.method == "dsd":
        method = DenseSparseDense(s.sparsity, *dsd_phases(cfg))
    else:
        raise ValueError(f"not a baseline method: {s.method!r}")
    names = sparse_names(cfg.model.name, model, cfg.model.sparse_layers, cfg.model.dense_layers)
    return Masking(model, optimizer, sparsity=0.0, method=method, names=names, seed=cfg.train.seed)


def dsd_phases(cfg: C.Config) -> tuple[int, int]:
    """(first sparse epoch, first dense-again epoch); default: thirds of the run."""
    if cfg.sparsity.dsd_phases:
        a, b = cfg.sparsity.dsd_phases
        return int(a), int(b)
    e = cfg.train.epochs
    return max(1, round(e / 3)), max(2, round(2 * e / 3))


def phase_lr_factor(cfg: C.Config, epoch: int) -> float:
    """Multiplies the LR schedule: DSD's last phase at ``dsd_lr_factor``."""
    if cfg.sparsity.method == "dsd" and epoch >= dsd_phases(cfg)[1]:
        return cfg.sparsity.dsd_lr_factor
    return 1.0


@torch.no_grad()
def load_masks_from(cfg: C.Config, masking: Masking | None, init_state: dict[str, torch.Tensor], *,
                    resuming: bool = False) -> None:
    """``sparsity.mask_from``: the masks of that run's final checkpoint replace
    the random ones (the budget becomes theirs).

    ``init_state`` holds the dense starting values (before any masking): the
    masking has already zeroed everything outside its own random masks, so the
    sparse tensors are first restored from it, then the new masks applied.
    Every active weight then starts from its initial value, none from zero.
    resuming: the run's checkpoint restores masks, weights and budget next;
    nothing is read here (the config's check that the method takes masks still runs)."""
    src = cfg.sparsity.mask_from
    if not src:
        return
    if masking is None:
        raise C.ConfigError("sparsity.mask_from", f"method {cfg.sparsity.method!r} has no masks to take")
    if resuming:
        return
    path = run_file(src, "checkpoint.pt")
    state = _load(path).get("masking")
    if not state:
        raise C.ConfigError("sparsity.mask_from", f"{str(path)!r} holds no masks (a dense run?)")
    masks = state["masks"]
    if set(masks) != set(masking.masks) or any(masks[n].shape != masking.masks[n].shape for n in masks):
        raise C.ConfigError("sparsity.mask_from", f"the masks in {str(path)!r} do not fit this model's sparse "
                                                  "tensors; the model section must match that run's")
    for name, mask in masks.items():
        masking.masks[name].copy_(mask)
        masking.params[name].copy_(init_state[name])
    masking.masks_changed()
    masking.budget = sum(masking.active_counts().values())
    masking.apply()
    log.info("masks from %s: %d active sparse weights", path, masking.budget)
