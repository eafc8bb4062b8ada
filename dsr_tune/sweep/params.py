"""Searched keys: which config key, drawn how, read by which methods.

A key under ``sparsity.<method>.`` is that method's; the shared sparsity keys
belong to the methods whose registry entry reads them (the period schedule:
the methods that reallocate on it); every other key (optim.*, train.*, ...)
to every method. Only pydantic and the config modules are imported here.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .. import config as C
from .. import methods

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "logint")
SPARSITY = "sparsity.sparsity"  # a searched choice of it is a grid: every value gets its own searches


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
    if dotted == SPARSITY and kind != "choice":
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
