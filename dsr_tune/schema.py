"""Config sections on pydantic, with the tool's one-line errors.

Every section of a run's config (and of a search space) is a :class:`Section`:
a pydantic model that refuses unknown keys, checks types strictly (an int is a
number, a bool is not an int, a string is not a number unless YAML made it one
from ``1e-3``), and is validated again on every assignment. A failure becomes
one :class:`ConfigError` naming the dotted key, the value and what is allowed::

    sparsity.sparsity: 2.0 must be in [0, 1)
    sparsity.delta: unknown key (did you mean sparsity.dsr.delta?); allowed: method, sparsity, ...

Fields are declared with :func:`opt` (a default, a one-line doc, constraints);
checks that need more than a range are functions returning an error string,
attached with :func:`checked`. Imports pydantic only: the lowest layer of the
package, below everything that validates anything.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Annotated, Any

import annotated_types as at
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """A configuration key or value is not allowed. ``key`` is the dotted key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


class Section(BaseModel):
    """Base of every config section: strict, no unknown keys, checked on assignment."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)

    def to_dict(self) -> dict:
        """Plain nested dicts and lists (what YAML and JSON hold)."""
        return self.model_dump(mode="json")


def _yaml_number(v: Any) -> Any:
    # YAML 1.1 reads 1e-3 (no dot) as a string: accept numeric strings for real-valued keys
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


#: a real number; ints and YAML's numeric strings are accepted
Real = Annotated[float, BeforeValidator(_yaml_number)]


def checked(check: Callable[[Any], str | None]):
    """An ``AfterValidator`` from ``check(value) -> error text or None``; the text
    is shown as is (after the key), so it should say what is allowed."""

    def run(v):
        problem = check(v)
        if problem:
            raise PydanticCustomError("dsr_check", "{problem}", {"problem": problem})
        return v

    return AfterValidator(run)


def opt(default: Any, doc: str, **constraints) -> Any:
    """A field with a default, a doc line (``dsr-tune keys``) and pydantic
    constraints (``ge``, ``gt``, ``le``, ``lt``, ...). Lists and sections are
    copied per instance."""
    if isinstance(default, (list, dict)):
        import copy

        return Field(default_factory=lambda d=default: copy.deepcopy(d), description=doc, **constraints)
    if isinstance(default, type) and issubclass(default, BaseModel):
        return Field(default_factory=default, description=doc, **constraints)
    return Field(default, description=doc, **constraints)


# ---------------------------------------------------------------- errors, one line each


def _range_text(meta: list) -> str | None:
    lo = hi = None
    lo_open = hi_open = False
    for m in meta:
        if isinstance(m, at.Ge):
            lo = m.ge
        elif isinstance(m, at.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, at.Le):
            hi = m.le
        elif isinstance(m, at.Lt):
            hi, hi_open = m.lt, True
    if lo is None and hi is None:
        return None
    left, right = "(" if lo_open or lo is None else "[", ")" if hi_open or hi is None else "]"
    return f"{left}{'-inf' if lo is None else _num(lo)}, {'inf' if hi is None else _num(hi)}{right}"


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _field_at(cls: type[BaseModel], loc: tuple) -> tuple[Any, type[BaseModel] | None, str | None]:
    """The FieldInfo at ``loc`` (names only, list indexes dropped), the model
    class holding it, and its name."""
    info, holder, name = None, cls, None
    for part in loc:
        if not isinstance(part, str):
            break
        fields = getattr(holder, "model_fields", None) if holder is not None else None
        if not fields or part not in fields:
            return None, holder, part
        info, name = fields[part], part
        ann = info.annotation
        next_holder = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if next_holder is None:
            break
        holder = next_holder
    return info, holder, name


_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
          "list": "a list", "dict": "a mapping", "model": "a mapping of keys", "none": "null"}


def _expected(kind: str) -> str:
    for prefix, text in _TYPES.items():
        if kind.startswith(prefix):
            return text
    return kind.replace("_", " ")


def explain(exc: ValidationError, cls: type[BaseModel], prefix: str = "",
            moved: Callable[[str], str | None] | None = None) -> ConfigError:
    """The first error of ``exc`` as a one-line :class:`ConfigError`.

    prefix: the dotted path of ``cls`` in the whole config (``"sparsity"``).
    moved: ``moved(dotted key) -> its new key`` for keys that moved, so an old
    spelling gets a did-you-mean to the new one.
    """
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    names = tuple(p for p in loc if isinstance(p, str))
    key = ".".join(filter(None, (prefix, *names)))
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        return _unknown(cls, names, key, value, moved)
    info, _, _ = _field_at(cls, names)
    if kind == "dsr_check":  # a check's text; "must ..." texts follow the value
        problem = err["ctx"]["problem"]
        return ConfigError(key, f"{value!r} {problem}" if problem.startswith("must") else problem)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal") and info is not None:
        if info.annotation is float and isinstance(value, int):
            value = float(value)  # shown as the number it is read as
        return ConfigError(key, f"{value!r} must be in {_range_text(info.metadata)}")
    if kind == "literal_error":
        return ConfigError(key, f"{value!r} must be one of {err['ctx']['expected']}")
    if kind == "missing":
        return ConfigError(key, "is required")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        where = f" in {_describe_loc(loc)}" if len(loc) > len(names) else ""
        return ConfigError(key, f"got {value!r} ({type(value).__name__}){where}; expected "
                                f"{_expected(kind.removesuffix('_type').removesuffix('_parsing'))}")
    return ConfigError(key, f"{value!r}: {err['msg']}")


def _unknown(cls, names: tuple, key: str, value: Any, moved) -> ConfigError:
    """An unknown key, with a did-you-mean: its new place if it moved, else the closest sibling."""
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    holder = _field_at(cls, names[:-1])[1] if len(names) > 1 else cls
    allowed = list(getattr(holder, "model_fields", {}) or {})
    new = moved(key) if moved else None
    close = difflib.get_close_matches(names[-1], allowed, n=1)
    while isinstance(value, dict) and len(value) == 1:  # name the whole unknown key: a.b.c, not a.b
        (inner, value), = value.items()
        key = f"{key}.{inner}"
    tip = f" (did you mean {new}?)" if new else (f" (did you mean {parent + '.' if parent else ''}{close[0]}?)"
                                                 if close else "")
    return ConfigError(key, f"unknown key{tip}; allowed: {', '.join(allowed)}")


def _describe_loc(loc: tuple) -> str:
    idx = [str(p) for p in loc if not isinstance(p, str)]
    return "item " + "/".join(idx) if idx else "the value"


def build(cls: type[BaseModel], data: Any, prefix: str = "",
          moved: Callable[[str], str | None] | None = None) -> BaseModel:
    """Validate ``data`` (a mapping) into ``cls``; raise one ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(prefix, f"must be a mapping of keys, got {data!r}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, cls, prefix, moved) from None


def docs(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, Any, str]]:
    """``(dotted key, default, doc)`` for every field, nested sections flattened."""
    out = []
    for name, info in cls.model_fields.items():
        key = f"{prefix}{name}"
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += docs(ann, key + ".")
            continue
        default = info.get_default(call_default_factory=True)
        out.append((key, default, info.description or ""))
    return out


