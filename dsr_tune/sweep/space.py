"""Search-space files: parse, validate every key and range, before Ray starts.

A sweep is one YAML file (see ``search_spaces/``)::

    name: digits_demo                 # MLflow experiment; default output runs/sweeps/<name>
    base: ../configs/digits.yaml      # the training config every trial starts from (relative to this file)
    config: {train: {epochs: 10}}     # changes to it, nested like a config file
    methods: [dsr]                    # methods searched (several: a categorical parameter)
    space:                            # dotted config key -> distribution
      sparsity.sparsity: {choice: [0.8, 0.9]}
      sparsity.dsr.delta: {uniform: [0.05, 0.3]}      # DSR's own key: drawn only for DSR trials
      optim.lr: {loguniform: [0.02, 0.1]}
    search: {samples: 6, metric: test_acc, mode: max, seed: 0, pareto: false, asha: null}
    seeds: [0, 1]                     # the search runs on the first
    baselines: [static, thin_dense]   # rows paired per sparsity (any method; controls at 1x and 2x)
    dense: true                       # the full dense reference, once per seed
    tracking: {uri: null, experiment: null}

Which method reads which key comes from the method registry: a key under
``sparsity.<method>.`` is that method's, the period-schedule keys belong to
the methods that read them, every other key to every method. Every problem
raises :class:`dsr_tune.config.ConfigError` naming the dotted key
(``space.sparsity.dsr.delta``, ``search.samples``, ...). Only yaml, pydantic
and the config modules are imported here.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from .. import config as C
from .. import methods
from ..schema import Real, Section, build, opt
from . import plan

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "logint")
METRICS = ("test_acc", "test_acc5", "test_loss", "train_loss", "train_acc", "val_acc", "val_acc5", "val_loss")
TOP_KEYS = ("name", "base", "config", "methods", "space", "search", "seeds", "baselines", "dense", "tracking")


def searchable_methods() -> tuple[str, ...]:
    """Methods a sweep may search: every trainable one that starts from scratch."""
    return tuple(m for m in methods.trainable() if methods.get(m).needs is None)


def readers(dotted: str) -> tuple[str, ...]:
    """The searchable methods that read ``dotted`` (all of them for a key no method owns)."""
    owners = tuple(m for m in searchable_methods() if dotted in methods.get(m).searchable)
    if dotted.startswith("sparsity."):
        return owners
    return ()  # optim.*, train.*, data.*, model.*: every method


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` in DISTRIBUTIONS; ``values`` for choice,
    ``low``/``high`` otherwise; ``methods``: the methods that read it (empty: all)."""

    key: str
    kind: str
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0
    methods: tuple = ()

    def endpoints(self) -> list:
        return list(self.values) if self.kind == "choice" else [self.low, self.high]

    def suggest(self, trial) -> Any:
        """Draw this parameter from an ``optuna.Trial`` (define-by-run)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.kind == "logint")
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "loguniform")


class Search(Section):
    samples: int = opt(8, "trials the searcher proposes", ge=1)
    metric: Literal[METRICS] = opt("test_acc", "what the searcher (and ASHA) optimises")
    mode: Literal["max", "min"] = opt("max", "maximise or minimise the metric")
    seed: int = opt(0, "TPE sampler seed")
    pareto: bool = opt(False, "also minimise nonzero_params: Optuna's multi-objective TPE, a Pareto front")
    asha: dict[str, int] | None = opt(None, "{grace_period, reduction_factor}: stop poor trials early (epochs)")
    max_concurrent: int = opt(0, "trials at once; 0: as many as the cluster holds when the sweep starts "
                              "(set it on an autoscaling cluster: nodes that are not up yet do not count)", ge=0)
    trial_cpus: Real = opt(0.1, "CPUs of each trial's own process (its Ray Train workers come on top)", gt=0, le=64)
    max_failures: int = opt(1, "Tune restarts of a failed trial (it resumes from its checkpoint)", ge=-1)


class Tracking(Section):
    uri: str | None = opt(None, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)")
    experiment: str | None = opt(None, "MLflow experiment (default: the sweep's name)")


@dataclass
class Space:
    """A validated sweep. ``base`` is the resolved training config (with
    ``config`` applied); ``params`` the searched keys in file order."""

    name: str
    path: Path
    base: C.Config
    methods: list[str]
    params: list[Param]
    search: Search
    seeds: list[int]
    baselines: list[str]
    dense: bool
    tracking_uri: str | None
    experiment: str
    raw: dict = field(default_factory=dict)


def _field(dotted: str):
    """The config field at ``dotted`` (``sparsity.dsr.delta``); ConfigError naming ``space.<key>``."""
    key = f"space.{dotted}"
    if "." not in dotted:
        raise C.ConfigError(key, "a searched key must be section.key (e.g. sparsity.dsr.delta)")
    holder: type[BaseModel] = C.Config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        fields = holder.model_fields
        if part not in fields:
            import difflib

            prefix = ".".join(parts[:i])
            moved = C.moved_key(dotted)
            close = difflib.get_close_matches(part, list(fields), n=1)
            tip = f" (did you mean {moved}?)" if moved else (f" (did you mean {prefix}.{close[0]}?)" if close else "")
            allowed = ", ".join(f"{prefix + '.' if prefix else ''}{n}" for n in fields)
            raise C.ConfigError(key, f"unknown key{tip}; allowed: {allowed}")
        info = fields[part]
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if i == len(parts) - 1:
                raise C.ConfigError(key, f"{dotted} is a section; search one of its keys")
            holder = ann
            continue
        if i != len(parts) - 1:
            raise C.ConfigError(key, f"{'.'.join(parts[:i + 1])} is a key, not a section")
        return info
    raise C.ConfigError(key, "not a key")


def _number(key: str, v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise C.ConfigError(key, f"{what} {v!r} is not a number")
    try:
        return float(v)  # YAML reads 1e-3 as a string
    except ValueError:
        raise C.ConfigError(key, f"{what} {v!r} is not a number") from None


def parse_param(dotted: str, spec: Any) -> Param:
    """``{uniform: [lo, hi]}`` etc. (optionally ``methods: [...]``) -> Param."""
    key = f"space.{dotted}"
    info = _field(dotted)
    if dotted == "sparsity.method":
        raise C.ConfigError(key, "search methods with the top-level 'methods' list, not in space")
    if not isinstance(spec, dict):  # a bare value: one fixed choice
        spec = {"choice": [spec]}
    spec = dict(spec)
    found = readers(dotted)
    if dotted.startswith("sparsity.") and not found:
        raise C.ConfigError(key, f"no searchable method reads {dotted}")
    chosen = spec.pop("methods", found)
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    if [k for k in spec if k not in DISTRIBUTIONS] or len(kinds) != 1:
        raise C.ConfigError(key, f"{spec!r}: give exactly one of {', '.join(DISTRIBUTIONS)} "
                            "(and optionally methods: [...])")
    kind, arg = kinds[0], spec[kinds[0]]
    if dotted == "sparsity.sparsity" and kind != "choice":
        # the paired baselines, the report's sections and the run keys group trials by
        # sparsity: a continuous draw would give every trial its own
        raise C.ConfigError(key, f"{kind}: the sparsity is grouped on (baselines, report), so give "
                            "a few values with choice, e.g. {choice: [0.8, 0.9]}")
    if not isinstance(chosen, (list, tuple)) or any(m not in searchable_methods() for m in chosen):
        raise C.ConfigError(f"{key}.methods", f"{chosen!r}: a list of methods among "
                                              f"{', '.join(searchable_methods())}")
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise C.ConfigError(key, f"choice needs a non-empty list of values, got {arg!r}")
        if any(isinstance(v, (list, dict)) for v in arg):
            raise C.ConfigError(key, f"choice values must be single values (numbers, strings, booleans), got {arg!r}")
        return Param(dotted, kind, values=tuple(arg), methods=tuple(chosen))
    if not (isinstance(arg, list) and len(arg) == 2):
        raise C.ConfigError(key, f"{kind} needs [low, high], got {arg!r}")
    low, high = (_number(key, v, w) for v, w in zip(arg, ("low", "high")))
    if not low < high:
        raise C.ConfigError(key, f"{kind} [{arg[0]}, {arg[1]}]: low must be below high")
    if kind in ("loguniform", "logint") and low <= 0:
        raise C.ConfigError(key, f"{kind} [{arg[0]}, {arg[1]}]: a log range needs low > 0")
    ann = info.annotation
    if kind in ("int", "logint") and not (low.is_integer() and high.is_integer()):
        raise C.ConfigError(key, f"{kind} [{arg[0]}, {arg[1]}]: integer ranges need integer ends")
    if kind in ("uniform", "loguniform") and ann is not float:
        raise C.ConfigError(key, f"{kind}: {dotted} is {getattr(ann, '__name__', ann)}, not a real number; "
                                 "use int, logint or choice")
    if kind in ("int", "logint") and ann not in (int, float):
        raise C.ConfigError(key, f"{kind}: {dotted} is {getattr(ann, '__name__', ann)}, not a number; use choice")
    return Param(dotted, kind, low=low, high=high, methods=tuple(chosen))


def _check_values(base: dict, p: Param, first_method: str) -> None:
    """Each end of the range (each choice) must make a valid config on its own."""
    for v in p.endpoints():
        data = copy.deepcopy(base)
        C.set_dotted(data, p.key, int(v) if p.kind in ("int", "logint") else v)
        if p.methods and first_method not in p.methods:
            data.setdefault("sparsity", {})["method"] = p.methods[0]
        try:
            C.from_dict(data)
        except C.ConfigError as exc:
            where = "value" if p.kind == "choice" else ("low" if v == p.low else "high")
            raise C.ConfigError(f"space.{p.key}", f"{where} {v!r} is refused: {exc}") from None


def _int_list(key: str, v: Any) -> list[int]:
    if not isinstance(v, list) or not v or any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in v):
        raise C.ConfigError(key, f"{v!r} must be a non-empty list of non-negative integers")
    if len(set(v)) != len(v):
        raise C.ConfigError(key, f"{v!r} repeats a value")
    return list(v)


def _str_list(key: str, v: Any, allowed, empty_ok: bool) -> list[str]:
    if not isinstance(v, list) or (not v and not empty_ok) or any(not isinstance(x, str) for x in v):
        raise C.ConfigError(key, f"{v!r} must be a list of names among {', '.join(allowed)}")
    for x in v:
        if x not in allowed:
            raise C.ConfigError(key, f"{x!r} is not allowed; allowed: {', '.join(allowed)}")
    return list(dict.fromkeys(v))


def read(path: str | Path, overrides: list[str] = ()) -> dict:
    """The space file as a dict with dotted command-line overrides applied:
    ``train.epochs=3`` (a config section) goes under ``config``; other keys
    (``search.samples=2``, ``seeds=[0]``, ``space.optim.lr={uniform: [0.01, 0.1]}``)
    into the file's own keys."""
    raw = C.read_yaml(path, "search space file", expect=", ".join(TOP_KEYS))
    for item in overrides:
        key, value = C.parse_override(item)
        head, _, rest = key.partition(".")
        if head in C.SECTIONS:
            C.set_dotted(raw, f"config.{key}", value)
        elif head == "space" and rest:
            node = raw.setdefault("space", {})
            if not isinstance(node, dict):
                raise C.ConfigError("space", "is not a mapping, so space keys cannot be set")
            node[rest] = value  # the searched key is one dotted string
        else:
            C.set_dotted(raw, key, value)
    return raw


