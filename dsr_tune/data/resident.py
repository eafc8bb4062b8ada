"""Data sets kept on the training device (``data.resident``): decoded once,
batches taken by index, crop, flip and normalisation applied there in batch.

For data that fits (digits, CIFAR-10, a small class-folder tree) the loaders'
machinery (a ``__getitem__`` per sample, collation, a host-to-device copy per
batch, a decode per sample and epoch for a folder) costs more than the step on
a GPU, and a good share of it on a CPU. Here:

- **order**: the epoch's indices come from the sampler the loader path uses,
  driven the same way (a ``DataLoader`` over the indices, reseeded by
  :meth:`~.loaders.DataBundle.set_epoch`; a ``DistributedSampler`` shard per
  DDP rank), so for a given seed a resident run takes the same samples in the
  same batches as a run that loads them;
- **augmentation**: a crop of ``crop_padding`` reflect-padded pixels at an
  offset drawn uniformly in ``[0, 2 * pad]`` per axis, then a flip with
  probability 1/2: torchvision's ``RandomCrop(padding, padding_mode="reflect")``
  and ``RandomHorizontalFlip``, the same distribution, drawn on the device from
  a generator seeded by (seed, epoch, rank), so a resumed run draws what an
  uninterrupted one drew. Padding is never materialised: the crop is one
  gather whose row and column maps fold the reflection and the flip in;
- **normalisation**: ``(x / 255 - mean) / std`` in float32, the operations of
  ``ToTensor`` and ``Normalize``, on the device.

Decoded files are kept per process (the last set), so the next trial of a
sweep that reuses the process does not decode them again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from . import registry
from .registry import mib

log = logging.getLogger("dsr_tune.data")


def order_seed(seed: int, epoch: int) -> int:
    """The single-process shuffle's seed for an epoch (:meth:`DataBundle.set_epoch`)."""
    return seed * 100_003 + epoch


def augment_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of an epoch's crop and flip draws on one rank."""
    return (seed * 1_000_003 + epoch) * 1_009 + rank


class _Indices(Dataset):
    """``range(n)`` as a data set: the loader path's sampler and loader over it yield its order."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of a reflect-padded axis (``-pad .. n - 1 + pad``) mapped into ``0 .. n - 1``."""
    return (n - 1) - ((n - 1) - i.abs()).abs()


