"""The sections of a run's config: one pydantic model per concern.

The choices of ``model.name``, ``data.name`` and ``sparsity.method`` and each
method's own section (``sparsity.dsr.delta``, ...) are made from the model,
data-set and method registries: what is registered there is a choice here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, create_model, model_validator

from .. import methods, models
from ..data import registry as data_sets
from ..schema import Real, Section, checked, opt, scaled


def _periods(v) -> str | None:
    if v is None:
        return None
    if not v:
        return "must be a non-empty list of [start_epoch, period] pairs"
    last = -1
    for item in v:
        if len(item) != 2:
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


def _increasing(v) -> str | None:
    if any(x < 0 for x in v):
        return "must be a list of non-negative integer epochs"
    if list(v) != sorted(set(v)):
        return "must increase strictly"
    return None


def _channel_values(v) -> str | None:
    if v is not None and len(v) not in (1, 3):
        return "must be a list of 1 or 3 numbers, one per channel"
    return None


def _positive_channel_values(v) -> str | None:
    return _channel_values(v) or (None if v is None or min(v) > 0 else "must be > 0")


def _patterns(v) -> str | None:
    if v is not None and not all(x for x in v):
        return "must be a list of parameter-name patterns (fnmatch, e.g. 'layer*.conv*.weight')"
    return None


def _depth(v) -> str | None:
    return None if v >= 10 and (v - 4) % 6 == 0 else "must be 6n+4 and >= 10 (e.g. 16, 22, 28, 40)"


def _auto_or_bool(v) -> str | None:
    return None if isinstance(v, bool) or v == "auto" else "must be auto, true or false"


def _device(v) -> str | None:
    ok = v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit())
    return None if ok else "must be auto, cpu, cuda, cuda:N or mps"


Epochs = Annotated[list[int], checked(_increasing)]
Patterns = Annotated[list[str] | None, checked(_patterns)]


def _for(key: str) -> str:
    """The data sets an optional data key applies to, as the start of its doc line."""
    return ", ".join(data_sets.reading(key)) + ": "


def _null(key: str, among: tuple[str, ...] | None = None) -> str:
    """What null means for a data key, by data set: ``"null: 4 for cifar10, 0 otherwise"``."""
    values = {name: getattr(data_sets.REGISTRY[name], key) for name in (among or data_sets.REGISTRY)}
    usual = max(set(values.values()), key=list(values.values()).count)
    text = lambda v: str(v).lower() if isinstance(v, bool) else str(v)  # noqa: E731
    odd = [f"{text(v)} for {name}" for name, v in values.items() if v != usual]
    return "null: " + ", ".join([*odd, f"{text(usual)} otherwise"] if odd else [text(usual)])


def _image_size_doc() -> str:
    sized = [d for d in data_sets.REGISTRY.values() if not d.image_size]  # the others have a size of their own
    defaults = ", ".join(f"{d.default_size} for {d.name}" for d in sized if d.default_size)
    return f"image size for {', '.join(d.name for d in sized)}" + (f" (0: {defaults})" if defaults else "")


class ModelConfig(Section):
    name: Literal[models.names()] = opt("small_cnn", "the model: " + ", ".join(models.names()))
    depth: Annotated[int, checked(_depth)] = opt(28, "WRN depth (6n+4)")
    width: Real = opt(2.0, "width: WRN widen factor k, ResNet-50 / small CNN width multiplier (any real > 0)",
                      gt=0, le=64)
    sparse_layers: Patterns = opt(None, "override: fnmatch patterns of the weight names made sparse "
                                  "(default: the model's own rule)")
    dense_layers: Patterns = opt(None, "override: fnmatch patterns removed from the sparse set")


class DataConfig(Section):
    name: Literal[data_sets.names()] = opt("digits", "the data set: " + ", ".join(data_sets.names()))
    root: str | None = opt(None, "data root: CIFAR-10 folder, or a tree with train/ and val/ class folders")
    download: bool = opt(False, f"{' or '.join(data_sets.names(downloads=True))} only: download into root if "
                                "missing")
    image_size: int = opt(0, _image_size_doc(), ge=0, le=4096)
    batch_size: int = opt(64, "per-step batch size over all workers (the global batch)", ge=1)
    eval_batch_size: int = opt(256, "batch size for evaluation", ge=1)
    loader_workers: int = opt(-1, "loader processes per training process (-1: auto, 0: in-process)", ge=-1, le=256)
    test_fraction: Real = opt(0.2, "digits only: share held out as the test set (fixed split)", ge=0.05, le=0.5)
    synthetic_size: int = opt(512, "synthetic only: number of random training samples", ge=16)
    # -- image pipeline, validation split, decoding (dsr_tune/data/): null = the data set's default,
    # made concrete by dsr_tune.data.resolve(); checks that span keys: dsr_tune/data/checks.py
    channels: Literal[0, 1, 3] = opt(0, ", ".join(data_sets.names(channels=0)) + ": input channels; 0: from a few "
                                     "files (all grey -> 1, else 3); 1 or 3: converted")
    mean: Annotated[list[Real] | None, checked(_channel_values)] = opt(
        None, "per-channel normalisation mean (0..1 pixels); null: CIFAR-10's / ImageNet's constants, a folder's "
              "own (from up to 2,000 training images)")
    std: Annotated[list[Real] | None, checked(_positive_channel_values)] = opt(
        None, "per-channel normalisation std (> 0); null: like data.mean")
    hflip: bool | None = opt(None, _for("hflip") + "random horizontal flip in training; "
                             + _null("hflip", data_sets.reading("hflip")) + " (set false for digits-like images)")
    crop_padding: int | None = opt(None, _for("crop_padding") + "random crop after reflect-padding by this many "
                                   "pixels; " + _null("crop_padding", data_sets.reading("crop_padding")), ge=0, le=1024)
    random_resized_crop: bool | None = opt(None, _for("random_resized_crop") + "random-resized crop in training, "
                                           "resize to 8/7 and center crop at test; "
                                           + _null("random_resized_crop", data_sets.reading("random_resized_crop")))
    val_fraction: Real | None = opt(None, "share of the training data held out as validation (a fixed-seed slice, "
                                    "the same for every train.seed); 0: none; " + _null("val_fraction"), ge=0, le=0.5)
    decode: Literal["cpu", "gpu"] = opt("cpu", _for("decode") + "decode images in the loader processes (cpu), or "
                                        "only read the files there and decode + augment batches on the training "
                                        "device (gpu)")
    skip_bad_images: bool = opt(False, _for("skip_bad_images") + "drop images that fail to decode from their batch, "
                                "counted as bad_images per epoch (false: stop with an error naming the file)")
    resident: Annotated[Any, checked(_auto_or_bool)] = opt(  # Any: one message for 1, 'maybe', [1]
        "auto", "keep the decoded data set on the training device and take batches by index (crop, flip and "
        "normalisation applied there, in batch; the same order and augmentation distribution as the loaders): "
        "true, false, or auto: on when it fits, i.e. at most " + f"{data_sets.RESIDENT_CAP_MIB} MiB decoded and, "
        f"on a GPU, at most {data_sets.RESIDENT_DEVICE_SHARE:.0%} of the memory this process may use; never for "
        + ", ".join(data_sets.names(arrays=None)) + " nor random-resized crops (true is refused there and "
        "over the cap)")


class OptimConfig(Section):
    lr: Real = opt(0.1, "base learning rate (for the base batch size)", gt=0, le=100)
    momentum: Real = opt(0.9, "SGD momentum", ge=0, lt=1)
    nesterov: bool = opt(True, "Nesterov momentum")
    weight_decay: Real = opt(5e-4, "L2 weight decay", ge=0, le=1)
    milestones: Epochs = opt([], "epochs at which the LR is multiplied by gamma")
    gamma: Real = opt(0.2, "LR factor at each milestone", gt=0, le=1)
    warmup_epochs: int = opt(0, "linear LR warm-up from lr/10 over this many epochs (large-batch runs)", ge=0)
    base_batch_size: int = opt(0, "batch size lr refers to; 0: data.batch_size (no scaling)", ge=0)
    lr_scaling: Literal["linear", "sqrt", "none"] = opt("linear", "rule when data.batch_size differs from "
                                                        "base_batch_size")
    decay_norm_and_bias: bool = opt(True, "weight decay on batch-norm and bias parameters too (the paper's "
                                    "code decays every parameter)")


def _sparsity_section() -> type[Section]:
    """The shared sparsity keys plus one section per registered method with keys."""
    shared = dict(
        method=(Literal[methods.trainable()], opt("dsr", "the method: " + ", ".join(methods.trainable()))),
        sparsity=(Real, opt(0.9, "global sparsity of the sparse tensors (share of zero weights)", ge=0, lt=1)),
        distribution=(Literal["uniform", "erk"], opt("uniform", "initial spread of the budget over tensors: "
                      "uniform density, or erk (Erdos-Renyi-Kernel, RigL's; any sparse method)")),
        period_schedule=(Annotated[list[list[int]] | None, checked(_periods)],
                         opt(None, "reallocation period: [start_epoch, iterations] pairs (dsr, set, rigl, snfs); "
                                   "null: the paper's 100/200/400/800 iterations from 0, 12.5%, 40%, 70% of "
                                   "train.epochs (epochs 0/25/80/140 of 200)")),
        period_scale=(Real, opt(1.0, "multiplies every period of the schedule (sweeps search it)", gt=0)),
        stop_epoch=(int | None, opt(None, "no reallocation from this epoch on (dsr, set, rigl, snfs; deepr "
                                          "rewires to the end); null: 95% of train.epochs (190 of 200)", ge=0)),
        epoch_factor=(Real, opt(2.0, "comparisons train the static baselines' long control (static, thin_dense) "
                                     "this many times DSR's epochs, LR milestones stretched alike", gt=0)),
        mask_from=(str | None, opt(None, "ablation: a finished run folder whose final masks (checkpoint.pt) "
                                         "replace the random ones")),
        init_from=(str | None, opt(None, "ablation: a run folder whose initial dense weights (init.pt) replace "
                                         "fresh ones")),
    )
    own = {name: (cls, Field(default_factory=cls, description=f"{name}'s own keys"))
           for name, cls in methods.with_options().items()}
    return create_model("SparsityConfig", __base__=Section, **shared, **own)


SparsityConfig = _sparsity_section()


class TrainConfig(Section):
    epochs: int = opt(200, "training epochs: the length every schedule refers to", ge=1)
    stop_after: int | None = opt(None, "stop after this many epochs, resumable (--resume continues to "
                                 "train.epochs); None: train.epochs", ge=1)
    seed: int = opt(0, "seed for weights, masks and data order", ge=0, le=2**31 - 1)
    init_seed: int | None = opt(None, "seed for the initial weights only (None: train.seed); the final_reinit "
                                "ablation sets it", ge=0, le=2**31 - 1)
    device: Annotated[str, checked(_device)] = opt("auto", "auto | cpu | cuda | cuda:N | mps")
    precision: Literal["fp32", "bf16", "fp16"] = opt("fp32", "fp32 | bf16 (autocast) | fp16 (autocast + grad "
                                                     "scaler, CUDA only)")
    channels_last: bool = opt(False, "use the channels_last memory format")
    checkpoint_every: int = opt(1, "write a checkpoint every N epochs (and always at the end)", ge=1)
    threads: int = opt(0, "torch intra-op threads on CPU (0: torch default)", ge=0, le=1024)
    compile: bool = opt(False, "torch.compile the model for training (masks are still applied after every "
                        "step; checkpoints keep the plain parameter names)")
    compile_backend: Literal["inductor", "aot_eager", "eager"] = opt(
        "inductor", "torch.compile backend: inductor (generates kernels; needs a C++ compiler on CPU), "
        "aot_eager (traces only: no compiler needed)")
    # -- Ray Train (dsr_tune/distributed/): used only when workers >= 1
    workers: int = opt(0, "Ray Train DDP workers (0: train in this process, no Ray)", ge=0, le=4096)
    use_gpu: bool = opt(False, "Ray Train: one GPU per worker, NCCL backend (else CPU workers, gloo)")
    cpus_per_worker: Real = opt(1.0, "Ray Train: logical CPUs reserved per worker (GPU nodes: loader processes "
                                "+ 1)", gt=0, le=1024)
    max_failures: int = opt(0, "Ray Train: worker-group restarts from the last checkpoint after a failure (-1: "
                            "no limit)", ge=-1)
    storage_path: str | None = opt(None, "Ray Train: checkpoint storage, a local or shared folder or a URI "
                                   "(s3://, gs://); default <output>/ray, single node only")
    keep_checkpoints: int = opt(2, "Ray Train: checkpoints kept in storage, newest first (0: all)", ge=0)


#: the paper's WRN schedule (epochs 0/25/80/140 of 200) as fractions of the run
PAPER_PERIODS = [[0.0, 100], [0.125, 200], [0.4, 400], [0.7, 800]]
PAPER_STOP = 0.95  # reallocation stops at epoch 190 of 200


class Config(Section):
    """A whole run: validated on construction and on every assignment.

    Schedules left null take the paper's shape at this run's length (see
    :data:`PAPER_PERIODS`); the resolved values are what the config holds
    (and writes out), so a run's config.yaml names the epochs it used.
    """

    model: ModelConfig = opt(ModelConfig, "the network")
    data: DataConfig = opt(DataConfig, "the data set and loaders")
    optim: OptimConfig = opt(OptimConfig, "optimizer and LR schedule")
    sparsity: SparsityConfig = opt(SparsityConfig, "the method and its budget")
    train: TrainConfig = opt(TrainConfig, "the training run")

    @model_validator(mode="after")
    def _resolve_schedules(self):
        s, epochs = self.sparsity, self.train.epochs
        if s.period_schedule is None:
            s.period_schedule = scaled(PAPER_PERIODS, epochs)
        if s.stop_epoch is None:
            s.stop_epoch = round(PAPER_STOP * epochs)
        for name in methods.with_options():
            entry = methods.get(name)
            if entry.resolve is not None:
                entry.resolve(self)
        return self

    def flat(self) -> dict:
        """``{"section.key": value}`` for every key, nested sections dotted (for trackers)."""
        out: dict = {}

        def walk(prefix: str, d: dict) -> None:
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(f"{prefix}{k}.", v)
                else:
                    out[f"{prefix}{k}"] = v

        walk("", self.to_dict())
        return out


def derived_keys() -> tuple[str, ...]:
    """The keys whose null :class:`Config` fills from train.epochs."""
    own = [f"sparsity.{name}.{key}" for name in methods.with_options() for key in methods.get(name).resolves]
    return ("sparsity.period_schedule", "sparsity.stop_epoch", *own)


SECTIONS: dict[str, type[Section]] = {name: info.annotation for name, info in Config.model_fields.items()}