def load(path: str | Path, overrides: list[str] = ()) -> Space:
    """Read, override and validate a space file; raises ConfigError (naming the key)."""
    path = Path(path).resolve()
    raw = read(path, overrides)
    for k in raw:
        if k not in TOP_KEYS:
            import difflib

            close = difflib.get_close_matches(str(k), TOP_KEYS, n=1)
            tip = f" (did you mean {close[0]}?)" if close else ""
            raise C.ConfigError(str(k), f"unknown key{tip}; allowed: {', '.join(TOP_KEYS)}")
    name = raw.get("name") or path.stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise C.ConfigError("name", f"{name!r} must be letters, digits, '-', '_' or '.'")
    base_data = _base_data(path, raw)
    searched = _str_list("methods", raw.get("methods", ["dsr"]), searchable_methods(), empty_ok=False)
    base_data.setdefault("sparsity", {})["method"] = searched[0]
    if not base_data.setdefault("train", {}).get("workers"):
        base_data["train"]["workers"] = 1  # a sweep always trains through Ray
    try:
        base = C.from_dict(base_data)
    except C.ConfigError as exc:
        raise C.ConfigError(exc.key, f"{exc.message} (in base + config)") from None
    space = raw.get("space") or {}
    if not isinstance(space, dict):
        raise C.ConfigError("space", f"must be a mapping of dotted keys to distributions, got {space!r}")
    params = [parse_param(str(k), v) for k, v in space.items()]
    for p in params:
        if p.methods and not set(p.methods) & set(searched):
            raise C.ConfigError(f"space.{p.key}", f"only {', '.join(p.methods)} read(s) it, and methods is {searched}")
        _check_values(base_data, p, searched[0])
    search = build(Search, raw.get("search"), "search")
    if search.pareto and search.metric != "test_acc":
        raise C.ConfigError("search.pareto", f"true optimises test_acc and nonzero_params; search.metric is "
                                             f"{search.metric!r}")
    _check_asha(search.asha)
    labels = _str_list("baselines", raw.get("baselines", ["static", "thin_dense"]),
                       plan.known_labels(base.sparsity.epoch_factor), empty_ok=True)
    for row in plan.rows(labels, base.sparsity.epoch_factor, base.train.epochs):
        if row.needs:
            raise C.ConfigError("baselines", f"{row.label!r} needs another finished run ({row.needs}); "
                                             "use dsr-tune compare")
    both = [b for b in labels if b in searched]
    if both:
        raise C.ConfigError("baselines", f"{both[0]!r} is also searched (methods); a method is either searched "
                                         "or paired")
    dense = raw.get("dense", True)
    if not isinstance(dense, bool):
        raise C.ConfigError("dense", f"{dense!r} must be true or false")
    tracking = build(Tracking, raw.get("tracking"), "tracking")
    return Space(name=name, path=path, base=base, methods=searched, params=params, search=search,
                 seeds=_int_list("seeds", raw.get("seeds", [base.train.seed])), baselines=labels,
                 dense=dense, tracking_uri=tracking.uri, experiment=tracking.experiment or name, raw=raw)


