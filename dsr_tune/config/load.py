"""Reading, overriding, checking and writing configs.

One override parser serves training configs and search spaces:
``section.key=value`` or deeper (``sparsity.dsr.delta=0.2``), the value read
as YAML. Files are read with ``yaml.safe_load`` (no code from a file ever
runs) and must hold a mapping of sections. Checks that involve files on disk
(data roots, the runs ``mask_from`` / ``init_from`` / ``gmp.dense_from`` point
at) are not part of validation: :func:`check_paths` is called explicitly where
training runs (and by the CLI before it starts work on this machine).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .. import methods, models, runfolder
from ..data import registry as data_sets
from ..schema import ConfigError, build, docs, epochs_within
from .sections import SECTIONS, Config, derived_keys


def moved_key(dotted: str) -> str | None:
    """The new spelling of a key that moved under a method's section:
    ``sparsity.delta`` -> ``sparsity.dsr.delta``, ``sparsity.gmp_steps`` ->
    ``sparsity.gmp.steps``, ``sparsity.thin_match`` -> ``sparsity.thin_dense.match``."""
    section, _, name = dotted.partition(".")
    if section != "sparsity" or "." in name:
        return None
    owners = methods.with_options()
    for method, cls in owners.items():
        if name.startswith(f"{method}_") and name[len(method) + 1:] in cls.model_fields:
            return f"sparsity.{method}.{name[len(method) + 1:]}"
    for method, cls in owners.items():
        short = name.removeprefix(method.split("_")[0] + "_")
        if short in cls.model_fields:
            hits = [m for m, c in owners.items() if short in c.model_fields]
            return " or ".join(f"sparsity.{m}.{short}" for m in hits)
    return None


def from_dict(data: Any) -> Config:
    """Build and validate a :class:`Config` from nested dicts (as read from YAML)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", f"a config must be a mapping of sections ({', '.join(SECTIONS)}), "
                              f"got {type(data).__name__}")
    for section in data:
        if section not in SECTIONS:
            import difflib

            close = difflib.get_close_matches(str(section), SECTIONS, n=1)
            tip = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(str(section), f"unknown section{tip}; allowed: {', '.join(SECTIONS)}")
        if not isinstance(data[section], (dict, type(None))):
            raise ConfigError(str(section), f"must be a mapping of keys, got {data[section]!r}")
    cfg = build(Config, {k: v or {} for k, v in data.items()}, "", moved_key)
    check(cfg)
    return cfg


def replace(cfg: Config, **dotted: Any) -> Config:
    """``cfg`` with dotted keys set (``replace(cfg, **{"train.seed": 3})``), validated again."""
    data = cfg.to_dict()
    for key, value in dotted.items():
        set_dotted(data, key, value)
    return from_dict(data)


def follows_epochs(cfg: Config) -> set[str]:
    """The keys of ``cfg`` derived from train.epochs that hold what null gives
    at its length (left null, or set to just that): on a resume that changes
    train.epochs they follow it. A run's config.yaml holds them resolved; this
    is how it is compared as the user wrote it."""
    data, keys = cfg.to_dict(), derived_keys()
    for key in keys:
        set_dotted(data, key, None)
    fresh, mine = from_dict(data).flat(), cfg.flat()
    return {k for k in keys if fresh[k] == mine[k]}


# ---------------------------------------------------------------- checks across sections


def check(cfg: Config) -> None:
    """Checks that involve more than one key; none reads the file system."""
    d, t = cfg.data, cfg.train
    from ..data.checks import check_keys  # torch-free: the data keys together, no file read

    check_keys(d)
    if t.precision == "fp16" and t.device in ("cpu", "mps"):
        raise ConfigError("train.precision", f"'fp16' needs CUDA (device is {t.device!r}); use bf16 on CPU")
    _check_image_size(cfg)
    _check_schedules(cfg)
    _check_workers(cfg)
    _check_runs_from(cfg)
    method = methods.get(cfg.sparsity.method)
    if method.check is not None:
        method.check(cfg)


