"""Run configuration: one dataclass per concern, validated on construction.

A config is loaded from YAML, overridden with dotted keys from the command line
(``sparsity.sparsity=0.9``) and written out resolved beside every run. Any bad
key or value raises :class:`ConfigError` naming the key, the value and what is
allowed, before any work starts.

Each field carries its documentation and its check in ``metadata``:
``doc`` (one line), ``check`` (a callable returning an error string or None).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key or value is not allowed. ``key`` is the dotted key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


# ---------------------------------------------------------------- field checks


def one_of(*allowed: str):
    def check(v):
        return None if v in allowed else f"must be one of {', '.join(map(repr, allowed))}"
    return check


def in_range(lo=None, hi=None, lo_open=False, hi_open=False):
    def check(v):
        if v is None:
            return None
        bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
        bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
        if bad_lo or bad_hi:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            return f"must be in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        return None
    return check


def opt(default, doc: str, check=None):
    """A field with a default, a doc line and an optional check."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: _copy(d), metadata={"doc": doc, "check": check})
    return field(default=default, metadata={"doc": doc, "check": check})


def _copy(d):
    return yaml.safe_load(yaml.safe_dump(d))


def _period_schedule_check(v):
    if not v:
        return "must be a non-empty list of [start_epoch, period] pairs"
    last = -1
    for item in v:
        if not (isinstance(item, (list, tuple)) and len(item) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in item)):
            return f"each entry must be [start_epoch, period] (two integers), got {item!r}"
        start, period = item
        if period < 1:
            return f"period must be >= 1 iteration, got {period}"
        if start <= last:
            return "start epochs must increase strictly"
        last = start
    if v[0][0] != 0:
        return "the first entry must start at epoch 0"
    return None


def _increasing_ints(v):
    if any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in v):
        return "must be a list of non-negative integer epochs"
    if list(v) != sorted(set(v)):
        return "must increase strictly"
    return None


def _channel_values(positive: bool):
    """One number per channel (1 or 3 of them); > 0 with ``positive``."""
    def check(v):
        if v is None:
            return None
        if len(v) not in (1, 3) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            return "must be a list of 1 or 3 numbers, one per channel"
        if positive and min(v) <= 0:
            return "must be > 0"
        return None
    return check


def _patterns(v):
    if v is None:
        return None
    if not all(isinstance(x, str) and x for x in v):
        return "must be a list of parameter-name patterns (fnmatch, e.g. 'layer*.conv*.weight')"
    return None


def _epoch_values_check(v):
    """[[start_epoch, value >= 0], ...] from epoch 0, starts increasing (DeepR temperatures)."""
    if not v or not all(isinstance(i, (list, tuple)) and len(i) == 2 for i in v):
        return "must be a non-empty list of [start_epoch, value] pairs"
    for start, value in v:
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            return f"start epochs must be non-negative integers, got {start!r}"
        try:  # YAML reads 1e-5 (no dot) as a string
            if float(value) < 0:
                return f"values must be >= 0, got {value!r}"
        except (TypeError, ValueError):
            return f"values must be numbers, got {value!r}"
    starts = [s for s, _ in v]
    if starts[0] != 0 or starts != sorted(set(starts)):
        return "the first pair must start at epoch 0 and start epochs must increase strictly"
    return None


# ---------------------------------------------------------------- the sections

# baselines whose model or masking dsr_tune/baselines/setup.py builds: from the one
# method table (torch-free), which setup.py, derive.py and compare.py read too
from .methods_table import BASELINE_METHODS  # noqa: E402
# dynamic sparse methods of the sparse core besides DSR (dsr_tune/sparse/methods.py)
SPARSE_METHODS = ("set", "deepr", "rigl", "snfs")


