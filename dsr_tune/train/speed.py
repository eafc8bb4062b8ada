"""A short measurement of how fast a config trains on this machine: a few
timed steps on random images of the config's shape (no data files read), for
a plan that prices a sweep before it runs."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .loop import autocast
from .setup import build_run_model, pick_device


def throughput(cfg, num_classes: int, in_channels: int, image_size: int, steps: int = 50,
               seconds: float = 3.0) -> tuple[float, str, int]:
    """``(training images per second, device, batch)`` of one worker of ``cfg``: one
    untimed step, then up to ``steps`` timed ones, stopping after ``seconds``
    (one at least);
    each a forward, backward and SGD step of the run's model (masked layers
    compute densely, as in training) on a batch of ``data.batch_size /
    train.workers`` random images."""
    device = pick_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(0)
    model = build_run_model(cfg, num_classes, in_channels, resuming=True).to(device)
    batch = max(1, cfg.data.batch_size // max(1, cfg.train.workers))
    x = torch.randn(batch, in_channels, image_size, image_size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    if cfg.train.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, cfg.train.precision):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    done, t0 = 0, time.perf_counter()
    while done < steps and (done == 0 or time.perf_counter() - t0 < seconds):
        step()
        done += 1
    return done * batch / (time.perf_counter() - t0), device.type, batch
