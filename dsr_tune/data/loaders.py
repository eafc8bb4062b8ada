"""Loaders for one training process: train, validation and test, sharded per DDP rank."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from . import registry
from .choices import resident_choice, resolve
from .files import DataError
from .images import ImageSpec, specs
from .resident import ResidentLoader, order_seed

log = logging.getLogger("dsr_tune.data")


@dataclass
class DataBundle:
    """The loaders of one process and what the model needs to know of the data.

    Batches are turned into ``(x, y)`` on the device by :meth:`to_device`,
    whatever the loader yields (tensors; decoded images with per-file errors;
    encoded files to decode on the device; a resident set's batches, there
    already). ``val`` is None without a validation split. ``resolved`` holds
    every data choice as used.
    """
    train: DataLoader | ResidentLoader
    test: DataLoader | ResidentLoader
    num_classes: int
    in_channels: int
    train_sampler: DistributedSampler | None = None
    val: DataLoader | ResidentLoader | None = None
    resolved: dict = field(default_factory=dict)
    device_spec: ImageSpec | None = None  # decode=gpu: size, channels, mean, std of the device recipe
    skip_bad_images: bool = False
    world_size: int = 1
    bad_images: int = 0  # files dropped in this process since the last pop_bad_images()
    rank: int = 0

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Make the epoch's shuffle (and a resident set's crops and flips) a
        function of (seed, epoch, rank) alone, so a resumed run sees the same
        order as an uninterrupted one."""
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)
        elif self.train.generator is not None:
            self.train.generator.manual_seed(order_seed(seed, epoch))
        if isinstance(self.train, ResidentLoader):
            self.train.reseed(epoch, seed, self.rank)

    def to_device(self, batch, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch from any of the loaders as ``(x, y)`` on ``device``.

        An undecodable file raises :class:`DataError` naming it, or with
        data.skip_bad_images is dropped from the batch and counted.
        """
        if isinstance(batch, dict):  # decode=gpu: bytes and recipe numbers
            from .device import encoded_batch_to_device

            x, y, dropped = encoded_batch_to_device(batch, device, self.device_spec, self.skip_bad_images)
            self.bad_images += dropped
            return x, y
        if len(batch) == 3:  # decoded files, each with its error line ("" when fine)
            x, y, errors = batch
            bad = [k for k, e in enumerate(errors) if e]
            if bad:
                if not self.skip_bad_images:
                    raise DataError(errors[bad[0]])
                log.warning("skipped %d undecodable image(s), first %s", len(bad), errors[bad[0]])
                keep = [k for k, e in enumerate(errors) if not e]
                x, y = x[keep], y[keep]
                self.bad_images += len(bad)
        else:
            x, y = batch
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def pop_bad_images(self, device: torch.device | str = "cpu") -> int:
        """Files dropped since the last call, summed over DDP ranks; resets
        the count. A collective under DDP: call it on every rank."""
        resident = [lo for lo in (self.train, self.val, self.test) if isinstance(lo, ResidentLoader)]
        n = torch.tensor([self.bad_images + sum(lo.pop_dropped() for lo in resident)], dtype=torch.int64,
                         device=device)
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(n)
        self.bad_images = 0
        return int(n.item())


def datasets(cfg, r: dict) -> tuple[Dataset, Dataset, Dataset, int, int]:
    """(train, validation, test, classes, input channels) of the resolved
    choices ``r``. The validation part is a fixed-seed slice of the training
    data (:func:`~.files.split_indices`), disjoint from the train part."""
    return registry.get(cfg.name).load(cfg, r)


def auto_workers(cfg) -> int:
    if cfg.loader_workers >= 0:
        return cfg.loader_workers
    if registry.get(cfg.name).in_memory:
        return 0  # already tensors in memory: worker processes only add cost
    return min(8, max(1, (os.cpu_count() or 2) - 1))


def _eval_loader(data: Dataset, batch_size: int, rank: int, world_size: int, **common) -> DataLoader:
    if world_size > 1:  # strided shard, no padding: counts summed over ranks are exact
        data = Subset(data, range(rank, len(data), world_size))
    return DataLoader(data, batch_size, shuffle=False, **common)


def build_data(cfg, seed: int = 0, rank: int = 0, world_size: int = 1,
               pin_memory: bool = False, device: torch.device | str | None = None) -> DataBundle:
    """Loaders for one training process, built from :func:`resolve`'s choices,
    or with ``data.resident`` (on ``device``, see :func:`~.choices.resident_choice`)
    batches taken from the data set kept there (:mod:`.resident`).

    With ``world_size > 1`` each rank gets its shard and ``batch_size /
    world_size`` samples a step; every rank has the same number of training
    steps (the sampler drops the remainder), while validation and test are
    strided shards without padding, so counts summed over ranks are exact.
    """
    if cfg.batch_size % world_size:
        raise ValueError(f"data.batch_size={cfg.batch_size} must divide by the {world_size} workers")
    r = resolve(cfg, device)
    if rank == 0 and device is not None and not r["resident"] and cfg.resident == "auto":
        why = resident_choice(cfg, device)[1]
        if why:
            log.info("%s", why)
    if r["resident"]:
        from .resident import loaders

        train, val, test, classes, channels, sampler = loaders(cfg, r, torch.device(device or "cpu"), seed, rank,
                                                                world_size, auto_workers(cfg))
        _log_sizes(cfg, r, rank, len(train.y), len(val.y) if val else 0, len(test.y))
        return DataBundle(train, test, classes, channels, sampler, val=val, resolved=r,
                          skip_bad_images=r["skip_bad_images"], world_size=world_size, rank=rank)
    train_set, val_set, test_set, num_classes, in_channels = datasets(cfg, r)
    per_rank = cfg.batch_size // world_size
    gpu = r["decode"] == "gpu"
    # not persistent: loader processes are seeded when an epoch starts, from the
    # generator set_epoch() reseeds, so a resumed run augments exactly as an
    # uninterrupted one (persistent ones would carry their random state over)
    common = dict(num_workers=auto_workers(cfg), pin_memory=pin_memory)
    if gpu:
        from .images import collate_encoded

        common["collate_fn"] = collate_encoded
    sampler = None
    if world_size > 1:
        sampler = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=seed, drop_last=True)
        train = DataLoader(train_set, per_rank, sampler=sampler, drop_last=True, **common)
    else:
        gen = torch.Generator().manual_seed(seed)
        train = DataLoader(train_set, per_rank, shuffle=True, drop_last=True, generator=gen, **common)
    val = _eval_loader(val_set, cfg.eval_batch_size, rank, world_size, **common) if len(val_set) else None
    test = _eval_loader(test_set, cfg.eval_batch_size, rank, world_size, **common)
    _log_sizes(cfg, r, rank, len(train_set), len(val_set), len(test_set))
    return DataBundle(train, test, num_classes, in_channels, sampler, val=val, resolved=r,
                      device_spec=specs(r)[1] if gpu else None, skip_bad_images=r["skip_bad_images"],
                      world_size=world_size, rank=rank)


def _log_sizes(cfg, r: dict, rank: int, train: int, val: int, test: int) -> None:
    if rank == 0:
        log.info("data %s: %d train, %d validation, %d test images; %s", cfg.name, train, val, test,
                 ", ".join(f"{k}={v}" for k, v in r.items() if k != "name"))
