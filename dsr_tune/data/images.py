"""Image data sets from disk: CIFAR-10 and class-folder trees (ImageNet, any folder).

A folder image goes through one geometric recipe, whose random choices are
drawn in the loader process by :meth:`ImageSpec.draw` from the file's header
alone, before any pixel is decoded:

    region (top, left, h, w) of the file -> resize to (rh, rw) -> reflect-pad
    by ``pad`` -> crop size x size at (ct, cl) -> horizontal flip

``decode=cpu`` applies it to the PIL image right there (:class:`FolderImages`);
``decode=gpu`` (``FolderImages(encoded=True)``) ships the file's bytes with the drawn numbers and applies the
same recipe to a batch on the training device (:mod:`.device`). Both draw the
same numbers from the same random state, so a seed gives the same crops.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .files import PIL_ERRORS, DataError, to_mode

log = logging.getLogger("dsr_tune.data")

# torchvision is imported inside the functions: it costs ~1 s, and the
# in-memory data sets (digits, synthetic) never need it

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop defaults
N_PARAMS = 11  # top, left, h, w, rh, rw, pad, ct, cl, flip, decode-on-device


@dataclass(frozen=True)
class ImageSpec:
    """How one split's files become ``channels x size x size`` tensors.

    train=False draws nothing: with random_resized_crop the shorter side is
    resized to size*8/7 and the center cropped (ImageNet's 256 -> 224), else
    the image is resized to a square. train=True: a random-resized crop, or
    the square resize plus a random crop after ``crop_padding`` pixels of
    reflect padding; then a flip with probability 1/2 when ``hflip``.
    """
    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: bool = False
    random_resized_crop: bool = False
    crop_padding: int = 0
    hflip: bool = False

    def draw(self, img) -> list[int]:
        """The recipe's numbers for one image (a lazily opened PIL image: only
        its size is read). Random draws use torch's global generator in the
        order torchvision's transforms use it, so defaults reproduce the
        RandomResizedCrop/RandomCrop/RandomHorizontalFlip pipelines exactly."""
        from torchvision import transforms as T

        H, W, s = img.height, img.width, self.size
        top, left, h, w, rh, rw, ct, cl = 0, 0, H, W, s, s, 0, 0
        if not self.train:
            if self.random_resized_crop:
                rh, rw = _shorter_side_to(H, W, round(s * 8 / 7))
                ct, cl = int(round((rh - s) / 2.0)), int(round((rw - s) / 2.0))
            return [0, 0, H, W, rh, rw, 0, ct, cl, 0]
        if self.random_resized_crop:
            top, left, h, w = T.RandomResizedCrop.get_params(img, list(RRC_SCALE), list(RRC_RATIO))
        pad = self.crop_padding if not self.random_resized_crop else 0
        if pad:  # RandomCrop.get_params on the padded (s+2p)^2 image: row, then column
            ct = int(torch.randint(0, 2 * pad + 1, size=(1,)).item())
            cl = int(torch.randint(0, 2 * pad + 1, size=(1,)).item())
        flip = int(self.hflip and bool(torch.rand(1) < 0.5))
        return [top, left, h, w, rh, rw, pad, ct, cl, flip]


def _shorter_side_to(h: int, w: int, short: int) -> tuple[int, int]:
    """torchvision's Resize(int) output size: the shorter side becomes ``short``."""
    if w <= h:
        return int(short * h / w), short
    return short, int(short * w / h)


def apply_pil(img, params: list[int], spec: ImageSpec) -> torch.Tensor:
    """The recipe on a decoded PIL image (the CPU path), normalised."""
    from torchvision.transforms import functional as F

    top, left, h, w, rh, rw, pad, ct, cl, flip = params[:10]
    img = F.resized_crop(img, top, left, h, w, [rh, rw], antialias=True)
    if pad:
        img = F.pad(img, pad, padding_mode="reflect")
    if (ct, cl, spec.size, spec.size) != (0, 0, img.height, img.width):
        img = F.crop(img, ct, cl, spec.size, spec.size)
    if flip:
        img = F.hflip(img)
    return F.normalize(F.to_tensor(img), spec.mean, spec.std)