def _check_image_size(cfg: Config) -> None:
    """A data set whose images have a size of their own against the model's smallest
    (a size the config sets, or the files give, is the user's choice)."""
    size = data_sets.get(cfg.data.name).image_size
    if size and size < models.get(cfg.model.name).min_image_size:
        fits = [m.name for m in models.REGISTRY.values() if m.min_image_size <= size]
        raise ConfigError("model.name", f"{cfg.model.name!r} cannot take {size}x{size} {cfg.data.name}; "
                                        f"use {' or '.join(fits)}")


def _check_schedules(cfg: Config) -> None:
    """An epoch a schedule names at or beyond train.epochs would never apply:
    refused whatever the method, also one that does not read the key (a
    value given and silently ignored is a mistake all the same). Every such
    key is named in one error, with the overrides that fit the run (null
    where the key then follows train.epochs), so a shortened config runs
    after one correction, not one per key."""
    late = _late_epochs(cfg)
    if len(late) == 1:
        raise late[0]
    if late:
        total = cfg.train.epochs
        each = "; ".join(f"{e.key} ({e.what} {', '.join(map(str, e.late))}: " +
                         (f"null follows train.epochs, {e.null})" if e.null else
                          f"no null, epochs {'up to' if e.inclusive else 'below'} {total})")
                         for e in late)
        raise ConfigError("train.epochs", f"{total} is shorter than what {len(late)} keys name, which would never "
                          f"apply: {each}. In one step add: {' '.join(e.fix for e in late)} (or keep train.epochs "
                          f"and stop early with train.stop_after={total})")


def _late_epochs(cfg: Config) -> list:
    """Every schedule key naming an epoch beyond the run, as :class:`~..schema.LateEpochs`."""
    from ..schema import LateEpochs

    s, o, epochs = cfg.sparsity, cfg.optim, cfg.train.epochs
    within = [m for m in o.milestones if m < epochs]
    checks = [
        lambda: epochs_within("optim.milestones", o.milestones, epochs, "milestone",
                              fix=f"optim.milestones=[{','.join(map(str, within))}]"),
        lambda: epochs_within("optim.warmup_epochs", [o.warmup_epochs], epochs, "warm-up of", inclusive=True,
                              fix=f"optim.warmup_epochs={min(o.warmup_epochs, epochs // 10)}"),
        lambda: epochs_within("train.stop_after", [cfg.train.stop_after or 0], epochs, "stop after epoch",
                              null="no early stop", inclusive=True),
        lambda: epochs_within("sparsity.period_schedule", [start for start, _ in s.period_schedule][1:], epochs,
                              "period start", null="the paper's periods of 100, 200, 400, 800 iterations from 0, "
                                                   "12.5%, 40%, 70% of it"),
        lambda: epochs_within("sparsity.stop_epoch", [s.stop_epoch], epochs, "stop epoch", null="95% of it",
                              inclusive=True),
        lambda: methods.get(s.method).check and methods.get(s.method).check(cfg),  # DeepR's temperatures
    ]
    late = []
    for check in checks:
        try:
            check()
        except LateEpochs as exc:
            late.append(exc)
        except ConfigError:  # the method's other checks: raised by check() after these
            pass
    return late


def _check_runs_from(cfg: Config) -> None:
    s = cfg.sparsity
    method = methods.get(s.method)
    if s.mask_from and not method.masks:
        raise ConfigError("sparsity.mask_from", f"{s.mask_from!r}: method {s.method!r} does not take masks; "
                                                "use static")
    if s.mask_from and method.kind == "baseline":
        raise ConfigError("sparsity.mask_from", f"{s.mask_from!r}: method {s.method!r} builds its own masks; "
                                                "use static")
    if s.init_from and (method.model is not None or method.start is not None):
        raise ConfigError("sparsity.init_from", f"{s.init_from!r}: method {s.method!r} has another "
                                                "architecture or start")


