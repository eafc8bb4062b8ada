"""Data sets by name, as train/test loaders.

- digits: scikit-learn's 1,797 real 8x8 handwritten digits, a fixed split
  (the embedded default: no download, no GPU).
- cifar10: torchvision's CIFAR-10 under ``root`` (downloaded on request),
  with the paper's augmentation.
- imagenet: a ``train/`` and ``val/`` tree of class folders, standard
  ImageNet transforms (random-resized crop 224, resize 256 + center crop).
- folder: any such tree, resized to ``image_size``.
- synthetic: random tensors of a given shape (tests and benchmarks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .images import cifar10, image_folder
from .tensors import digits, synthetic


@dataclass
class DataBundle:
    train: DataLoader
    test: DataLoader
    num_classes: int
    in_channels: int
    train_sampler: DistributedSampler | None = None
    val: DataLoader | None = None  # a seeded slice of the training data (selection looks at it, never at test)

    def to_device(self, batch, device: torch.device):
        """A loader's batch as (inputs, labels) on ``device``."""
        x, y = batch
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Make the epoch's shuffle a function of (seed, epoch) alone, so a
        resumed run sees the same order as an uninterrupted one."""
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)
        elif self.train.generator is not None:
            self.train.generator.manual_seed(seed * 100_003 + epoch)


def datasets(cfg) -> tuple[Dataset, Dataset, int, int]:
    """(train set, test set, classes, input channels)."""
    if cfg.name == "digits":
        return digits(cfg.test_fraction)
    if cfg.name == "synthetic":
        return synthetic(cfg.synthetic_size, cfg.image_size or 32)
    if cfg.name == "cifar10":
        return cifar10(cfg.root, cfg.download)
    if cfg.name == "imagenet":
        return image_folder(cfg.root, cfg.image_size or 224, imagenet=True)
    if cfg.name == "folder":
        return image_folder(cfg.root, cfg.image_size, imagenet=False)
    raise ValueError(f"unknown data set {cfg.name!r}")


def auto_workers(cfg) -> int:
    if cfg.loader_workers >= 0:
        return cfg.loader_workers
    if cfg.name in ("digits", "synthetic"):
        return 0  # already tensors in memory: worker processes only add cost
    return min(8, max(1, (os.cpu_count() or 2) - 1))


def build_data(cfg, seed: int = 0, rank: int = 0, world_size: int = 1,
               pin_memory: bool = False) -> DataBundle:
    """Loaders for one training process. With ``world_size > 1`` each rank
    gets its shard and ``batch_size / world_size`` samples a step."""
    train_set, test_set, num_classes, in_channels = datasets(cfg)
    if cfg.batch_size % world_size:
        raise ValueError(f"data.batch_size={cfg.batch_size} must divide by the {world_size} workers")
    per_rank = cfg.batch_size // world_size
    workers = auto_workers(cfg)
    # not persistent: loader processes are seeded when an epoch starts, from the
    # generator set_epoch() reseeds, so a resumed run augments exactly as an
    # uninterrupted one (persistent ones would carry their random state over)
    common = dict(num_workers=workers, pin_memory=pin_memory)
    sampler = None
    if world_size > 1:
        sampler = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=seed, drop_last=True)
        train = DataLoader(train_set, per_rank, sampler=sampler, drop_last=True, **common)
    else:
        gen = torch.Generator().manual_seed(seed)
        train = DataLoader(train_set, per_rank, shuffle=True, drop_last=True, generator=gen, **common)
    if world_size > 1:  # strided shard, no padding: counts summed over ranks are exact
        test_set = Subset(test_set, range(rank, len(test_set), world_size))
    test = DataLoader(test_set, cfg.eval_batch_size, shuffle=False, **common)
    return DataBundle(train, test, num_classes, in_channels, sampler)
