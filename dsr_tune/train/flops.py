"""What a run costs in FLOPs, counted from the densities it actually had.

Convention (the README's, followed everywhere): a multiply-add is 2 FLOPs, and
only convolutions and linear layers (matrix products) are counted, as
``torch.utils.flop_counter.FlopCounterMode`` counts them (biases, batch norm,
activations, pooling, the loss, the optimizer update and other elementwise
work are not). A conv or linear weight used ``u`` times per image (its output
positions) with ``a`` of its ``n`` weights active costs ``2 u a`` FLOPs per
image forward: its dense count times its density. Per training image a layer
costs its forward three times: forward, input gradient (the first layer's
too, one rule for all), weight gradient. A
method that needs the dense gradient of its sparse weights (the registry's
``dense_grad``: RigL at its reallocation steps, SNFS at every step) pays the
weight-gradient pass of those tensors densely, ``2 u n``, at those steps.
Dense phases (DSD, GMP before it prunes) are dense masks, so they count as
such with no special case. HashedNet computes its virtual weights densely and
counts as the dense model; thin dense counts its own narrower model.

Counts are exact integers. Densities change only when the masks do, so the
per-image figures are cached and recomputed only when the masking's
``version`` moves: a training step adds one integer product.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..models import build_model
from ..sparse import unwrap

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@torch.no_grad()
def layer_costs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """``{weight name: (uses per image, numel)}`` of every conv and linear
    weight, from one forward of one zero input shaped ``input_shape`` (batch 1;
    any device, ``meta`` included). A module called twice is used twice."""
    model = unwrap(model)
    uses: dict[str, int] = {}
    numel: dict[str, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, LAYERS):
            key = f"{name}.weight" if name else "weight"
            rows, numel[key] = mod.weight.shape[0], mod.weight.numel()

            def count(_mod, _inputs, out, key=key, rows=rows):
                uses[key] = uses.get(key, 0) + out[0].numel() // rows

            hooks.append(mod.register_forward_hook(count))
    p = next(model.parameters())
    was_training = model.training
    model.eval()  # batch norm of one image in training mode would fail (and move its statistics)
    try:
        model(torch.zeros(input_shape, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {k: (uses.get(k, 0), numel[k]) for k in numel}


def forward_flops(layers: dict[str, tuple[int, int]], active: dict[str, int] | None = None) -> int:
    """Forward FLOPs per image, with ``active[name]`` weights of each masked tensor (the rest dense)."""
    active = active or {}
    return sum(2 * u * active.get(k, n) for k, (u, n) in layers.items())


def dense_flops(cfg, num_classes: int, in_channels: int, image_size: int | None = None) -> int:
    """Forward FLOPs per image of the dense network of ``cfg.model`` at
    density 1 (the dense row's model, whatever ``cfg``'s method is); built on
    the meta device, so no memory and no weights. ``image_size``: default the
    side the config's data set gives its images."""
    from ..data.choices import image_size as side

    m = cfg.model
    size = image_size or side(cfg.data)
    with torch.device("meta"):
        model = build_model(m.name, width=m.width, depth=m.depth, num_classes=num_classes, in_channels=in_channels)
    return forward_flops(layer_costs(model, (1, in_channels, size, size)))


def planned_flops(cfg, num_classes: int, in_channels: int, image_size: int | None = None) -> tuple[int, int, bool]:
    """``(forward, training)`` FLOPs per image of ``cfg``'s run as it starts, and
    whether they hold for the whole run, before it trains: its method's model on
    the meta device (thin dense's narrower one), its sparse tensors at
    ``sparsity.sparsity`` spread as ``sparsity.distribution`` says, charged as
    :class:`FlopCounter` charges a step (SNFS's dense weight gradient included;
    RigL's, at its few updates, not). They hold for masks that never move from
    that spread (dense, thin dense, HashedNet, static sparse); methods that move
    the densities, start dense (GMP, DSD) or take another run's masks are an
    estimate at the planned spread."""
    from .. import methods
    from ..data.choices import image_size as side
    from ..models import sparse_names
    from ..sparse import layer_counts

    method, m, s = methods.get(cfg.sparsity.method), cfg.model, cfg.sparsity
    size = image_size or side(cfg.data)
    with torch.device("meta"):
        if method.model is not None:
            model = method.model(cfg, num_classes, in_channels)
        else:
            model = build_model(m.name, width=m.width, depth=m.depth, num_classes=num_classes, in_channels=in_channels)
    layers = layer_costs(model, (1, in_channels, size, size))
    active: dict[str, int] = {}
    if method.masks:
        names = sparse_names(m.name, model, m.sparse_layers, m.dense_layers)
        shapes = {n: p.shape for n, p in model.named_parameters() if n in names}
        active = {n: c for n, c in layer_counts(shapes, 1.0 - s.sparsity, s.distribution).items() if n in layers}
    forward = forward_flops(layers, active)
    dense_grad = sum(2 * u * (n - active[k]) for k, (u, n) in layers.items() if k in active)
    train = 3 * forward + (dense_grad if method.dense_grad == "steps" else 0)
    holds = not method.masks or (method.reallocator is None and method.masking is None and not s.mask_from)
    return forward, train, holds