@dataclass
class ModelConfig:
    name: str = opt("small_cnn", "model from the registry", one_of("small_cnn", "wrn", "resnet50"))
    depth: int = opt(28, "WRN depth (6n+4)", lambda v: None if v >= 10 and (v - 4) % 6 == 0 else "must be 6n+4 and >= 10 (e.g. 16, 22, 28, 40)")
    width: float = opt(2.0, "width: WRN widen factor k, ResNet-50 / small CNN width multiplier (any real > 0)", in_range(0, 64, lo_open=True))
    sparse_layers: list | None = opt(None, "override: fnmatch patterns of the weight names made sparse (default: the model's own rule)", _patterns)
    dense_layers: list | None = opt(None, "override: fnmatch patterns removed from the sparse set", _patterns)

    def __post_init__(self):
        _check_fields(self, "model")


@dataclass
class DataConfig:
    name: str = opt("digits", "data set", one_of("digits", "cifar10", "imagenet", "folder", "synthetic"))
    root: str | None = opt(None, "data root: CIFAR-10 folder, or a tree with train/ and val/ class folders")
    download: bool = opt(False, "CIFAR-10 only: download into root if missing")
    image_size: int = opt(0, "image size for 'folder' and 'imagenet' (0: 224 for imagenet)", in_range(0, 4096))
    batch_size: int = opt(64, "per-step batch size over all workers (the global batch)", in_range(1, None))
    eval_batch_size: int = opt(256, "batch size for evaluation", in_range(1, None))
    loader_workers: int = opt(-1, "loader processes per training process (-1: auto, 0: in-process)", in_range(-1, 256))
    test_fraction: float = opt(0.2, "digits only: share held out as the test set (fixed split)", in_range(0.05, 0.5))
    synthetic_size: int = opt(512, "synthetic only: number of random training samples", in_range(16, None))
    # -- image pipeline, validation split, decoding (dsr_tune/data/): null = the data set's default,
    # made concrete by dsr_tune.data.resolve(); checks that span keys: dsr_tune/data/checks.py
    channels: int = opt(0, "folder, imagenet: input channels; 0: from a few files (all grey -> 1, else 3); 1 or 3: converted", one_of(0, 1, 3))
    mean: list | None = opt(None, "per-channel normalisation mean (0..1 pixels); null: CIFAR-10's / ImageNet's constants, a folder's own (from up to 2,000 training images)", _channel_values(positive=False))
    std: list | None = opt(None, "per-channel normalisation std (> 0); null: like data.mean", _channel_values(positive=True))
    hflip: bool | None = opt(None, "cifar10, imagenet, folder: random horizontal flip in training; null: true (set false for digits-like images)")
    crop_padding: int | None = opt(None, "cifar10, imagenet, folder: random crop after reflect-padding by this many pixels; null: 4 for cifar10, 0 otherwise", in_range(0, 1024))
    random_resized_crop: bool | None = opt(None, "imagenet, folder: random-resized crop in training, resize to 8/7 and center crop at test; null: true for imagenet, false for folder (square resize)")
    val_fraction: float | None = opt(None, "share of the training data held out as validation (a fixed-seed slice, the same for every train.seed); 0: none; null: 0.01 for imagenet, 0.1 otherwise", in_range(0, 0.5))
    decode: str = opt("cpu", "imagenet, folder: decode images in the loader processes (cpu), or only read the files there and decode + augment batches on the training device (gpu)", one_of("cpu", "gpu"))
    skip_bad_images: bool = opt(False, "imagenet, folder: drop images that fail to decode from their batch, counted as bad_images per epoch (false: stop with an error naming the file)")

    def __post_init__(self):
        _check_fields(self, "data")


