"""Decoding and augmenting a batch on the training device (``data.decode=gpu``).

Loader processes ship file bytes and the recipe numbers drawn by
:meth:`ImageSpec.draw` (``FolderImages(encoded=True)``, :func:`collate_encoded`).
Here the JPEGs of a batch are decoded in one call
(``torchvision.io.decode_jpeg(list, device=...)``: nvJPEG on CUDA,
libjpeg-turbo on the CPU) and the same recipe the CPU path applies with PIL
is applied with tensor ops. On a CPU device this is the very code a GPU runs,
which is how the tests cover it.

Two public steps, for the trainer (through :meth:`DataBundle.to_device`) and
for benchmarks that time decoding alone:

- :func:`decode_images` -- bytes -> uint8 ``C x H x W`` tensors on the device;
- :func:`device_transform` -- those tensors + recipe numbers -> the normalised
  ``B x C x size x size`` float batch;

and :func:`encoded_batch_to_device`, both in one call.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .files import DataError, open_image
from .images import ImageSpec

log = logging.getLogger("dsr_tune.data")


def _decode_jpeg(data, channels: int, device: torch.device):
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    with warnings.catch_warnings():  # torchvision 0.29 marks torchvision.io's decoders deprecated (torchcodec)
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=mode, device=device)


def _decode_on_cpu(data: torch.Tensor, path: str, channels: int, device: torch.device) -> torch.Tensor:
    """PIL, for what the JPEG decoder cannot take (PNG, CMYK, ...): the same
    conversion as the CPU path, then to the device."""
    x = torch.from_numpy(np.array(open_image(path, channels, data.numpy().tobytes())))  # a writable copy
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    return x.to(device, non_blocking=True)


def decode_images(data: list[torch.Tensor], on_device: list[bool], paths: list[str], channels: int,
                  device: torch.device | str) -> tuple[list[torch.Tensor | None], list[str]]:
    """Decode a batch of encoded files to uint8 ``channels x H x W`` tensors on ``device``.

    ``on_device[k]``: file k is a JPEG the device decoder takes; those are
    decoded in one batched call, the rest by PIL one by one. Returns the
    images (None where a file failed) and one error line per failed file.
    If the batched call fails, its files are retried one by one, so a broken
    file costs only itself.
    """
    device = torch.device(device)
    out: list[torch.Tensor | None] = [None] * len(data)
    errors: list[str] = []
    jpeg = [k for k, ok in enumerate(on_device) if ok and data[k].numel()]
    try:
        for k, img in zip(jpeg, _decode_jpeg([data[k] for k in jpeg], channels, device) if jpeg else []):
            out[k] = img
    except RuntimeError:
        jpeg_failed = True
    else:
        jpeg_failed = False
    retry = set(jpeg) if jpeg_failed else set()
    for k in range(len(data)):
        if out[k] is not None or not data[k].numel():  # empty: the loader could not read it, and said why
            continue
        try:
            if k in retry:
                try:
                    out[k] = _decode_jpeg(data[k], channels, device)
                    continue
                except RuntimeError:
                    pass  # PIL may still read it (and if not, says why)
            out[k] = _decode_on_cpu(data[k], paths[k], channels, device)
        except DataError as exc:
            errors.append(str(exc))
    return out, errors


def _recipe(img: torch.Tensor, p: list[int], size: int) -> torch.Tensor:
    """One image through region -> resize -> pad -> crop -> flip, as float 0..255."""
    top, left, h, w, rh, rw, pad, ct, cl, flip = p[:10]
    x = img[:, top:top + h, left:left + w]
    if (h, w) != (rh, rw):
        # antialiased bilinear is PIL's filter; rounding matches PIL's uint8 output
        x = F.interpolate(x[None].float(), size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)[0]
        x = x.round_().clamp_(0, 255)
    else:
        x = x.float()
    if pad:
        x = F.pad(x[None], (pad, pad, pad, pad), mode="reflect")[0]
    x = x[:, ct:ct + size, cl:cl + size]
    return x.flip(-1) if flip else x


def device_transform(images: list[torch.Tensor], params: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """The recipe numbers ``params`` (``B x N_PARAMS``, from :meth:`ImageSpec.draw`)
    applied to decoded uint8 images on their device; returns the
    ``B x channels x size x size`` float32 batch normalised with the spec's
    mean and std, the tensor the CPU path gives up to resize-kernel rounding."""
    rows = params.tolist()  # params stay on the host: no device sync per image
    x = torch.stack([_recipe(img, p, spec.size) for img, p in zip(images, rows)])
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return x.div_(255.0).sub_(mean).div_(std)


def encoded_batch_to_device(batch: dict, device: torch.device | str, spec: ImageSpec,
                            skip_bad: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A :func:`collate_encoded` batch -> ``(x, y, dropped)`` on ``device``.

    Files that cannot be read or decoded raise :class:`DataError` naming the
    first one, or with ``skip_bad`` are dropped from the batch (``dropped``
    counts them, and the batch is that much smaller).
    """
    device = torch.device(device)
    errors = [e for e in batch["error"] if e]
    on_device = [bool(p[10]) for p in batch["params"].tolist()]
    files = list(torch.split(batch["data"], batch["lengths"].tolist()))  # views: no copy
    images, decode_errors = decode_images(files, on_device, batch["path"], spec.channels, device)
    errors += decode_errors
    if errors and not skip_bad:
        raise DataError(errors[0])
    keep = [k for k, img in enumerate(images) if img is not None and not batch["error"][k]]
    if errors:
        log.warning("skipped %d undecodable image(s), first %s", len(errors), errors[0])
    x = device_transform([images[k] for k in keep], batch["params"][keep], spec) if keep else \
        torch.zeros(0, spec.channels, spec.size, spec.size, device=device)
    y = batch["label"][keep].to(device, non_blocking=True)
    return x, y, len(files) - len(keep)
