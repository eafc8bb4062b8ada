"""``dsr-tune export``: a trained sparse model in compressed form, and its loader.

Each masked tensor is stored as its active values (in row-major order) plus
their positions, as whichever is smaller: int32 flat indices (4 bytes per
active weight) or a bitmask over all positions (1 bit each, packed into
bytes). Below a density of 1/32 indices win; at sparsity 0.9 the bitmask does.
Every other tensor of the state dict (dense layers, BN statistics, HashedNet
banks) is stored as is. The loader rebuilds the architecture from the run's
config and fills the masked-out positions with exact zeros, which is what the
trained model holds there (the masking keeps them zero), so the restored
model's outputs equal the original's bit for bit.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint as ckpt
from .. import methods, runfolder

FORMAT = "dsr_tune.export/1"
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8 bytes, 8 positions per byte (little-endian bits)."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8)
    return (flat * _BITS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    bits = (packed.unsqueeze(1) & _BITS).ne(0).view(-1)
    return bits[:numel]


def pack_dense(tensors: dict[str, torch.Tensor]) -> dict:
    """Many small tensors as one flat buffer per dtype (each tensor saved on its
    own costs a few hundred bytes of archive overhead: most of a small model's
    dense part)."""
    meta, flat = [], {}
    for name, t in tensors.items():
        key = str(t.dtype).removeprefix("torch.")
        meta.append((name, tuple(t.shape), key))
        flat.setdefault(key, []).append(t.detach().cpu().reshape(-1))
    return {"meta": meta, "data": {k: torch.cat(v) for k, v in flat.items()}}


def unpack_dense(packed: dict) -> dict[str, torch.Tensor]:
    offset = {k: 0 for k in packed["data"]}
    out = {}
    for name, shape, key in packed["meta"]:
        n = math.prod(shape)
        out[name] = packed["data"][key][offset[key]:offset[key] + n].clone().view(shape)
        offset[key] += n
    return out


def compress(state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict:
    """Split a state dict into compressed sparse entries (``masks``' tensors) and dense ones."""
    sparse, dense = {}, {}
    for name, t in state.items():
        t = t.detach().cpu()
        if name not in masks:
            dense[name] = t.clone()
            continue
        mask = masks[name].cpu().reshape(-1)
        values = t.reshape(-1)[mask].clone()
        entry = {"shape": tuple(t.shape), "values": values}
        if 4 * values.numel() < math.ceil(mask.numel() / 8):
            entry["index"] = mask.nonzero().squeeze(1).to(torch.int32)
        else:
            entry["bitmask"] = pack_bits(mask)
        sparse[name] = entry
    return {"sparse": sparse, "dense": pack_dense(dense)}


def decompress(blob: dict) -> dict[str, torch.Tensor]:
    """The full state dict back; inactive positions are exact zeros."""
    state = unpack_dense(blob["dense"])
    for name, e in blob["sparse"].items():
        numel = math.prod(e["shape"])
        flat = torch.zeros(numel, dtype=e["values"].dtype)
        if "index" in e:
            flat[e["index"].long()] = e["values"]
        else:
            flat[unpack_bits(e["bitmask"], numel)] = e["values"]
        state[name] = flat.view(e["shape"])
    return state


IO_KEYS = ("fc.bias", "conv1.weight")  # every registry model's classifier bias and first conv


def _io_shape(state: dict[str, torch.Tensor], model: str = "the model") -> tuple[int, int]:
    """(num_classes, in_channels) of a registry model: its classifier bias and
    its first conv (never sparse nor hashed under any model's rule).
    Raises ValueError for a state dict without them."""
    missing = [k for k in IO_KEYS if k not in state]
    if missing:
        raise ValueError(f"{model}: the state dict has no {', '.join(missing)}; export reads the number of "
                         f"classes and input channels from {' and '.join(IO_KEYS)} (a registry model's names)")
    return int(state["fc.bias"].shape[0]), int(state["conv1.weight"].shape[1])


def export_run(run_dir: str | Path, out: str | Path | None = None) -> dict:
    """Write the final model of ``run_dir`` compressed; returns sizes in bytes.

    ``dense_bytes`` is the size of ``torch.save(model.state_dict())``, the
    plain dense checkpoint the compressed file is compared with.
    """
    run_dir = Path(run_dir)
    state = ckpt.load(run_dir / runfolder.CHECKPOINT, key=str(run_dir))
    masks = (state.get("masking") or {}).get("masks", {})
    num_classes, in_channels = _io_shape(state["model"], f"the model of {run_dir}")
    blob = {"format": FORMAT, "config": state["config"], "num_classes": num_classes,
            "in_channels": in_channels, **compress(state["model"], masks)}
    out = ckpt.save(blob, Path(out) if out else run_dir / runfolder.EXPORT)
    buf = io.BytesIO()
    torch.save(state["model"], buf)
    return {"path": str(out), "bytes": out.stat().st_size, "dense_bytes": buf.tell(),
            "sparse_tensors": len(blob["sparse"]), "nonzero": sum(e["values"].numel() for e in blob["sparse"].values())}


def load_exported(path: str | Path) -> nn.Module:
    """A dense model (eval mode) rebuilt from an exported file."""
    from .. import config as C
    from .setup import build_run_model

    blob = ckpt.load(path, key=str(path))
    if blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dsr-tune export (format {blob.get('format')!r})")
    cfg = C.from_dict(architecture_config(blob["config"]))
    # the fresh values are overwritten below; a forked RNG keeps the caller's global state as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_run_model(cfg, blob["num_classes"], blob["in_channels"], resuming=True)
    model.load_state_dict(decompress(blob))
    return model.eval()


def architecture_config(data: dict) -> dict:
    """The part of a run's config (nested dict) that builds its model, valid here.

    Kept: the model section, the sparsity section (thin dense's width and
    HashedNet's banks follow from it), train.seed (HashedNet's hash) and
    train.epochs (the DSD phases are checked against it). Dropped: the data
    set (its root may not exist here; none is read), the optimizer, and the
    training and Ray settings (workers, GPUs, storage: checked against this
    machine and the batch size, none of which matter to the architecture),
    and the links to other runs (gone, perhaps; their values are overwritten).
    A method whose section names such a link (GMP) is rebuilt as the method
    its registration names (:attr:`~dsr_tune.methods.Method.rebuilt_as`).
    """
    train = data.get("train", {})
    out = {"model": dict(data.get("model", {})), "sparsity": dict(data.get("sparsity", {})),
           "data": {"name": "synthetic"},
           "train": {k: train[k] for k in ("seed", "epochs") if k in train}}
    s = out["sparsity"]
    for key in ("mask_from", "init_from"):
        s[key] = None
    for entry in methods.REGISTRY.values():
        if entry.rebuilt_as:  # its section names files the model needs no more (gmp.dense_from): dropped
            if s.get("method") == entry.name:
                s["method"] = entry.rebuilt_as  # the same architecture
            s.pop(entry.name, None)
    return out