def _check_workers(cfg: Config) -> None:
    """Ray Train settings (train.workers >= 1): checked before any worker starts."""
    t = cfg.train
    if t.workers == 0:
        if t.use_gpu:
            raise ConfigError("train.use_gpu", "true needs train.workers >= 1 (Ray Train); in one process set "
                                               "train.device=cuda")
        return
    if cfg.data.batch_size % t.workers:
        raise ConfigError("data.batch_size", f"{cfg.data.batch_size} is the global batch and must divide by "
                          f"train.workers={t.workers} (each worker takes batch_size / workers)")
    if t.device not in ("auto", "cpu"):
        raise ConfigError("train.device", f"{t.device!r}: under Ray Train each worker uses the device Ray gives "
                          "it; use train.device=auto (with train.use_gpu=true for GPUs) or cpu")
    if t.use_gpu and t.device == "cpu":
        raise ConfigError("train.device", "'cpu' contradicts train.use_gpu=true; use train.device=auto")
    if t.precision == "fp16" and not t.use_gpu:
        raise ConfigError("train.precision", "'fp16' needs GPU workers (train.use_gpu=true); use bf16 on CPU "
                                             "workers")


def check_paths(cfg: Config) -> None:
    """The files the run reads exist: the data set's root and layout, and the
    runs the ablations and GMP start from. Called where training runs (the
    trainer) and by the CLI before it starts work on this machine (not when it
    only launches onto a cluster, whose nodes hold the data)."""
    from ..data.checks import check_files as check_data

    check_data(cfg.data)
    s = cfg.sparsity
    if s.mask_from:
        runfolder.require_run_file("sparsity.mask_from", s.mask_from, runfolder.CHECKPOINT)
    if s.init_from:
        runfolder.require_run_file("sparsity.init_from", s.init_from, runfolder.INIT)
    method = methods.get(s.method)
    if method.check_paths is not None:
        method.check_paths(cfg)


# ---------------------------------------------------------------- files and overrides


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", value)``, the value read as YAML (safe)."""
    key, eq, raw = item.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ConfigError(item, "an override must look like section.key=value (e.g. sparsity.sparsity=0.8)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"cannot read value {raw!r}: {getattr(exc, 'problem', None) or exc}") from None
    return key, value


def set_dotted(data: dict, key: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``key = "a.b.c"``, making mappings on the way."""
    *path, last = key.split(".")
    node = data
    for i, part in enumerate(path):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(".".join(path[:i + 1]), f"is not a mapping, so {key} cannot be set")
    node[last] = value


def apply_overrides(data: dict | None, overrides: list[str]) -> dict:
    data = copy.deepcopy(data or {})
    for item in overrides:
        key, value = parse_override(item)
        if "." not in key:
            raise ConfigError(key, "an override key must be section.key (e.g. sparsity.sparsity=0.8)")
        set_dotted(data, key, value)
    return data


def read_yaml(path: str | Path, what: str = "config file", expect: str | None = None) -> dict:
    """A YAML file that holds a mapping; ConfigError (one line) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"{what} {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError("", f"{path} is not a text file; a {what} is YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError("", f"{path} is not valid YAML: {problem}{where}") from None
    allowed = expect or ", ".join(SECTIONS)
    if data is None:
        raise ConfigError("", f"{path} is empty; a {what} is a mapping of {allowed}")
    if not isinstance(data, dict):
        raise ConfigError("", f"{path} holds a {type(data).__name__}, not a mapping of {allowed}")
    return data


def load(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read YAML (if given), apply dotted overrides, validate (no file-system checks)."""
    data = read_yaml(path) if path else {}
    return from_dict(apply_overrides(data, list(overrides)))


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def describe(section: str | None = None, more: dict | None = None) -> str:
    """Every key (or one section's) with its default and doc line (``dsr-tune keys``);
    ``more``: sections of other files to list after the config's (a space file's ``search``)."""
    sections = {**SECTIONS, **(more or {})}
    if section is not None and section not in sections:
        raise ConfigError(section, f"unknown section; allowed: {', '.join(sections)}")
    lines = []
    for name, cls in sections.items():
        if section not in (None, name):
            continue
        lines.append(f"{name}:")
        lines += [f"  {key} = {default!r}  # {doc}" for key, default, doc in docs(cls)]
    return "\n".join(lines)
