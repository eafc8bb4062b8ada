"""Search-space files: parse, validate every key and range, before Ray starts.

A sweep is one YAML file (see ``search_spaces/``)::

    name: digits_demo                 # MLflow experiment; default output runs/sweeps/<name>
    base: ../configs/digits.yaml      # the training config every trial starts from (relative to this file)
    config: {train: {epochs: 10}}     # changes to it, nested like a config file
    methods: [dsr]                    # methods searched (several: a categorical parameter)
    space:                            # dotted config key -> distribution
      sparsity.sparsity: {choice: [0.8, 0.9]}
      sparsity.delta: {uniform: [0.05, 0.3]}
      optim.lr: {loguniform: [0.02, 0.1]}
      sparsity.target_pruned: {logint: [100, 600]}    # DSR only (automatic, see METHOD_KEYS)
    search: {samples: 6, metric: test_acc, mode: max, seed: 0, pareto: false, asha: null}
    seeds: [0, 1]                     # the search runs on the first
    baselines: [static, thin_dense]   # paired per sparsity, sparsity.epoch_factor x the epochs
    dense: true                       # the full dense reference, once per seed
    tracking: {uri: null, experiment: null}

Every problem raises :class:`dsr_tune.config.ConfigError` naming the dotted
key (``space.sparsity.delta``, ``search.samples``, ``sparsity.sparsity``, ...).
Only yaml and the config module are imported here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import config as C

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "logint")
# methods that may be searched (gmp needs a trained dense run; dense/thin_dense are baselines)
SEARCHABLE = ("dsr", *C.SPARSE_METHODS, "static")
# baselines a sweep can pair: no dependency on another run (gmp and the ablations need one: use compare)
PAIRABLE = ("static", "thin_dense", "hashednet", "dsd", *C.SPARSE_METHODS)
METRICS = ("test_acc", "test_acc5", "test_loss", "train_loss", "train_acc")
_DYNAMIC = ("dsr", "set", "rigl", "snfs")
# keys only some methods read: searched only when the trial's method is one of them
METHOD_KEYS = {
    "sparsity.init_threshold": ("dsr",), "sparsity.delta": ("dsr",), "sparsity.threshold_factor": ("dsr",),
    "sparsity.target_pruned": ("dsr", "set"), "sparsity.set_fraction": ("set",),
    "sparsity.deepr_l1": ("deepr",), "sparsity.deepr_temperatures": ("deepr",),
    "sparsity.drop_fraction": ("rigl", "snfs"), "sparsity.drop_decay": ("rigl", "snfs"),
    "sparsity.period_scale": _DYNAMIC, "sparsity.period_schedule": _DYNAMIC, "sparsity.stop_epoch": _DYNAMIC,
}
TOP_KEYS = ("name", "base", "config", "methods", "space", "search", "seeds", "baselines", "dense", "tracking")


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` in DISTRIBUTIONS; ``values`` for choice,
    ``low``/``high`` otherwise; ``methods``: the methods that read it."""

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


@dataclass
class Search:
    samples: int = 8            # trials the searcher proposes
    metric: str = "test_acc"    # what the searcher (and ASHA) optimises
    mode: str = "max"
    seed: int = 0               # TPE sampler seed
    pareto: bool = False        # also minimise nonzero_params: Optuna's multi-objective TPE, a Pareto front
    asha: dict | None = None    # {grace_period, reduction_factor}: stop poor trials early (epochs)
    max_concurrent: int = 0     # trials at once; 0: as many as the cluster holds when the sweep starts
                                # (set it on an autoscaling cluster: nodes that are not up yet do not count)
    trial_cpus: float = 0.1     # CPUs of each trial's own process (its Ray Train workers come on top)
    max_failures: int = 1       # Tune restarts of a failed trial (it resumes from its checkpoint)


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


def _unknown(key: str, allowed) -> C.ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], allowed, n=1)
    tip = f" (did you mean {close[0]}?)" if close else ""
    return C.ConfigError(key, f"unknown key{tip}; allowed: {', '.join(allowed)}")