class FolderImages(Dataset):
    """The files of one split, with the recipe of ``spec``.

    decode=cpu (``encoded=False``): (image tensor, label, error) per file,
    decoded here. decode=gpu (``encoded=True``): (file bytes, recipe numbers,
    label, path, error); only the header is parsed, to draw the recipe, and
    decoding waits for the training device. The last recipe number says
    whether the device's JPEG decoder can take the file (JPEG in 'L' or
    'RGB'); anything else (PNG, CMYK JPEG, a PNG named .JPEG as in
    ImageNet's train set) is decoded by PIL in the training process, file by
    file, and joins the same recipe.

    A file that fails to open gives an empty sample and a one-line error
    naming it (else ""); :meth:`DataBundle.to_device` then raises or drops
    it, so one broken file never kills a loader process with a traceback.
    """

    def __init__(self, samples, spec: ImageSpec, encoded: bool = False):
        self.samples, self.spec, self.encoded = list(samples), spec, encoded

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self._encoded(i) if self.encoded else self._decoded(i)

    def _decoded(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as img:  # lazy: the header only, for draw()
                params = self.spec.draw(img)
                img = to_mode(img, self.spec.channels)
        except PIL_ERRORS as exc:
            s = self.spec
            return torch.zeros(s.channels, s.size, s.size), label, f"{path}: cannot decode the image ({exc})"
        return apply_pil(img, params, self.spec), label, ""

    def _encoded(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        try:
            data = Path(path).read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                params = self.spec.draw(img) + [int(img.format == "JPEG" and img.mode in ("L", "RGB"))]
        except PIL_ERRORS as exc:
            empty = torch.zeros(0, dtype=torch.uint8)
            return empty, torch.zeros(N_PARAMS, dtype=torch.int64), label, path, f"{path}: cannot read the image ({exc})"
        return (torch.frombuffer(bytearray(data), dtype=torch.uint8), torch.tensor(params, dtype=torch.int64),
                label, path, "")


def collate_encoded(samples) -> dict:
    """A batch of encoded :class:`FolderImages` samples. The files' bytes are
    joined into one flat tensor with their lengths (one shared-memory block
    per batch from a loader process, not one per file: hundreds of file
    descriptors a batch would exhaust the limit); numbers and labels are stacked."""
    data, params, labels, paths, errors = zip(*samples)
    return {"data": torch.cat(data), "lengths": torch.tensor([len(d) for d in data], dtype=torch.int64),
            "params": torch.stack(params), "label": torch.tensor(labels, dtype=torch.long),
            "path": list(paths), "error": list(errors)}


class Mapped(Dataset):
    """``base[indices[k]]`` with ``transform`` applied to its image: one
    in-memory copy of CIFAR-10 serves the train part (augmented) and the
    validation part (test-time transform)."""

    def __init__(self, base, indices, transform):
        self.base, self.indices, self.transform = base, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        img, label = self.base[self.indices[k]]
        return self.transform(img), label


def cifar10(root: str, download: bool, r: dict):
    """(train, val, test) of CIFAR-10; val is r["val_fraction"] of the 50,000
    training images (:func:`split_indices`) with the test transform. With the
    default resolved choices the training transform is the paper's: 4-pixel
    reflect pad, random 32x32 crop, flip, CIFAR's mean and std."""
    from torchvision import datasets, transforms as T

    from .files import split_indices

    root = str(Path(root).expanduser())
    norm = [T.ToTensor(), T.Normalize(r["mean"], r["std"])]
    aug = [T.RandomCrop(32, padding=r["crop_padding"], padding_mode="reflect")] if r["crop_padding"] else []
    train_tf = T.Compose(aug + ([T.RandomHorizontalFlip()] if r["hflip"] else []) + norm)
    test_tf = T.Compose(norm)
    base = datasets.CIFAR10(root, train=True, transform=None, download=download)
    test = datasets.CIFAR10(root, train=False, transform=test_tf, download=download)
    train_idx, val_idx = split_indices(len(base), r["val_fraction"])
    return Mapped(base, train_idx, train_tf), Mapped(base, val_idx, test_tf), test


def cifar10_arrays(root: str, download: bool, r: dict):
    """The uint8 images of :func:`cifar10`'s splits, ``N x 3 x 32 x 32``, for data.resident."""
    from torchvision import datasets

    from .files import split_indices

    root = str(Path(root).expanduser())
    base = datasets.CIFAR10(root, train=True, download=download)
    test = datasets.CIFAR10(root, train=False, download=download)
    x, y = _nchw(base.data), torch.tensor(base.targets, dtype=torch.long)
    train_idx, val_idx = split_indices(len(x), r["val_fraction"])
    return ((x[train_idx], y[train_idx]), (x[val_idx], y[val_idx]),
            (_nchw(test.data), torch.tensor(test.targets, dtype=torch.long)), 10, 3)


def _nchw(images) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def decode_u8(path: str, spec: ImageSpec) -> torch.Tensor:
    """One file through ``spec``'s test-time geometry (the square resize both
    splits start from without random-resized crops), as a uint8 ``C x H x W``
    tensor: the pixels :func:`apply_pil` pads, crops and flips."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import functional as F

    try:
        with Image.open(path) as img:
            top, left, h, w, rh, rw = spec.draw(img)[:6]
            img = to_mode(img, spec.channels)
    except PIL_ERRORS as exc:
        raise DataError(f"{path}: cannot decode the image ({exc})") from None
    a = np.array(F.resized_crop(img, top, left, h, w, [rh, rw], antialias=True))  # a writable copy
    return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1)).contiguous()


def specs(r: dict) -> tuple[ImageSpec, ImageSpec]:
    """(training spec, test-time spec) of a folder tree from resolved choices."""
    common = dict(size=r["image_size"], channels=r["channels"], mean=tuple(r["mean"]), std=tuple(r["std"]),
                  random_resized_crop=r["random_resized_crop"])
    return (ImageSpec(**common, train=True, crop_padding=r["crop_padding"], hflip=r["hflip"]),
            ImageSpec(**common))


def image_folder(r: dict, train_samples, val_samples, test_samples):
    """(train, val, test) data sets of a ``root/train/<class>/*``, ``root/val/<class>/*``
    tree: decoded in loader processes (decode=cpu) or as bytes (decode=gpu).
    Validation samples come from train/ and take the test-time recipe."""
    train_spec, test_spec = specs(r)
    encoded = r["decode"] == "gpu"
    return (FolderImages(train_samples, train_spec, encoded), FolderImages(val_samples, test_spec, encoded),
            FolderImages(test_samples, test_spec, encoded))


def class_tree(cfg, r: dict):
    """(train, val, test, classes, channels) of ``data.root``'s ``train/`` and
    ``val/`` class folders: val/ is the test set, validation a slice of train/."""
    from ..schema import ConfigError
    from .files import class_folders, class_mismatch, scan_split, split_indices

    root = Path(cfg.root).expanduser()
    classes, samples = scan_split(root / "train")
    problem = class_mismatch(list(classes), class_folders(root / "val"))
    if problem:
        raise ConfigError("data.root", f"{cfg.root}: {problem}")
    test_samples = scan_split(root / "val", list(classes))[1]
    train_idx, val_idx = split_indices(len(samples), r["val_fraction"])
    sets = image_folder(r, [samples[i] for i in train_idx], [samples[i] for i in val_idx], test_samples)
    return (*sets, len(classes), r["channels"])


class DecodedFiles(Dataset):
    """Files through :func:`decode_u8`: (uint8 image, "") or, for one that cannot be
    decoded, (zeros, the error line), so a loader process never dies on a file."""

    def __init__(self, samples, spec: ImageSpec):
        self.samples, self.spec = list(samples), spec

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        try:
            return decode_u8(self.samples[i][0], self.spec), ""
        except DataError as exc:
            return torch.zeros(self.spec.channels, self.spec.size, self.spec.size, dtype=torch.uint8), str(exc)


def tree_arrays(cfg, r: dict):
    """The splits of :func:`class_tree` decoded once into uint8 tensors (data.resident), by
    ``r["workers"]`` loader processes (0: here). An undecodable file raises
    :class:`DataError`, or with data.skip_bad_images keeps its place with the label -1:
    the resident loaders drop it from its batches and count it, as the loaders do."""
    from torch.utils.data import DataLoader

    train, val, test, classes, channels = class_tree(cfg, {**r, "decode": "cpu"})
    spec = specs(r)[1]
    out, bad = [], []
    for part in (train, val, test):
        images, errors = [], []
        # a generator of its own: this runs while the run's weights are being seeded, and a draw from
        # the global one (a loader's base seed) would make them depend on whether the set was cached
        decoding = DataLoader(DecodedFiles(part.samples, spec), batch_size=256, num_workers=r.get("workers", 0),
                              generator=torch.Generator())
        for x, err in decoding:
            images.append(x)
            errors += err
        y = torch.tensor([label for _, label in part.samples], dtype=torch.long)
        for k, err in enumerate(errors):
            if err and not r["skip_bad_images"]:
                raise DataError(err)
            if err:
                y[k] = -1
                bad.append(err)
        x = torch.cat(images) if images else torch.zeros(0, spec.channels, spec.size, spec.size, dtype=torch.uint8)
        out.append((x, y))
    if bad:
        log.warning("%d undecodable image(s), dropped from their batches (data.skip_bad_images), first %s",
                    len(bad), bad[0])
    return (*out, classes, channels)