@dataclass
class OptimConfig:
    lr: float = opt(0.1, "base learning rate (for the base batch size)", in_range(0, 100, lo_open=True))
    momentum: float = opt(0.9, "SGD momentum", in_range(0, 1, hi_open=True))
    nesterov: bool = opt(True, "Nesterov momentum")
    weight_decay: float = opt(5e-4, "L2 weight decay", in_range(0, 1))
    milestones: list = opt([], "epochs at which the LR is multiplied by gamma", _increasing_ints)
    gamma: float = opt(0.2, "LR factor at each milestone", in_range(0, 1, lo_open=True))
    warmup_epochs: int = opt(0, "linear LR warm-up from lr/10 over this many epochs (large-batch runs)", in_range(0, None))
    base_batch_size: int = opt(0, "batch size lr refers to; 0: data.batch_size (no scaling)", in_range(0, None))
    lr_scaling: str = opt("linear", "rule when data.batch_size differs from base_batch_size", one_of("linear", "sqrt", "none"))
    decay_norm_and_bias: bool = opt(True, "weight decay on batch-norm and bias parameters too (the paper's code decays every parameter)")

    def __post_init__(self):
        _check_fields(self, "optim")


@dataclass
class SparsityConfig:
    method: str = opt("dsr", "reallocation method", one_of("dsr", "static", "dense", *SPARSE_METHODS, *BASELINE_METHODS))
    sparsity: float = opt(0.9, "global sparsity of the sparse tensors (share of zero weights)", in_range(0, 1, hi_open=True))
    distribution: str = opt("uniform", "initial spread of the budget over tensors: uniform density, or erk (Erdos-Renyi-Kernel, RigL's; any sparse method)", one_of("uniform", "erk"))
    init_threshold: float = opt(1e-3, "DSR: initial pruning threshold H", in_range(0, None, lo_open=True))
    target_pruned: int = opt(20000, "DSR: Np, target number of weights pruned per reallocation", in_range(1, None))
    delta: float = opt(0.1, "DSR: tolerance on Np before H is halved or doubled", in_range(0, 1, hi_open=True))
    threshold_factor: float = opt(2.0, "DSR: factor H is divided or multiplied by", in_range(1, None, lo_open=True))
    period_schedule: list = opt([[0, 100], [25, 200], [80, 400], [140, 800]],
                                "reallocation period: [start_epoch, iterations] pairs", _period_schedule_check)
    period_scale: float = opt(1.0, "multiplies every period of the schedule (sweeps search it)", in_range(0, None, lo_open=True))
    stop_epoch: int = opt(190, "no reallocation from this epoch on (dsr, set, rigl, snfs; deepr rewires to the end)", in_range(0, None))
    # -- set, deepr, rigl, snfs (dsr_tune/sparse/methods.py); period_schedule and stop_epoch apply too
    set_fraction: float = opt(0.0, "set: share of each tensor's active weights replaced per reallocation; 0: derived from target_pruned (Np / budget)", in_range(0, 1))
    deepr_temperatures: list = opt([[0, 1.0e-5], [25, 1.0e-8], [80, 1.0e-12], [140, 1.0e-15]],
                                   "deepr: noise temperature T as [start_epoch, T] pairs (noise std sqrt(2 lr T))", _epoch_values_check)
    deepr_l1: float = opt(1e-5, "deepr: L1 penalty on the active weights (sparse tensors get no weight decay)", in_range(0, None))
    drop_fraction: float = opt(0.3, "rigl, snfs: share of each tensor's active weights dropped per update at the start (RigL paper 0.3, SNFS 0.5)", in_range(0, 1, lo_open=True))
    drop_decay: str = opt("cosine", "rigl, snfs: drop fraction decays to 0 at stop_epoch (cosine) or stays (constant)", one_of("cosine", "constant"))
    # -- baselines and ablations (dsr_tune/baselines/)
    epoch_factor: float = opt(2.0, "static baselines (static, thin_dense) derived by compare / sweeps train this many times the DSR run's epochs, LR milestones stretched alike", in_range(0, None, lo_open=True))
    thin_match: str = opt("nonzero", "thin_dense: match the sparse run's non-zero count, or 'storage' (+1 bit per sparse position: the count the paper's widen factors fit)", one_of("nonzero", "storage"))
    dense_from: str | None = opt(None, "gmp: run folder (its checkpoint.pt) or checkpoint file of the trained dense model to prune")
    gmp_steps: int = opt(20, "gmp: pruning steps of the cubic schedule (the last one reaches sparsity.sparsity)", in_range(1, None))
    gmp_every: int = opt(2, "gmp: epochs between pruning steps", in_range(1, None))
    gmp_start: int = opt(0, "gmp: epoch of the first pruning step", in_range(0, None))
    gmp_finetune: int = opt(10, "gmp: fine-tuning epochs after the last step (compare sets train.epochs from it)", in_range(0, None))
    dsd_phases: list = opt([], "dsd: [first sparse epoch, first dense-again epoch]; []: thirds of train.epochs", _increasing_ints)
    dsd_lr_factor: float = opt(0.1, "dsd: LR multiplier in the last, dense-again phase", in_range(0, 1, lo_open=True))
    mask_from: str | None = opt(None, "ablation: a finished run folder whose final masks (checkpoint.pt) replace the random ones")
    init_from: str | None = opt(None, "ablation: a run folder whose initial dense weights (init.pt) replace fresh ones")

    def __post_init__(self):
        _check_fields(self, "sparsity")


