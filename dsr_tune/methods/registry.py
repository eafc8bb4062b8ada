"""The method registry: every method registered once, with its factory, its
own config section and its traits. Everything else derives from it: the
``sparsity.method`` choices, the ``sparsity.<method>.*`` keys and their
validation, ``dsr-tune keys``, the CLI's choices, which keys a sweep may
search, and the rows the comparison planner can make.

A method is one file in this package that calls :func:`register` with a
:class:`Method` (see ``dsr.py`` for a dynamic method, ``ablations.py`` for
comparison rows that train another method). Hooks are plain functions; each
one is optional and has the default behaviour of a masked sparse run:

- ``model(cfg, num_classes, in_channels)``: the architecture, freshly drawn
  (default: the registry model at ``model.width``);
- ``start(cfg, model)``: starting values from elsewhere (GMP's dense model);
- ``masking(cfg, model, optimizer, steps_per_epoch)``: the run's Masking or
  None (default: :func:`sparse_masking` with ``reallocator``'s method);
- ``reallocator(cfg, steps_per_epoch)``: the sparse core's method object
  (None: the masks never move);
- ``lr_factor(cfg, epoch)``: multiplies the LR schedule (DSD's last phase);
- ``check(cfg)``: checks across sections (raise ConfigError);
- ``check_paths(cfg)``: checks of files the run reads, called where it runs;
- ``derive(data, parent, arg)``: how this row's config differs from the DSR
  config it is compared with (a nested dict, changed in place);
- ``resolve(cfg)``: fills the method's null options from the run (DeepR's
  temperatures at the paper's fractions of train.epochs).

Importing this module imports no torch; the hooks import it when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..schema import ConfigError, Section

#: the run's config (a dsr_tune.config.Config) as the hooks see it: the config is built from
#: this registry, so naming its class here would tie the registry back to what it feeds
RunConfig = Any

KINDS = ("dense", "static", "dynamic", "baseline", "ablation")
#: when a method needs the dense gradient of its sparse weights (a FLOPs count charges it)
DENSE_GRAD = ("updates", "steps")
#: the sparsity keys shared by the methods that reallocate on a period schedule
TIMING = ("period_schedule", "period_scale", "stop_epoch")


@dataclass(frozen=True)
class Method:
    """One method (or comparison row) and everything the tool knows of it.

    name: its ``sparsity.method`` value (variants: the comparison label).
    kind: one of :data:`KINDS` (how tables group rows).
    options: its own config section, ``sparsity.<name>.*`` (None: no keys).
    reads: the ``sparsity.*`` keys it reads besides its own, sparsity and
        distribution (e.g. :data:`TIMING`; SET reads ``dsr.target_pruned``);
        they are searchable for it.
    masks: the run has a Masking (False: dense, thin dense, HashedNet).
    controls: as a baseline it is trained at 1x and ``sparsity.epoch_factor``
        x the DSR run's epochs (the paper's rule is the second one).
    needs: the finished run it starts from: "dense" (same seed) or "dsr"
        (same sparsity and seed); None.
    runs: variants only: the ``sparsity.method`` the row trains with.
    parametric: the label takes an argument, written ``name:E``.
    default_row: a row of ``dsr-tune compare`` when no methods are given.
    rebuilt_as: the ``sparsity.method`` an exported model of this method is
        rebuilt as, when its own config reads files a model needs no more
        (GMP: ``static``, the same architecture without ``gmp.dense_from``).
    dense_grad: the dense gradient of the sparse weights it needs, beyond
        the active ones: at its reallocation steps ("updates": RigL's growth)
        or at every step ("steps": SNFS's momentum of every weight); None.
    """

    name: str
    kind: str
    doc: str
    options: type[Section] | None = None
    reads: tuple[str, ...] = ()
    masks: bool = True
    controls: bool = False
    needs: str | None = None
    runs: str | None = None
    parametric: bool = False
    default_row: bool = True
    rebuilt_as: str | None = None
    dense_grad: str | None = None
    model: Callable[..., Any] | None = None
    start: Callable[..., None] | None = None
    masking: Callable[..., Any] | None = None
    reallocator: Callable[..., Any] | None = None
    lr_factor: Callable[[RunConfig, int], float] | None = None
    check: Callable[[RunConfig], None] | None = None
    check_paths: Callable[[RunConfig], None] | None = None
    derive: Callable[[dict, str | None, int | None], None] | None = None
    resolve: Callable[[RunConfig], None] | None = None  # fill its null options from the run (e.g. its length)
    resolves: tuple[str, ...] = ()  # the options ``resolve`` fills (they follow train.epochs on resume)

    @property
    def trains_as(self) -> str:
        """The ``sparsity.method`` a run of this row has."""
        return self.runs or self.name

    @property
    def searchable(self) -> tuple[str, ...]:
        """Dotted keys a sweep may search for this method, besides optim.* and
        train.* (which every method reads)."""
        own = [f"sparsity.{self.name}.{f}" for f in (self.options.model_fields if self.options else ())]
        # every method but dense has its parameter count from sparsity.sparsity (thin dense's
        # width, HashedNet's banks); only masks have an initial spread over tensors
        shared = ["sparsity.sparsity"] if self.kind != "dense" else []
        shared += ["sparsity.distribution"] if self.masks else []
        return tuple(shared + [f"sparsity.{k}" for k in self.reads] + own)


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` (names are unique; the order of registration is the
    order of the comparison's rows)."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    if method.kind not in KINDS:
        raise ValueError(f"method {method.name!r}: kind {method.kind!r} is not one of {', '.join(KINDS)}")
    if method.dense_grad not in (None, *DENSE_GRAD):
        raise ValueError(f"method {method.name!r}: dense_grad {method.dense_grad!r} is not None nor one of "
                         f"{', '.join(DENSE_GRAD)}")
    if method.runs is not None and method.runs not in REGISTRY:
        raise ValueError(f"method {method.name!r} runs {method.runs!r}, which is not registered before it")
    REGISTRY[method.name] = method
    return method


def get(name: str) -> Method:
    """The method (or row) called ``name``; ConfigError (naming ``sparsity.method``) otherwise."""
    if name not in REGISTRY:
        raise ConfigError("sparsity.method", f"{name!r} must be one of {', '.join(map(repr, trainable()))}")
    return REGISTRY[name]


def names(**traits) -> tuple[str, ...]:
    """Registered names whose traits equal ``traits`` (e.g. ``names(kind="ablation")``), in order."""
    return tuple(m.name for m in REGISTRY.values() if all(getattr(m, k) == v for k, v in traits.items()))


def trainable() -> tuple[str, ...]:
    """Every value ``sparsity.method`` may hold (variants train as another method)."""
    return names(runs=None)


def with_options() -> dict[str, type[Section]]:
    """``{method: its options section}`` for the trainable methods that have keys."""
    return {m.name: m.options for m in REGISTRY.values() if m.options is not None and m.runs is None}


# ---------------------------------------------------------------- helpers for the hooks


def timing(cfg: RunConfig) -> dict:
    """The period-schedule arguments of the sparse core's methods."""
    s = cfg.sparsity
    return {"periods": s.period_schedule, "stop_epoch": s.stop_epoch, "period_scale": s.period_scale}


def sparse_masking(cfg: RunConfig, model, optimizer, method=None, *, sparsity: float | None = None):
    """A :class:`~dsr_tune.sparse.Masking` over the model's sparse tensors (its
    sparse rule, or the user's patterns), with the sparse core's ``method``."""
    from ..models import sparse_names
    from ..sparse import Masking

    names_ = sparse_names(cfg.model.name, model, cfg.model.sparse_layers, cfg.model.dense_layers)
    if not names_:
        raise ConfigError("model.sparse_layers", f"{cfg.model.sparse_layers!r} matches no parameter of {cfg.model.name}")
    return Masking(model, optimizer, sparsity=cfg.sparsity.sparsity if sparsity is None else sparsity,
                   method=method, names=names_, distribution=cfg.sparsity.distribution, seed=cfg.train.seed)