def _field(dotted: str) -> dataclasses.Field:
    if dotted.count(".") != 1:
        raise C.ConfigError(f"space.{dotted}", "a searched key must be section.key (e.g. sparsity.delta)")
    section, name = dotted.split(".")
    if section not in C.SECTIONS:
        raise _unknown(f"space.{dotted}", list(C.SECTIONS))
    fields = {f.name: f for f in dataclasses.fields(C.SECTIONS[section])}
    if name not in fields:
        raise _unknown(f"space.{dotted}", [f"{section}.{n}" for n in fields])
    return fields[name]


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
    f = _field(dotted)
    if dotted == "sparsity.method":
        raise C.ConfigError(key, "search methods with the top-level 'methods' list, not in space")
    if not isinstance(spec, dict):  # a bare value: one fixed choice
        spec = {"choice": [spec]}
    spec = dict(spec)
    methods = spec.pop("methods", METHOD_KEYS.get(dotted, ()))
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    extra = [k for k in spec if k not in DISTRIBUTIONS]
    if extra or len(kinds) != 1:
        raise C.ConfigError(key, f"{spec!r}: give exactly one of {', '.join(DISTRIBUTIONS)} "
                            "(and optionally methods: [...])")
    kind, arg = kinds[0], spec[kinds[0]]
    if dotted == "sparsity.sparsity" and kind != "choice":
        # the paired baselines, the report's sections and the run keys group trials by
        # sparsity: a continuous draw would give every trial its own (or colliding f"{s:g}" keys)
        raise C.ConfigError(key, f"{kind}: the sparsity is grouped on (baselines, report), so give "
                            "a few values with choice, e.g. {choice: [0.8, 0.9]}")
    if not isinstance(methods, (list, tuple)) or any(m not in SEARCHABLE for m in methods):
        raise C.ConfigError(f"{key}.methods", f"{methods!r}: a list of methods among {', '.join(SEARCHABLE)}")
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise C.ConfigError(key, f"choice needs a non-empty list of values, got {arg!r}")
        if any(isinstance(v, (list, dict)) for v in arg):
            raise C.ConfigError(key, f"choice values must be single values (numbers, strings, booleans), got {arg!r}")
        return Param(dotted, kind, values=tuple(arg), methods=tuple(methods))
    if not (isinstance(arg, list) and len(arg) == 2):
        raise C.ConfigError(key, f"{kind} needs [low, high], got {arg!r}")
    low, high = (_number(key, v, w) for v, w in zip(arg, ("low", "high")))
    if not low < high:
        raise C.ConfigError(key, f"{kind} [{arg[0]}, {arg[1]}]: low must be below high")
    if kind in ("loguniform", "logint") and low <= 0:
        raise C.ConfigError(key, f"{kind} [{arg[0]}, {arg[1]}]: a log range needs low > 0")
    hint = str(f.type)
    if kind in ("int", "logint") and not (low.is_integer() and high.is_integer()):
        raise C.ConfigError(key, f"{kind} [{arg[0]}, {arg[1]}]: integer ranges need integer ends")
    if kind in ("uniform", "loguniform") and "float" not in hint:
        raise C.ConfigError(key, f"{kind}: {dotted} is {hint}, not a real number; use int, logint or choice")
    if kind in ("int", "logint") and "int" not in hint and "float" not in hint:
        raise C.ConfigError(key, f"{kind}: {dotted} is {hint}, not a number; use choice")
    return Param(dotted, kind, low=low, high=high, methods=tuple(methods))


def _check_values(base: dict, p: Param, first_method: str) -> None:
    """Each end of the range (each choice) must make a valid config on its own."""
    for v in p.endpoints():
        section, name = p.key.split(".")
        data = C.apply_overrides(base, [])
        data.setdefault(section, {})[name] = int(v) if p.kind in ("int", "logint") else v
        if p.methods and first_method not in p.methods:
            data.setdefault("sparsity", {})["method"] = p.methods[0]
        try:
            C.from_dict(data)
        except C.ConfigError as exc:
            msg = str(exc).removeprefix(f"{exc.key}: ") if exc.key else str(exc)
            where = "value" if p.kind == "choice" else ("low" if v == p.low else "high")
            raise C.ConfigError(f"space.{p.key}", f"{where} {v!r} is refused: {msg}") from None


def _parse_search(raw: Any) -> Search:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise C.ConfigError("search", f"must be a mapping, got {raw!r}")
    names = [f.name for f in dataclasses.fields(Search)]
    for k in raw:
        if k not in names:
            raise _unknown(f"search.{k}", names)
    s = Search(**raw)
    checks = {
        "samples": isinstance(s.samples, int) and s.samples >= 1,
        "metric": s.metric in METRICS,
        "mode": s.mode in ("max", "min"),
        "seed": isinstance(s.seed, int) and not isinstance(s.seed, bool),
        "pareto": isinstance(s.pareto, bool),
        "max_concurrent": isinstance(s.max_concurrent, int) and s.max_concurrent >= 0,
        "trial_cpus": isinstance(s.trial_cpus, (int, float)) and 0 < s.trial_cpus <= 64,
        "max_failures": isinstance(s.max_failures, int) and s.max_failures >= -1,
    }
    allowed = {"samples": "an integer >= 1", "metric": f"one of {', '.join(METRICS)}", "mode": "max or min",
               "seed": "an integer", "pareto": "true or false", "max_concurrent": "an integer >= 0 (0: auto)",
               "trial_cpus": "a number in (0, 64] (0 is refused by Ray)", "max_failures": "an integer >= -1"}
    for k, ok in checks.items():
        if not ok:
            raise C.ConfigError(f"search.{k}", f"{getattr(s, k)!r} must be {allowed[k]}")
    if s.pareto and s.metric != "test_acc":
        raise C.ConfigError("search.pareto",
                            f"true optimises test_acc and nonzero_params; search.metric is {s.metric!r}")
    if s.asha is not None:
        _check_asha(s.asha)
    return s


