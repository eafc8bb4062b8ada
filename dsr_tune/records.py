"""The words every layer shares about a run: the records the trainer writes,
the status a run ends with, the role it plays in a sweep.

The records are defined once, here: the trainer writes them (metrics.jsonl,
Tune's reports), tracking logs the fields marked :data:`METRIC` (MLflow's
``epoch/<name>``, ``realloc/<name>``), a sweep may select on the split scores
(:data:`SCORES`) and the report reads them back. A new field is one line in
its record. Stdlib only: the CLI reads these without torch.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal, TypedDict, get_type_hints


class Status(enum.StrEnum):
    """A run's (or a sweep's) status, spelled as MLflow spells it; equal to the plain string."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"  # interrupted, or stopped early by ASHA (its records up to there are kept)


TERMINAL = (Status.FINISHED, Status.FAILED, Status.KILLED)
SCORED = (Status.FINISHED, Status.KILLED)  # ended with its records: trained to the end, or stopped early


class Role(enum.StrEnum):
    """What a run is in a sweep (its MLflow ``role`` tag and a job's role)."""

    PARENT = "parent"      # the sweep's own run: its settings and its report
    SEARCH = "search"      # a trial the searcher proposed, on the trial seed
    SELECTED = "selected"  # a searched method's selection, re-trained on a fresh seed
    BASELINE = "baseline"  # a baseline or ablation row, derived from the selection
    DENSE = "dense"        # the dense reference, once per seed


# a record's "kind"; plain strings, not an enum: records are saved in checkpoints, which are
# read back with torch.load(weights_only=True)
EPOCH, REALLOC = "epoch", "realloc"

METRIC = "metric"  # Annotated[..., METRIC]: a field tracking logs as an MLflow metric


class EpochRecord(TypedDict, total=False):
    """One per epoch. The val_* fields are absent without a validation split, *_acc5
    with 5 classes or fewer."""

    kind: Literal["epoch"]
    epoch: int                                  # 0-based; epochs done is epoch + 1
    step: int                                   # optimizer steps so far
    val_acc: Annotated[float, METRIC]
    val_acc5: Annotated[float, METRIC]
    val_loss: Annotated[float, METRIC]
    val_n: Annotated[int, METRIC]               # images the validation split evaluated
    test_acc: Annotated[float, METRIC]
    test_acc5: Annotated[float, METRIC]
    test_loss: Annotated[float, METRIC]
    test_n: Annotated[int, METRIC]              # images the test split evaluated (one is worth 100 / test_n points)
    train_loss: Annotated[float, METRIC]
    train_acc: Annotated[float, METRIC]
    nonzero_params: Annotated[int, METRIC]
    lr: Annotated[float, METRIC]                # the LR the epoch trained with
    samples_per_s: Annotated[float, METRIC]
    epoch_time: Annotated[float, METRIC]        # seconds, evaluation included
    bad_images: Annotated[int, METRIC]          # undecodable files dropped (data.skip_bad_images)
    total_params: int
    density: dict[str, float]                   # per masked tensor: active / all (MLflow: density/<tensor>)
    mask_hash: str                              # a digest of the masks, equal on every rank
    train_flops: Annotated[int, METRIC]         # training FLOPs so far (dsr_tune.train.flops' convention)
    train_images: Annotated[int, METRIC]        # training images so far, every worker's
    dense_flops: Annotated[int, METRIC]         # forward FLOPs per image of model.* at density 1: the report's unit
    infer_flops: Annotated[int, METRIC]         # forward FLOPs per image of the model at the epoch's end
    train_time: Annotated[float, METRIC]        # seconds: the epoch times so far, summed
    realloc_time: Annotated[float, METRIC]      # seconds inside reallocations so far (measured, not counted)
    device: str                                 # cpu, mps, the GPU's name; "N x <name>" for N workers


class LayerCounts(TypedDict):
    pruned: int
    grown: int
    nonzero: int  # active after the reallocation


class ReallocRecord(TypedDict, total=False):
    """One per reallocation (summed over ``reallocations`` of them for DeepR); a method
    adds its own fields (DSR's ``next_threshold``, GMP's ``budget``, ...)."""

    kind: Literal["realloc"]
    step: int                                   # the global training step: the x-axis of realloc/*
    epoch: int
    threshold: Annotated[float, METRIC]         # DSR's pruning threshold H
    pruned: Annotated[int, METRIC]
    grown: Annotated[int, METRIC]
    realloc_time: Annotated[float, METRIC]      # seconds this reallocation took
    layers: dict[str, LayerCounts]              # absent where the budget itself changes (GMP, DSD)
    reallocations: int


# wall-clock measurements: the only fields two runs of the same config (or a run and its resumed twin) differ in
TIMED = ("samples_per_s", "epoch_time", "train_time", "realloc_time")


def _metrics(record: type) -> tuple[str, ...]:
    hints = get_type_hints(record, include_extras=True)
    return tuple(k for k, t in hints.items() if METRIC in getattr(t, "__metadata__", ()))


EPOCH_METRICS = _metrics(EpochRecord)
REALLOC_METRICS = _metrics(ReallocRecord)
LAYER_TOTALS = tuple(k for k in REALLOC_METRICS if k in LayerCounts.__annotations__)  # summed from layers if absent
SPLITS = ("test", "train", "val")


def split_of(name: str) -> str | None:
    """The split an epoch metric is measured on (``val_acc`` -> ``val``), or None."""
    head = name.partition("_")[0]
    return head if head in SPLITS else None


# the per-split scores a sweep may select on (search.metric), grouped by split
SCORES = tuple(sorted((k for k in EPOCH_METRICS if split_of(k) and k.partition("_")[2] in ("acc", "acc5", "loss")),
                     key=lambda k: SPLITS.index(split_of(k))))


def turnover(record: dict) -> float | None:
    """A reallocation's pruned count over the budget it kept (its layers' non-zero sum)."""
    budget = sum(int(v.get("nonzero", 0)) for v in (record.get("layers") or {}).values())
    return (record.get("pruned") or 0) / budget if budget else None
