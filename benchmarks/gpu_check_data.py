"""gpu_check's ``data`` section: JPEG decode + random-resized crop + flip of generated
ImageNet-sized JPEGs, the package's PIL loader with N processes against decoding on the
device (torchvision.io directly, and the package's own data.decode=gpu path)."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from gpu_check_lib import FEED_TARGET, StepTimer, jpeg_tree, sync


def package_data(root: Path, decode: str = "cpu"):
    """The package's own ImageNet pipeline on the generated tree (``data.decode`` cpu or gpu):
    its DataBundle, whose training set, collate function and ``to_device`` the timings use."""
    from dsr_tune import config as C
    from dsr_tune.data import build_data

    cfg = C.DataConfig(name="imagenet", root=str(root), image_size=224, val_fraction=0.0, decode=decode,
                       loader_workers=0, batch_size=8)
    return build_data(cfg)


def loader_rate(bundle, workers: int, batch: int, images: int, pin: bool, deadline: float,
                device: torch.device | None = None) -> dict:
    """Images/s of a DataLoader with ``workers`` processes over the package's training set,
    counted after the first batch of every worker (process start-up is not decoding). With
    ``device``, every batch also goes through ``bundle.to_device`` (decode=gpu: the decoding
    and augmentation on the device happen there). ``images`` counts the timed ones."""
    from torch.utils.data import DataLoader, RandomSampler

    train_set = bundle.train.dataset
    untimed = max(1, workers) * batch
    sampler = RandomSampler(train_set, replacement=True, num_samples=images + untimed,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(train_set, batch, sampler=sampler, num_workers=workers, pin_memory=pin, drop_last=True,
                        collate_fn=bundle.train.collate_fn)

    def batch_x(b):
        return bundle.to_device(b, device)[0] if device is not None else bundle.to_device(b, "cpu")[0]

    it = iter(loader)
    shape = tuple(batch_x(next(it)).shape)
    for _ in range(max(1, workers) - 1):
        next(it)
    if device is not None:
        sync(device)
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for b in it:
        n += len(batch_x(b))
        if time.monotonic() > deadline:
            break
    if device is not None:
        sync(device)
    dt = time.perf_counter() - t0
    main_cpu = time.process_time() - c0
    del it
    return {"workers": workers, "images": n, "seconds": dt, "img_s": n / dt, "main_process_cores": main_cpu / dt,
            "batch_shape": shape}


def pil_cpu_rate(train_set, images: int, deadline: float) -> dict:
    """Images per CPU-second of the package's PIL transforms in this process on one thread, as
    a loader worker runs them: CPU time, so other processes on the cores barely change it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        order = torch.randint(len(train_set), (images + 8,), generator=torch.Generator().manual_seed(0)).tolist()
        for i in order[:8]:  # warm-up
            train_set[i]
        c0, n = time.process_time(), 0
        for i in order[8:]:
            train_set[i]
            n += 1
            if time.monotonic() > deadline:
                break
        cpu = time.process_time() - c0
    finally:
        torch.set_num_threads(threads)
    return {"images": n, "cpu_s": cpu, "img_per_cpu_s": n / cpu}