def _check_asha(asha: Any) -> None:
    if not isinstance(asha, dict):
        raise C.ConfigError("search.asha", f"{asha!r} must be null or {{grace_period: E, reduction_factor: F}}")
    for k, v in asha.items():
        if k not in ("grace_period", "reduction_factor"):
            raise _unknown(f"search.asha.{k}", ["grace_period", "reduction_factor"])
        lo = 1 if k == "grace_period" else 2
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise C.ConfigError(f"search.asha.{k}", f"{v!r} must be an integer >= {lo}")


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
            tip = " (gmp and the ablations need another finished run: use dsr-tune compare)" \
                if key == "baselines" and x in ("gmp", "final_reinit", "final_init", "random_control") else ""
            raise C.ConfigError(key, f"{x!r} is not allowed{tip}; allowed: {', '.join(allowed)}")
    return list(dict.fromkeys(v))


def read(path: str | Path, overrides: list[str] = ()) -> dict:
    """The space file as a dict with dotted command-line overrides applied:
    ``train.epochs=3`` (a config section) goes under ``config``; other keys
    (``search.samples=2``, ``seeds=[0]``, ``space.optim.lr={uniform: [0.01, 0.1]}``)
    into the file's own keys."""
    path = Path(path)
    if not path.is_file():
        raise C.ConfigError("", f"search space file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise C.ConfigError("", f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise C.ConfigError("", f"{path} must be a mapping of keys ({', '.join(TOP_KEYS)})")
    for item in overrides:
        key, _, text = item.partition("=")
        if not _ or not key:
            raise C.ConfigError(item, "an override must look like key=value (e.g. search.samples=4 or train.epochs=3)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise C.ConfigError(key, f"cannot read value {text!r}: {exc.problem}") from None
        parts = key.split(".")
        if parts[0] in C.SECTIONS:
            parts = ["config", *parts]
        elif parts[0] == "space" and len(parts) > 1:
            parts = ["space", ".".join(parts[1:])]
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise C.ConfigError(key, f"{p} is not a mapping, so {key} cannot be set")
        node[parts[-1]] = value
    return raw


def load(path: str | Path, overrides: list[str] = ()) -> Space:
    """Read, override and validate a space file; raises ConfigError (naming the key)."""
    path = Path(path).resolve()
    raw = read(path, overrides)
    for k in raw:
        if k not in TOP_KEYS:
            raise _unknown(str(k), TOP_KEYS)
    name = raw.get("name") or path.stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise C.ConfigError("name", f"{name!r} must be letters, digits, '-', '_' or '.'")
    base_data = _base_data(path, raw)
    methods = _str_list("methods", raw.get("methods", ["dsr"]), SEARCHABLE, empty_ok=False)
    base_data.setdefault("sparsity", {})["method"] = methods[0]
    base_data.setdefault("train", {})
    if not base_data["train"].get("workers"):
        base_data["train"]["workers"] = 1  # a sweep always trains through Ray Train
    try:
        base = C.from_dict(base_data)
    except C.ConfigError as exc:
        raise C.ConfigError(exc.key, str(exc).removeprefix(f"{exc.key}: ") + " (in base + config)") from None
    space = raw.get("space") or {}
    if not isinstance(space, dict):
        raise C.ConfigError("space", f"must be a mapping of dotted keys to distributions, got {space!r}")
    params = [parse_param(str(k), v) for k, v in space.items()]
    for p in params:
        if p.methods and not set(p.methods) & set(methods):
            raise C.ConfigError(f"space.{p.key}", f"only {', '.join(p.methods)} read(s) it, and methods is {methods}")
        _check_values(base_data, p, methods[0])
    search = _parse_search(raw.get("search"))
    baselines = _str_list("baselines", raw.get("baselines", ["static", "thin_dense"]), PAIRABLE, empty_ok=True)
    both = [b for b in baselines if b in methods]
    if both:
        raise C.ConfigError("baselines",
                            f"{both[0]!r} is also searched (methods); a method is either searched or paired")
    dense = raw.get("dense", True)
    if not isinstance(dense, bool):
        raise C.ConfigError("dense", f"{dense!r} must be true or false")
    tracking = raw.get("tracking") or {}
    if not isinstance(tracking, dict) or any(k not in ("uri", "experiment") for k in tracking):
        raise C.ConfigError("tracking", f"{tracking!r} must be a mapping with uri and experiment")
    for k in ("uri", "experiment"):
        if tracking.get(k) is not None and not isinstance(tracking[k], str):
            raise C.ConfigError(f"tracking.{k}", f"{tracking[k]!r} must be a string or null")
    return Space(name=name, path=path, base=base, methods=methods, params=params, search=search,
                 seeds=_int_list("seeds", raw.get("seeds", [base.train.seed])), baselines=baselines,
                 dense=dense, tracking_uri=tracking.get("uri"), experiment=tracking.get("experiment") or name,
                 raw=raw)


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
            raise _unknown(f"config.{section}", list(C.SECTIONS))
        if not isinstance(values, dict):
            raise C.ConfigError(f"config.{section}", f"must be a mapping of keys, got {values!r}")
        data.setdefault(section, {}).update(values)
    return data


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