@dataclass
class TrainConfig:
    epochs: int = opt(200, "training epochs", in_range(1, None))
    seed: int = opt(0, "seed for weights, masks and data order", in_range(0, 2**31 - 1))
    init_seed: int | None = opt(None, "seed for the initial weights only (None: train.seed); the final_reinit ablation sets it", in_range(0, 2**31 - 1))
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps", lambda v: None if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()) else "must be auto, cpu, cuda, cuda:N or mps")
    precision: str = opt("fp32", "fp32 | bf16 (autocast) | fp16 (autocast + grad scaler, CUDA only)", one_of("fp32", "bf16", "fp16"))
    channels_last: bool = opt(False, "use the channels_last memory format")
    checkpoint_every: int = opt(1, "write a checkpoint every N epochs (and always at the end)", in_range(1, None))
    threads: int = opt(0, "torch intra-op threads on CPU (0: torch default)", in_range(0, 1024))
    # -- Ray Train (dsr_tune/distributed/): used only when workers >= 1
    workers: int = opt(0, "Ray Train DDP workers (0: train in this process, no Ray)", in_range(0, 4096))
    use_gpu: bool = opt(False, "Ray Train: one GPU per worker, NCCL backend (else CPU workers, gloo)")
    cpus_per_worker: float = opt(1.0, "Ray Train: logical CPUs reserved per worker (GPU nodes: loader processes + 1)", in_range(0, 1024, lo_open=True))
    max_failures: int = opt(0, "Ray Train: worker-group restarts from the last checkpoint after a failure (-1: no limit)", in_range(-1, None))
    storage_path: str | None = opt(None, "Ray Train: checkpoint storage, a local or shared folder or a URI (s3://, gs://); default <output>/ray, single node only")
    keep_checkpoints: int = opt(2, "Ray Train: checkpoints kept in storage, newest first (0: all)", in_range(0, None))

    def __post_init__(self):
        _check_fields(self, "train")


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "sparsity": SparsityConfig,
    "train": TrainConfig,
}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every field (for trackers)."""
        return {f"{s}.{k}": v for s, d in self.to_dict().items() for k, v in d.items()}


# ---------------------------------------------------------------- loading


def _hint(cls, name: str):
    return typing.get_type_hints(cls)[name]


def _coerce(key: str, value: Any, hint) -> Any:
    """Check ``value`` against the type hint; accept ints for floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    expected = origin or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        raise ConfigError(key, f"got {value!r}; expected an integer")
    if expected is float and isinstance(value, str):
        try:  # YAML reads "1e-3" as a string
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, expected):
        raise ConfigError(key, f"got {value!r} ({type(value).__name__}); expected {expected.__name__}")
    return value