def _check_asha(asha: dict | None) -> None:
    for k, v in (asha or {}).items():
        if k not in ("grace_period", "reduction_factor"):
            raise C.ConfigError(f"search.asha.{k}", "unknown key; allowed: grace_period, reduction_factor")
        lo = 1 if k == "grace_period" else 2
        if v < lo:
            raise C.ConfigError(f"search.asha.{k}", f"{v!r} must be an integer >= {lo}")


def _base_data(path: Path, raw: dict) -> dict:
    base = raw.get("base")
    if not isinstance(base, str):
        raise C.ConfigError("base", f"{base!r}: give the training config file every trial starts from")
    base_path = (path.parent / base).resolve()
    if not base_path.is_file():
        raise C.ConfigError("base", f"{base!r}: no such file ({base_path})")
    extra = raw.get("config") or {}
    if not isinstance(extra, dict):
        raise C.ConfigError("config", f"must be a mapping of config sections, got {extra!r}")
    data = C.read_yaml(base_path)
    for section, values in extra.items():
        if section not in C.SECTIONS:
            raise C.ConfigError(f"config.{section}", f"unknown section; allowed: {', '.join(C.SECTIONS)}")
        if not isinstance(values, dict):
            raise C.ConfigError(f"config.{section}", f"must be a mapping of keys, got {values!r}")
        _merge(data.setdefault(section, {}), values)
    return data


def _merge(into: dict, values: dict) -> None:
    """Nested update: ``config: {sparsity: {dsr: {delta: 0.2}}}`` keeps dsr's other keys."""
    for k, v in values.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def concurrency(space: Space, resources: dict[str, float]) -> int:
    """Trials at once: ``search.max_concurrent`` when set (an autoscaling
    cluster starts without the nodes it will add), else how many fit in
    ``resources`` (Ray's cluster_resources()), at least 1: each trial holds
    ``trial_cpus`` plus its workers' CPUs (and GPUs)."""
    if space.search.max_concurrent:
        return space.search.max_concurrent
    t = space.base.train
    per_cpu = space.search.trial_cpus + t.workers * t.cpus_per_worker
    fits = math.floor(resources.get("CPU", 0.0) / per_cpu + 1e-9)
    if t.use_gpu:
        fits = min(fits, math.floor(resources.get("GPU", 0.0) / t.workers + 1e-9))
    return max(1, fits)