def device_name(device: torch.device, world_size: int = 1) -> str:
    """``cpu``, ``mps`` or the accelerator's name; ``N x <name>`` for N workers."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{world_size} x {name}" if world_size > 1 else name


class FlopCounter:
    """A run's training FLOPs as it trains, its inference FLOPs and reallocation time.

    Call :meth:`charge` after every training step with the images this process
    saw: the step is charged at the masks it trained with (a reallocation at its
    end moves the masks afterwards, and for ``dense_grad="updates"`` makes its
    weight gradient dense). :meth:`epoch_fields` adds the epoch's totals,
    summed over DDP ranks, to the previous epoch record's.
    """

    def __init__(self, layers: dict[str, tuple[int, int]], masking=None, dense_grad: str | None = None,
                 device: str = "cpu", dense: int | None = None):
        self.layers, self.masking, self.dense_grad, self.device = dict(layers), masking, dense_grad, device
        self.dense = dense  # the dense model's forward FLOPs per image (dense_flops), recorded as the unit
        self.pending = self.images = 0  # this process's training FLOPs and images since the last epoch_fields()
        self._realloc_seen = masking.realloc_seconds if masking is not None else 0.0
        self.refresh()

    def refresh(self) -> None:
        """Recompute the per-image figures from the masks (call after changing
        them outside a training step, e.g. loading a checkpoint)."""
        m = self.masking
        active = m.active_counts() if m is not None else {}
        self.forward = forward_flops(self.layers, active)
        # the dense weight gradient of the masked tensors, beyond their sparse one
        extra = sum(2 * u * (n - active[k]) for k, (u, n) in self.layers.items() if k in active)
        self._step = 3 * self.forward + (extra if self.dense_grad == "steps" else 0)
        self._update = 3 * self.forward + (extra if self.dense_grad in ("steps", "updates") else 0)
        self._version = m.version if m is not None else 0

    def charge(self, images: int) -> None:
        self.images += images
        m = self.masking
        if m is not None and m.version != self._version:  # reallocated after this step's backward
            self.pending += images * self._update
            self.refresh()
        else:
            self.pending += images * self._step

    def infer_flops(self) -> int:
        """Forward FLOPs per image of the model as it is now."""
        if self.masking is not None and self.masking.version != self._version:
            self.refresh()
        return self.forward

    def epoch_fields(self, records: list[dict], epoch_time: float, device: torch.device) -> dict:
        """The epoch record's cost fields: cumulative ``train_flops`` and
        ``train_images`` (all ranks), ``train_time`` (sum of epoch times) and
        ``realloc_time`` (rank 0's measured seconds inside reallocations), the
        ``infer_flops`` per image now, ``dense_flops`` and the ``device``. A
        total is None after epochs recorded without it."""
        flops, images, self.pending, self.images = self.pending, self.images, 0, 0
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            total = torch.tensor([flops, images], dtype=torch.int64, device=device)
            dist.all_reduce(total)
            flops, images = (int(v) for v in total.tolist())
        realloc = 0.0
        if self.masking is not None:
            realloc, self._realloc_seen = self.masking.realloc_seconds - self._realloc_seen, self.masking.realloc_seconds
        prev = next((r for r in reversed(records) if r.get("kind") == "epoch"), None)

        def cumulative(key: str, add):
            if prev is None:
                return add
            return None if prev.get(key) is None else prev[key] + add

        out = {"train_flops": cumulative("train_flops", flops), "train_images": cumulative("train_images", images),
               "infer_flops": self.infer_flops(), "train_time": cumulative("train_time", epoch_time),
               "realloc_time": cumulative("realloc_time", realloc), "device": self.device}
        return out | ({"dense_flops": self.dense} if self.dense is not None else {})
