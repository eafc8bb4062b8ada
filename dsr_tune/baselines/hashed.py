"""HashedNet (Chen et al. 2015): each sparse layer's weight drawn from a small bank by a hash.

A layer with ``n`` virtual weights and a bank of ``k`` trainable values uses
``W[i] = sign(i) * bank[h(i)]``: ``h`` maps positions to bank slots, ``sign``
is a second hash to +-1 that makes collisions cancel on average instead of
adding up (the feature-hashing trick Chen et al. use). Gradients reach the bank
through the gather (autograd sums the gradients of every position sharing a
slot), which is the whole training rule.

Our hash is a seeded random map rather than xxHash: ``h(i) = perm[i] mod k``
for a random permutation ``perm`` of the positions, so every slot is shared by
``floor(n/k)`` or ``ceil(n/k)`` positions and no trainable value is dead. It is
rebuilt from ``(seed, layer name)`` on construction and never saved: a
checkpoint holds only the banks (and the layer's dense bias).

It is applied with ``torch.nn.utils.parametrize``, so a hashed conv or linear
is still an ``nn.Conv2d`` / ``nn.Linear`` whose ``.weight`` is computed; its
one trainable tensor is ``<layer>.parametrizations.weight.original``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize


class HashedWeight(nn.Module):
    """Parametrization: bank of shape (1, k) -> virtual weight of ``shape``.

    The bank is kept 2-D so the trainer's optimizer treats it as a weight
    (weight decay applies, as it would to the weights it replaces).
    """

    def __init__(self, shape: torch.Size, bank_size: int, seed: int):
        super().__init__()
        numel = int(torch.Size(shape).numel())
        if not 1 <= bank_size <= numel:
            raise ValueError(f"bank size must be in [1, {numel}], got {bank_size}")
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(numel, generator=g)
        self.shape = torch.Size(shape)
        self.bank_size = bank_size
        self.register_buffer("index", perm % bank_size, persistent=False)
        sign = torch.randint(0, 2, (numel,), generator=g).float().mul_(2).sub_(1)
        self.register_buffer("sign", sign, persistent=False)
        # the first position of each slot: initialise the bank from those, so
        # the virtual weights are a sample of the layer's own init distribution
        self.register_buffer("first", torch.argsort(perm)[:bank_size], persistent=False)

    def forward(self, bank: torch.Tensor) -> torch.Tensor:
        return (bank[0][self.index] * self.sign.to(bank.dtype)).view(self.shape)

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.reshape(-1)
        return (flat[self.first] * self.sign[self.first].to(flat.dtype)).unsqueeze(0)


def _layer_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def hash_layers(model: nn.Module, bank_sizes: Mapping[str, int], seed: int = 0) -> nn.Module:
    """Replace the weights named in ``bank_sizes`` (``"conv2.weight"`` -> bank size)
    by hashed ones, in place. Only conv and linear weights are accepted.

    After the call the model's trainable parameters are its untouched ones plus
    one bank per named weight: ``count_params(model)`` grows by
    ``sum(bank_sizes.values())`` minus the replaced weights' sizes.
    """
    modules = dict(model.named_modules())
    for pname, size in bank_sizes.items():
        mod_name, _, attr = pname.rpartition(".")
        mod = modules.get(mod_name)
        if attr != "weight" or not isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            raise ValueError(f"{pname!r} is not the weight of a conv or linear layer")
        w = mod.weight
        parametrize.register_parametrization(mod, "weight", HashedWeight(w.shape, int(size), _layer_seed(seed, pname)))
    return model


def bank_names(model: nn.Module) -> list[str]:
    """Parameter names of the banks of a hashed model."""
    return [n for n, _ in model.named_parameters() if n.endswith(".parametrizations.weight.original")]