class ResidentLoader:
    """Batches ``(x, y)`` of one split, already on the device.

    Training (``order`` given): the batches of ``order``'s epoch, cropped and
    flipped when ``pad`` or ``flip``. Evaluation: the samples of ``shard``
    (default all) in sequence. ``mean``/``std``: the normalisation of a uint8
    store (None: a float store, used as is).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, mean=None, std=None,
                 order: DataLoader | None = None, shard: torch.Tensor | None = None, pad: int = 0,
                 flip: bool = False):
        self.x, self.y, self.batch_size, self.order = x, y, batch_size, order
        self.device = x.device
        self.pad, self.flip = pad, flip
        self.mean = None if mean is None else torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.shard = torch.arange(len(y), device=self.device) if shard is None else shard.to(self.device)
        self.augment = torch.Generator(device=self.device)
        self.last_order: torch.Tensor | None = None  # the indices the last epoch took (tests compare them)
        self.has_bad = bool((y < 0).any())  # undecodable files keep their place with the label -1
        self.dropped = 0  # such samples left out of batches since the last pop_dropped()

    @property
    def generator(self) -> torch.Generator | None:
        """The shuffle's generator (single process), as a DataLoader's: set_epoch reseeds it."""
        return None if self.order is None else self.order.generator

    @property
    def sampler(self):
        return None if self.order is None else self.order.sampler

    def reseed(self, epoch: int, seed: int, rank: int) -> None:
        self.augment.manual_seed(augment_seed(seed, epoch, rank))

    def pop_dropped(self) -> int:
        n, self.dropped = self.dropped, 0
        return n

    def __len__(self) -> int:
        if self.order is not None:
            return len(self.order)
        return -(-len(self.shard) // self.batch_size)

    def __iter__(self):
        b = self.batch_size
        if self.order is None:
            for k in range(0, len(self.shard), b):
                yield self._take(self.shard[k:k + b])
            return
        idx = torch.cat([batch for batch in self.order])  # the epoch's order, drawn as the loader draws it
        self.last_order = idx
        idx = idx.to(self.device, non_blocking=True)
        draws = self._draw(len(idx)) if self.pad or self.flip else None
        for k in range(0, len(idx), b):
            yield self._take(idx[k:k + b], None if draws is None else [d[k:k + b] for d in draws])

    def _draw(self, m: int) -> list[torch.Tensor]:
        g, dev, p = self.augment, self.device, self.pad
        zero = torch.zeros(m, dtype=torch.long, device=dev)
        top = torch.randint(0, 2 * p + 1, (m,), generator=g, device=dev) if p else zero
        left = torch.randint(0, 2 * p + 1, (m,), generator=g, device=dev) if p else zero
        flip = torch.rand(m, generator=g, device=dev) < 0.5 if self.flip else zero.bool()
        return [top, left, flip]

    def _take(self, idx: torch.Tensor, draws: list[torch.Tensor] | None = None):
        if self.has_bad:  # as the loaders do: the batch is that much smaller
            keep = self.y[idx] >= 0
            self.dropped += int((~keep).sum())
            idx, draws = idx[keep], None if draws is None else [d[keep] for d in draws]
        if draws is None:
            x = self.x[idx]
        else:
            top, left, flip = draws
            _, c, h, w = self.x.shape
            rows = torch.arange(h, device=self.device)
            cols = torch.arange(w, device=self.device)
            rows = _reflect(top[:, None] + rows - self.pad, h)
            cols = _reflect(left[:, None] + torch.where(flip[:, None], w - 1 - cols, cols) - self.pad, w)
            chans = torch.arange(c, device=self.device)[None, :, None, None]
            x = self.x[idx[:, None, None, None], chans, rows[:, None, :, None], cols[:, None, None, :]]
        if self.mean is not None:
            x = x.float().div_(255.0).sub_(self.mean).div_(self.std)
        return x, self.y[idx]


# ---------------------------------------------------------------- building them

_cache: dict = {}  # the last decoded set of this process: {key: arrays}


def _key(cfg, r: dict) -> tuple:
    key = (cfg.name, cfg.root, cfg.test_fraction, cfg.synthetic_size, r["image_size"], r["channels"],
           r["val_fraction"], r["skip_bad_images"])
    if cfg.root and (Path(cfg.root).expanduser() / "train").is_dir():
        from .files import tree_key

        root = Path(cfg.root).expanduser()
        key += (tree_key(root / "train"), tree_key(root / "val") if (root / "val").is_dir() else None)
    return key


def arrays(cfg, r: dict, workers: int = 0) -> tuple:
    """The data set's decoded splits (CPU tensors, see the registry's ``arrays``),
    decoded once per process, by ``workers`` loader processes (tensors made in memory
    are cheap to make again)."""
    data = registry.get(cfg.name)
    if data.in_memory:
        return data.arrays(cfg, r)
    key = _key(cfg, r)
    if key not in _cache:
        t0 = time.perf_counter()
        found = data.arrays(cfg, {**r, "workers": workers})
        _cache.clear()
        _cache[key] = found
        log.debug("data %s decoded for data.resident in %.1f s", cfg.name, time.perf_counter() - t0)
    return _cache[key]


def device_cap(device: torch.device | str) -> float:
    """Bytes of decoded data ``data.resident`` may keep on ``device`` (see the key's doc)."""
    device = torch.device(device)
    cap = registry.RESIDENT_CAP_MIB * 2**20
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        cap = min(cap, registry.RESIDENT_DEVICE_SHARE * total * torch.cuda.get_per_process_memory_fraction(index))
    return cap


def loaders(cfg, r: dict, device: torch.device, seed: int, rank: int, world_size: int, workers: int = 0):
    """``(train, validation or None, test, classes, channels, train sampler or None)``
    of the resident path, on ``device``; files are decoded by ``workers`` processes."""
    t0 = time.perf_counter()
    (xt, yt), (xv, yv), (xs, ys), classes, channels = arrays(cfg, r, workers)
    norm = dict(mean=r["mean"], std=r["std"]) if xt.dtype == torch.uint8 else {}
    aug = dict(pad=r["crop_padding"], flip=r["hflip"]) if xt.dtype == torch.uint8 else {}
    per_rank = cfg.batch_size // world_size
    if world_size > 1:
        sampler = DistributedSampler(_Indices(len(yt)), world_size, rank, shuffle=True, seed=seed, drop_last=True)
        order = DataLoader(_Indices(len(yt)), per_rank, sampler=sampler, drop_last=True)
    else:
        sampler = None
        order = DataLoader(_Indices(len(yt)), per_rank, shuffle=True, drop_last=True,
                           generator=torch.Generator().manual_seed(seed))

    def put(x, y):
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def evaluation(x, y):  # strided shard, no padding: counts summed over ranks are exact
        return ResidentLoader(*put(x, y), cfg.eval_batch_size, shard=torch.arange(rank, len(y), world_size), **norm)

    train = ResidentLoader(*put(xt, yt), per_rank, order=order, **norm, **aug)
    val = evaluation(xv, yv) if len(yv) else None
    test = evaluation(xs, ys)
    if rank == 0:
        size = sum(t.numel() * t.element_size() for t in (xt, xv, xs))
        log.info("data %s resident on %s: %s, ready in %.1f s", cfg.name, device, mib(size), time.perf_counter() - t0)
    return train, val, test, classes, channels, sampler