def decode_on_device(datas: list[torch.Tensor], device: torch.device, size: int = 224) -> torch.Tensor:
    """Encoded JPEG bytes -> a normalized, randomly cropped and flipped float batch on ``device``.

    The physical rate: torchvision.io's batched decode_jpeg on the device (nvJPEG on CUDA),
    then the random-resized crop, flip and normalisation on the device too, with nothing of the
    package around it. The package's own path (``data.decode=gpu``) is timed beside it in
    :func:`section_data` through :func:`loader_rate` with ``device``.
    """
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms.v2.functional import resized_crop

    from dsr_tune.data.images import IMAGENET_MEAN, IMAGENET_STD

    images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    crops = [resized_crop(img, *RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)), [size, size],
                          antialias=True) for img in images]
    x = torch.stack(crops).float().div_(255)
    flip = torch.rand(len(x), device=device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def device_decode_rate(device: torch.device, files: list[Path], batch: int, deadline: float) -> dict:
    from torchvision.io import read_file

    def one(chunk):
        return decode_on_device([read_file(str(f)) for f in chunk], device)

    chunks = [files[i:i + batch] for i in range(0, len(files) - batch + 1, batch)]
    x = one(chunks[0])  # warm-up: nvJPEG handles, kernels
    out = {"batch_shape": tuple(x.shape), "on_device": x.device.type == device.type,
           "channels_last": x.is_contiguous(memory_format=torch.channels_last), "finite": bool(x.isfinite().all()),
           "mean": float(x.mean()), "std": float(x.std())}
    del x
    sync(device)
    t0, c0, n, gpu = time.perf_counter(), time.process_time(), 0, StepTimer(device)
    for rounds in range(1000):
        for chunk in chunks:
            gpu(lambda c=chunk: one(c))
            n += len(chunk)
        if rounds >= 2 and (time.perf_counter() - t0 > 3 or time.monotonic() > deadline):
            break
    sync(device)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {**out, "images": n, "seconds": dt, "img_s": n / dt, "cpu_s_per_image": cpu / n,
            "device_ms_per_batch": statistics.median(gpu.ms()), "batch": batch}


def section_data(ctx, res) -> None:
    s, device, cuda = ctx.sizes, ctx.device, ctx.device.type == "cuda"
    t = time.perf_counter()
    root = jpeg_tree(ctx.work, s.jpeg)
    files = sorted((root / "train").rglob("*.jpg"))
    kb = statistics.fmean(f.stat().st_size for f in files) / 1024
    res.metric("jpeg_generated_s", time.perf_counter() - t, f"{len(files)} train JPEGs around {s.jpeg['size']} px, "
               "quality 90, PIL (0 when an earlier section made the tree)")
    res.metric("jpeg_mean_kib", kb, "mean file size (ImageNet's train JPEGs average about 110 KiB)")
    bundle = package_data(root)  # the package's own training transforms (data.decode=cpu)
    train_set = bundle.train.dataset
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    res.details["cores"] = cores
    cpu = pil_cpu_rate(train_set, 100 if ctx.quick else 400, time.monotonic() + min(15.0, ctx.left() / 4))
    res.details["pil_cpu"] = cpu
    res.metric("pil_img_per_cpu_second", cpu["img_per_cpu_s"],
               f"the same transforms in this process on one thread, {cpu['images']} images / their CPU time "
               "(time.process_time): the per-core rate, barely touched by other load")
    runs, per_core_for_estimate = [], None
    for n in [w for w in s.loader_workers if w <= cores]:
        if ctx.left() < 15:
            res.note(f"loader with {n} processes: skipped, {ctx.left():.0f} s left")
            break
        rate1 = runs[0]["img_s"] if runs else 250.0  # a first guess: about 3 s of images
        images = max(8 * s.loader_batch * n, int(rate1 * n * (1.5 if ctx.quick else 3.0)))
        deadline = time.monotonic() + min(20.0, ctx.left() / 3)
        r = loader_rate(bundle, n, s.loader_batch, images, cuda, deadline)
        runs.append(r)
        res.metric(f"loader_img_s_{n}proc", r["img_s"],
                   f"DataLoader, {n} process(es), batch {s.loader_batch}, the package's ImageNet transforms (PIL decode, "
                   f"RandomResizedCrop 224, flip, ToTensor, Normalize){', pinned' if cuda else ''}; "
                   f"{r['images']} images after each worker's first batch")
        res.metric(f"loader_img_s_per_core_{n}proc", r["img_s"] / n, "images/s / loader processes")
        if n < cores or per_core_for_estimate is None:  # one core left to the training process
            per_core_for_estimate = (n, r["img_s"] / n)
    res.details["loader"] = runs
    res.check("loader_batches_224", all(r["batch_shape"] == (s.loader_batch, 3, 224, 224) for r in runs),
              f"every loader batch is ({s.loader_batch}, 3, 224, 224): {sorted({r['batch_shape'] for r in runs})}")
    n, per_core = per_core_for_estimate
    res.metric("loader_cores_for_3000_img_s_pil", FEED_TARGET / min(per_core, cpu["img_per_cpu_s"]),
               f"{FEED_TARGET:,} / the lower of the per-CPU-second rate and the per-process rate with {n} "
               "process(es) (the most that leave the training process a core)")
    d = device_decode_rate(device, files, s.decode_batch, time.monotonic() + min(20.0, max(5.0, ctx.left() - 5)))
    res.details["device_decode"] = d
    res.check("device_decode_batch", d["batch_shape"] == (s.decode_batch, 3, 224, 224) and d["on_device"]
              and d["channels_last"] and d["finite"] and abs(d["mean"]) < 1.5 and 0.2 < d["std"] < 3,
              f"decode_on_device gives a finite, normalized channels_last batch {d['batch_shape']} on the "
              f"{device.type} (mean {d['mean']:.2f}, std {d['std']:.2f})")
    res.metric("device_decode_img_s", d["img_s"],
               f"torchvision.io.decode_jpeg(device={device.type!r}) on batches of {d['batch']} file bytes, then "
               f"random-resized crop 224, flip and normalisation on the {device.type}; files read in the loop; "
               f"{d['images']} images")
    res.metric("device_decode_img_s_per_cpu_core", 1 / d["cpu_s_per_image"],
               "images per CPU-second of this process (time.process_time) while decoding on the device")
    res.metric("loader_cores_for_3000_img_s_device_decode", FEED_TARGET * d["cpu_s_per_image"],
               f"{FEED_TARGET:,} x CPU-seconds per image: the host work left (reading files, launching)")
    res.metric("device_share_for_3000_img_s", FEED_TARGET / d["img_s"],
               f"share of one {device.type} second that decoding {FEED_TARGET:,} images takes from training")
    package_decode_gpu(ctx, res, root, cores)


def package_decode_gpu(ctx, res, root: Path, cores: int) -> None:
    """The package's data.decode=gpu path: loader processes read the files' bytes, the bundle's
    to_device decodes and augments each batch on the device; enough images for a stable rate."""
    s, device = ctx.sizes, ctx.device
    if ctx.left() < 10:
        res.note(f"the package's data.decode=gpu path: skipped, {ctx.left():.0f} s left")
        return
    gpu_bundle = package_data(root, decode="gpu")
    n = 1 if ctx.quick else min(4, cores)
    p = loader_rate(gpu_bundle, n, s.decode_batch, s.package_decode_images, device.type == "cuda",
                    time.monotonic() + min(20.0, ctx.left() / 2), device=device)
    res.details["package_decode_gpu"] = p
    res.check("package_decode_gpu_batch", p["batch_shape"] == (s.decode_batch, 3, 224, 224),
              f"data.decode=gpu batches are ({s.decode_batch}, 3, 224, 224) on the {device.type}: {p['batch_shape']}")
    res.metric("package_decode_gpu_img_s", p["img_s"],
               f"the package's data.decode=gpu path: {n} loader process(es) read the files, DataBundle.to_device "
               f"decodes (batched decode_jpeg) and augments them on the {device.type}; {p['images']} images timed "
               f"in {p['seconds']:.1f} s after {n} untimed batch(es)")
    res.metric("package_decode_gpu_main_process_cores", p["main_process_cores"],
               "CPU-seconds of the training process per second while it decodes on the device")