def _build_section(section: str, cls, values: Any):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(section, f"must be a mapping of keys, got {values!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{section}.{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            tip = f" (did you mean {section}.{close[0]}?)" if close else ""
            raise ConfigError(dotted, f"unknown key{tip}; allowed: {', '.join(names)}")
        kwargs[key] = value
    return cls(**kwargs)  # types and checks: __post_init__


def _check_fields(obj, section: str) -> None:
    """Type-check (ints accepted for floats) and run every field's check, so a
    section is valid however it is built (from YAML, directly, by replace())."""
    for f in dataclasses.fields(obj):
        dotted = f"{section}.{f.name}"
        value = _coerce(dotted, getattr(obj, f.name), _hint(type(obj), f.name))
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise ConfigError(dotted, problem if problem.startswith(("got", "each")) else f"{value!r} {problem}")
        setattr(obj, f.name, value)


def from_dict(data: dict | None) -> Config:
    """Build and validate a :class:`Config` from nested dicts (as read from YAML)."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError("", f"a config must be a mapping of sections, got {type(data).__name__}")
    for section in data:
        if section not in SECTIONS:
            close = difflib.get_close_matches(str(section), SECTIONS, n=1)
            tip = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(str(section), f"unknown section{tip}; allowed: {', '.join(SECTIONS)}")
    cfg = Config(**{s: _build_section(s, cls, data.get(s)) for s, cls in SECTIONS.items()})
    validate_cross(cfg)
    return cfg


SKIP_PATH_CHECKS = "DSR_TUNE_SKIP_PATH_CHECKS"  # "1" on a node that launches onto a cluster: data lives on the workers


def validate_paths(cfg: Config) -> None:
    """The data set is where the config says and holds what training needs
    (dsr_tune/data/checks.py, torch-free). Part of validation, except on a
    node that only launches onto a cluster (the CLI sets $DSR_TUNE_SKIP_PATH_CHECKS
    there); the trainer calls it again where it runs."""
    from .data.checks import check_files

    check_files(cfg.data)


def validate_cross(cfg: Config) -> None:
    """Checks that involve more than one field."""
    d = cfg.data
    if d.name in ("cifar10", "imagenet", "folder") and not d.root:
        raise ConfigError("data.root", f"None: data set {d.name!r} needs a root directory")
    if os.environ.get(SKIP_PATH_CHECKS) != "1":
        validate_paths(cfg)
    if d.name == "folder" and d.image_size == 0:
        raise ConfigError("data.image_size", "0: data set 'folder' needs an image size (e.g. 64)")
    if cfg.data.download and d.name != "cifar10":
        raise ConfigError("data.download", f"true: only cifar10 can be downloaded, not {d.name!r}")
    from .data.checks import check_keys  # torch-free: the data keys together

    check_keys(d)
    if cfg.train.precision == "fp16" and cfg.train.device in ("cpu", "mps"):
        raise ConfigError("train.precision", f"'fp16' needs CUDA (device is {cfg.train.device!r}); use bf16 on CPU")
    if cfg.model.name == "resnet50" and d.name == "digits":
        raise ConfigError("model.name", "'resnet50' cannot take 8x8 digits; use small_cnn or wrn")
    _validate_workers(cfg)
    _validate_baselines(cfg)
    _normalize_sparse_methods(cfg)


def _normalize_sparse_methods(cfg: Config) -> None:
    """YAML reads 1e-5 (no dot) as a string: store DeepR's temperatures as floats."""
    cfg.sparsity.deepr_temperatures = [[int(e), float(t)] for e, t in cfg.sparsity.deepr_temperatures]


def _run_holds(key: str, value: str, name: str) -> None:
    path = Path(value).expanduser()
    if not (path / name if path.is_dir() else path).is_file():
        raise ConfigError(key, f"{value!r} is not a run folder holding {name} (nor such a file)")


def _validate_baselines(cfg: Config) -> None:
    """The baselines' and ablations' keys (dsr_tune/baselines/)."""
    s, epochs = cfg.sparsity, cfg.train.epochs
    if s.method == "gmp":
        if not s.dense_from:
            raise ConfigError("sparsity.dense_from", "None: method 'gmp' prunes a trained dense model; give its run folder")
        last = s.gmp_start + (s.gmp_steps - 1) * s.gmp_every
        if last >= epochs:
            raise ConfigError("train.epochs", f"{epochs}: gmp's last pruning step is at epoch {last} "
                                              f"(gmp_start + (gmp_steps - 1) * gmp_every); need more epochs")
    if s.dense_from:
        if s.method != "gmp":
            raise ConfigError("sparsity.dense_from", f"{s.dense_from!r}: only method 'gmp' starts from a dense model")
        _run_holds("sparsity.dense_from", s.dense_from, "checkpoint.pt")
    if s.dsd_phases and (len(s.dsd_phases) != 2 or s.dsd_phases[0] < 1 or s.dsd_phases[1] >= epochs):
        raise ConfigError("sparsity.dsd_phases", f"{s.dsd_phases}: need [sparse_from, dense_from] with "
                                                 f"1 <= sparse_from < dense_from < train.epochs={epochs}")
    if s.method == "dsd" and not s.dsd_phases and epochs < 3:
        raise ConfigError("train.epochs", f"{epochs}: dsd needs at least 3 epochs (dense, sparse, dense)")
    if s.mask_from:
        if s.method in ("dense", *BASELINE_METHODS):
            raise ConfigError("sparsity.mask_from", f"{s.mask_from!r}: method {s.method!r} does not take masks; use static")
        _run_holds("sparsity.mask_from", s.mask_from, "checkpoint.pt")
    if s.init_from:
        if s.method in ("thin_dense", "hashednet", "gmp"):
            raise ConfigError("sparsity.init_from", f"{s.init_from!r}: method {s.method!r} has another architecture or start")
        _run_holds("sparsity.init_from", s.init_from, "init.pt")


def _validate_workers(cfg: Config) -> None:
    """Ray Train settings (train.workers >= 1): checked before any worker starts."""
    t = cfg.train
    if t.workers == 0:
        if t.use_gpu:
            raise ConfigError("train.use_gpu", "true needs train.workers >= 1 (Ray Train); in one process set train.device=cuda")
        return
    if cfg.data.batch_size % t.workers:
        raise ConfigError("data.batch_size", f"{cfg.data.batch_size} is the global batch and must divide by "
                          f"train.workers={t.workers} (each worker takes batch_size / workers)")
    if t.device not in ("auto", "cpu"):
        raise ConfigError("train.device", f"{t.device!r}: under Ray Train each worker uses the device Ray gives it; "
                          "use train.device=auto (with train.use_gpu=true for GPUs) or cpu")
    if t.use_gpu and t.device == "cpu":
        raise ConfigError("train.device", "'cpu' contradicts train.use_gpu=true; use train.device=auto")
    if t.precision == "fp16" and not t.use_gpu:
        raise ConfigError("train.precision", "'fp16' needs GPU workers (train.use_gpu=true); use bf16 on CPU workers")


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", parsed value)``; the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(item, "an override must look like section.key=value")
    key, _, raw = item.partition("=")
    key = key.strip()
    if key.count(".") != 1:
        raise ConfigError(key, "an override key must be section.key (e.g. sparsity.sparsity=0.8)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"cannot read value {raw!r}: {exc.problem}") from None
    return key, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = _copy(data or {})
    for item in overrides:
        key, value = parse_override(item)
        section, name = key.split(".")
        node = data.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(section, "must be a mapping of keys")
        node[name] = value
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from None
    return data or {}


def load(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read YAML (if given), apply dotted overrides, validate."""
    data = read_yaml(path) if path else {}
    return from_dict(apply_overrides(data, list(overrides)))


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def describe() -> str:
    """Every key with its default and doc line (``dsr-tune keys``)."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"{section}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} = {default!r}  # {f.metadata.get('doc', '')}")
    return "\n".join(lines)
