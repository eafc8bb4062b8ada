"""Thin dense: a narrower dense network with the sparse run's parameter count,
its width solved by bisection (``model.width`` is the reference width).
Keys: ``sparsity.thin_dense.*``."""

import functools
import logging
from typing import Literal

from ..schema import Section, opt
from .registry import Method, register

log = logging.getLogger("dsr_tune")


class ThinDenseOptions(Section):
    match: Literal["nonzero", "storage"] = opt("nonzero", "match the sparse run's non-zero count, or 'storage' "
                                               "(+1 bit per sparse position: the count the paper's widen "
                                               "factors fit)")


def solve(cfg, num_classes: int, in_channels: int):
    """The thin width for a run config: the target is the sparse run at
    ``sparsity.sparsity`` on ``cfg.model``. The closest width is used even when
    it is more than 1% off (a tiny model may have no closer one), with a warning."""
    m, s = cfg.model, cfg.sparsity
    return _solve(m.name, m.width, m.depth, num_classes, in_channels, s.sparsity, s.distribution,
                  tuple(m.sparse_layers) if m.sparse_layers is not None else None,
                  tuple(m.dense_layers) if m.dense_layers is not None else None, s.thin_dense.match)


@functools.lru_cache(maxsize=64)  # the same width again says nothing new (--plan sizes every thin row)
def _solve(name, width, depth, num_classes, in_channels, sparsity, distribution, include, exclude, match):
    from ..baselines.thin import solve_width, sparse_target

    target = sparse_target(name, width=width, depth=depth, num_classes=num_classes, in_channels=in_channels,
                           sparsity=sparsity, distribution=distribution, include=include and list(include),
                           exclude=exclude and list(exclude), match=match)
    sol = solve_width(name, target, depth=depth, num_classes=num_classes, in_channels=in_channels, strict=False)
    (log.warning if sol.rel_error > 0.01 else log.info)(
        "thin dense: width %.4f has %d params for a target of %d (%.2f%% off)",
        sol.width, sol.params, target, 100 * sol.rel_error)
    return sol


def model(cfg, num_classes: int, in_channels: int):
    from ..models import build_model

    sol = solve(cfg, num_classes, in_channels)
    net = build_model(cfg.model.name, width=sol.width, depth=cfg.model.depth, num_classes=num_classes,
                      in_channels=in_channels)
    net.dsr_tune_info = {"thin_dense.width": round(sol.width, 6), "thin_dense.params": sol.params,
                         "thin_dense.target": sol.target}  # the trainer logs these beside the config
    return net


register(Method("thin_dense", "baseline", "a narrower dense network with the sparse run's parameter count",
                options=ThinDenseOptions, masks=False, controls=True, model=model,
                masking=lambda cfg, model, optimizer, steps_per_epoch: None))
