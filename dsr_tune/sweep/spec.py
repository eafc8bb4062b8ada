"""The space file (``search_spaces/*.yaml``, its keys in README's Sweeps section):
read, overridden and validated, every key and range, before Ray starts.

Selection is honest by construction, so the file is refused where it would
not be: ``seeds`` (the report's runs) may not include ``search.trial_seed``
(the search's), and ``search.metric`` may not be a test metric unless
``search.select_on_test`` says so. Every problem raises
:class:`dsr_tune.config.ConfigError` naming the dotted key
(``space.sparsity.dsr.delta``, ``search.samples``, ...). Only yaml, pydantic
and the config modules are imported here: the CLI validates without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import config as C
from ..records import SCORES
from ..schema import Real, Section, build, opt
from . import rows as R
from .params import SPARSITY, Param, _check_values, parse_param, searchable_methods
from .terms import DENSE, REFERENCE

METRICS = SCORES  # the split scores of the epoch record (dsr_tune.records)
TOP_KEYS = ("name", "base", "config", "methods", "space", "search", "seeds", "baselines", "dense", "tune_baselines",
            "tracking")


class Search(Section):
    samples: int = opt(8, "trials the searcher proposes, per searched (or tuned) method and, when "
                       "sparsity.sparsity is a searched choice, per sparsity", ge=1)
    metric: Literal[METRICS] = opt("val_acc", "what the searcher (and ASHA) optimises: a validation metric "
                                   "(a test one only with select_on_test)")
    select_on_test: bool = opt(False, "allow search.metric to be a test metric (the report says so; the test "
                               "numbers of the selection are then optimistic)")
    trial_seed: int | None = opt(None, "train.seed of the search trials (null: the base config's); the report's "
                                 "seeds must differ from it", ge=0)
    mode: Literal["max", "min"] = opt("max", "maximise or minimise the metric")
    seed: int = opt(0, "TPE sampler seed")
    pareto: bool = opt(False, "also minimise nonzero_params: Optuna's multi-objective TPE, a Pareto front")
    asha: dict[str, int] | None = opt(None, "{grace_period, reduction_factor}: stop poor trials early (epochs)")
    max_concurrent: int = opt(0, "trials at once; 0: as many as the cluster holds when the sweep starts "
                              "(set it on an autoscaling cluster: nodes that are not up yet do not count)", ge=0)
    trial_cpus: Real = opt(0.1, "CPUs of each trial's own process (its Ray Train workers come on top)", gt=0, le=64)
    max_failures: int = opt(1, "Tune restarts of a failed trial (it resumes from its checkpoint)", ge=-1)
    in_trial: bool = opt(True, "a single-worker job trains in the Tune trial's own process; false: through a "
                         "Ray Train worker group per trial (the 0.1 path, kept to measure the difference)")
    trials_per_gpu: int = opt(1, "single-worker trials packed on each GPU (train.use_gpu, train.workers 1, in_trial): "
                              "each holds 1/N of a GPU in Ray's accounting and may take at most 1/N of its memory; "
                              "N is how many copies of one trial's memory and compute the GPU holds (README: "
                              "Sweeps on GPUs)", ge=1, le=64)


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
    tune_baselines: bool
    tracking_uri: str | None
    experiment: str
    raw: dict = field(default_factory=dict)
    sparsities: list[float] | None = None  # a comparison without search: its sparsities


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
    searched = _str_list("methods", raw.get("methods", [REFERENCE]), searchable_methods(), empty_ok=False)
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
    if search.metric.startswith("test_") and not search.select_on_test:
        raise C.ConfigError("search.metric", f"{search.metric!r} selects on the test split, which must only be "
                                             "reported; select on val_acc (or val_loss, val_acc5), or set "
                                             "search.select_on_test: true to do it anyway")
    if search.metric.startswith("val_") and not _has_validation(base):
        raise C.ConfigError("search.metric", f"{search.metric!r} but data.val_fraction is 0: there is no "
                                             "validation split to select on")
    if search.trial_seed is None:
        search.trial_seed = base.train.seed
    _check_packing(search, base)
    _check_asha(search.asha)
    labels = _str_list("baselines", raw.get("baselines", ["static", "thin_dense"]),
                       R.known_labels(base.sparsity.epoch_factor), empty_ok=True)
    R.rows(labels, base.sparsity.epoch_factor, base.train.epochs)  # every label names rows
    both = [b for b in labels if b in searched]
    if both:
        raise C.ConfigError("baselines", f"{both[0]!r} is also searched (methods); a method is either searched "
                                         "or paired")
    dense, tune = _flag(raw, "dense", True), _flag(raw, "tune_baselines", False)
    seeds = _int_list("seeds", raw.get("seeds", [search.trial_seed + 1, search.trial_seed + 2]))
    if search.trial_seed in seeds:
        raise C.ConfigError("seeds", f"{seeds} include the search's trial seed {search.trial_seed}: the report's "
                                     "rows must be trained on fresh seeds (or set search.trial_seed)")
    tracking = build(Tracking, raw.get("tracking"), "tracking")
    return Space(name=name, path=path, base=base, methods=searched, params=params, search=search, seeds=seeds,
                 baselines=labels, dense=dense, tune_baselines=tune, tracking_uri=tracking.uri,
                 experiment=tracking.experiment or name, raw=raw)


def _flag(raw: dict, key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise C.ConfigError(key, f"{value!r} must be true or false")
    return value


def _has_validation(cfg: C.Config) -> bool:
    return cfg.data.val_fraction is None or cfg.data.val_fraction > 0


def params_for(space: Space, method: str, sparsity: float | None = None) -> list[Param]:
    """The searched keys ``method`` reads: its own, and the ones every method reads
    (without the sparsity when a search is held at one; dense reads no sparsity key,
    even one whose ``methods`` names it)."""
    return [p for p in space.params if (not p.methods or method in p.methods)
            and not (sparsity is not None and p.key == SPARSITY)
            and not (method == DENSE and p.key.startswith("sparsity."))]


def for_compare(cfg: C.Config, *, name: str, sparsities: list[float], seeds: list[int], labels: list[str],
                tracking_uri: str | None = None, experiment: str | None = None) -> Space:
    """The comparison of ``cfg`` with no search: the config as given is the
    selected one at every sparsity; every row trains on ``seeds``."""
    R.rows(labels, cfg.sparsity.epoch_factor, cfg.train.epochs)  # refuse unknown labels before any work
    cfg = C.from_dict(absolute_paths(cfg.to_dict()))
    search = Search(trial_seed=cfg.train.seed, metric="val_acc" if _has_validation(cfg) else "test_acc",
                    select_on_test=True)
    raw = {"name": name, "compare": {"config": cfg.to_dict(), "sparsities": sparsities, "seeds": seeds,
                                     "labels": labels}}
    space = Space(name=name, path=Path(name), base=cfg, methods=[], params=[], search=search, seeds=seeds,
                  baselines=labels, dense=False, tune_baselines=False, tracking_uri=tracking_uri,
                  experiment=experiment or name, raw=raw)
    space.sparsities = list(sparsities)
    return space


def _check_packing(search: Search, base: C.Config) -> None:
    t = base.train
    if search.trials_per_gpu > 1 and not (t.use_gpu and t.workers <= 1 and search.in_trial):
        raise C.ConfigError("search.trials_per_gpu", f"{search.trials_per_gpu} packs trials that train in the "
                                                     "trial's own process on a GPU: it needs train.use_gpu=true, "
                                                     "train.workers=1 and search.in_trial=true")


def packing(space: Space) -> str | None:
    """How trials share GPUs, in words (None: they hold none)."""
    t, k = space.base.train, space.search.trials_per_gpu
    if not t.use_gpu:
        return None
    if k == 1:
        return f"{max(1, t.workers)} GPU(s) per trial"
    return f"{k} trials per GPU: each holds 1/{k} of a GPU and at most 1/{k} of its memory"


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
    return absolute_paths(data)


# config keys that name files or folders: a relative one is read from where the command runs,
# and trials may run elsewhere (another working directory, another node with the same mounts)
PATH_KEYS = ("data.root", "sparsity.mask_from", "sparsity.init_from", "sparsity.gmp.dense_from", "train.storage_path")


def absolute_paths(data: dict, cwd: Path | None = None) -> dict:
    """``data`` (a nested config dict) with every relative path of PATH_KEYS made absolute
    against ``cwd`` (default: the working directory); URIs (``s3://...``) stay as they are."""
    for dotted in PATH_KEYS:
        *parents, leaf = dotted.split(".")
        node = data
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        value = node.get(leaf) if isinstance(node, dict) else None
        if isinstance(value, str) and value and "://" not in value and not Path(value).expanduser().is_absolute():
            node[leaf] = str((cwd or Path.cwd()) / value)
    return data


def _merge(into: dict, values: dict) -> None:
    """Nested update: ``config: {sparsity: {dsr: {delta: 0.2}}}`` keeps dsr's other keys."""
    for k, v in values.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v