# ---------------------------------------------------------------- schedules given in epochs


def scaled(pairs, epochs: int) -> list[list]:
    """``[[fraction of the run, value], ...]`` as ``[[start epoch, value], ...]``
    for a run of ``epochs``; a start that rounds onto the previous one, or onto
    the end of the run, is dropped."""
    out: list[list] = []
    for fraction, value in pairs:
        start = round(fraction * epochs)
        if not out or out[-1][0] < start < epochs:
            out.append([start, value])
    return out


class LateEpochs(ConfigError):
    """Epochs a schedule key names beyond the run (at or beyond ``train.epochs``; beyond it with
    ``inclusive``, for a key that may name the end itself): they would never apply.

    ``null`` says what the key does when set to null (it then follows
    train.epochs); None for a key that takes no null. ``fix`` is the override
    that fits the run (``key=null``, or the epochs within it)."""

    def __init__(self, key: str, late: list[int], total: int, what: str = "start epoch",
                 null: str | None = None, fix: str | None = None, inclusive: bool = False):
        self.late, self.total, self.what, self.null, self.inclusive = late, total, what, null, inclusive
        self.fix = fix or f"{key}=null"
        hint = (f"set {self.fix} to follow train.epochs ({null})" if null else
                f"give epochs {'up to' if inclusive else 'below'} {total} (this key takes no null), e.g. {self.fix}")
        if key != "train.stop_after":
            hint += f"; or keep train.epochs and stop early with train.stop_after={total}"
        super().__init__(key, f"{what} {late[0]} is {'beyond' if inclusive else 'not below'} train.epochs={total}, "
                              f"so it would never apply; {hint}")


def epochs_within(key: str, epochs: list[int], total: int, what: str = "start epoch",
                  null: str | None = None, fix: str | None = None, inclusive: bool = False) -> None:
    """Schedule epochs at or beyond ``train.epochs`` (beyond it with ``inclusive``) would never apply:
    refuse them (:class:`LateEpochs`)."""
    late = [e for e in epochs if e > total or (e == total and not inclusive)]
    if late:
        raise LateEpochs(key, late, total, what, null, fix, inclusive)
