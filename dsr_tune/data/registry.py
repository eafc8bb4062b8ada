"""The data-set registry: every data set registered once, with its loader
factory and the traits the rest of the tool asks for by name (which keys it
reads, its fixed sizes, its augmentation defaults, what its files must look
like). The ``data.name`` choices, the data checks, :func:`~.choices.resolve`,
the loaders, ``dsr-tune keys`` and the tests derive from it.

Importing this module imports no torch (the CLI checks data keys before it
loads torch): a data set's hooks import what they need when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: data keys that only some data sets read, with the neutral value a data set
#: that does not list the key in ``reads`` must leave them at (a value that
#: would be silently ignored is refused)
OPTIONAL = {"decode": "cpu", "random_resized_crop": None, "skip_bad_images": False, "mean": None, "std": None,
            "hflip": None, "crop_padding": None}
#: what an image data set with the usual augmentation reads; a class-folder tree reads all of OPTIONAL
AUGMENTED = ("mean", "std", "hflip", "crop_padding")
#: data.resident=auto keeps a data set on the training device when its decoded splits take at most
#: this many MiB, and on a GPU at most this share of the memory the process may use (the rest is the
#: model's, its activations' and the optimizer's; packed trials each have their share of the GPU)
RESIDENT_CAP_MIB = 2048
RESIDENT_DEVICE_SHARE = 0.25


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


@dataclass(frozen=True)
class DataSet:
    """One data set. Hooks take the DataConfig (``cfg``) and the resolved choices (``r``).

    load(cfg, r): ``(train, validation, test, classes, input channels)`` torch
        data sets; validation is a fixed-seed slice of the training data
        (``r["val_fraction"]``), the same for every train.seed.
    reads: the keys of :data:`OPTIONAL` it reads.
    channels: its fixed input channels (0: ``data.channels``, else from the files).
    image_size: its fixed image side (0: ``data.image_size``, else ``default_size``).
    default_size: what ``data.image_size=0`` means (0: the key is required).
    hflip, crop_padding, random_resized_crop, val_fraction: what null means for those keys.
    in_memory: tensors already in memory (no loader processes by default).
    needs_root: ``data.root`` is required; downloads: ``data.download`` may fetch it there.
    normalisation(cfg, r): ``(mean, std)`` lists when ``data.mean`` is null
        (None: its tensors are standardised already, 0 and 1 per channel).
    check_files(cfg, root, where): its files, checked where training runs
        (ConfigError; ``where`` names the host in messages).
    counts(cfg): ``(images before the validation slice, test images, classes,
        channels)`` without the data (a plan prices a sweep from them; channels
        0: the set's or the config's); None: only its files can say.
    arrays(cfg, r): for ``data.resident``: ``((x, y) train, (x, y) validation,
        (x, y) test, classes, channels)`` as CPU tensors, the splits of ``load``
        in its order; x uint8 ``N x C x size x size`` (normalised and augmented
        on the device) or float32 (used as is, no augmentation); files are decoded
        by ``r["workers"]`` loader processes. None: never resident.
    decoded_bytes(cfg, r): what ``arrays`` would take, known without decoding
        (``r``: image_size and channels).
    """

    name: str
    doc: str
    load: Callable[[Any, dict], tuple]
    reads: tuple[str, ...] = ()
    channels: int = 0
    image_size: int = 0
    default_size: int = 0
    hflip: bool = False
    crop_padding: int = 0
    random_resized_crop: bool = False
    val_fraction: float = 0.1
    in_memory: bool = False
    needs_root: bool = False
    downloads: bool = False
    normalisation: Callable[[Any, dict], tuple[list[float], list[float]]] | None = None
    check_files: Callable[[Any, Any, str], None] | None = None
    counts: Callable[[Any], tuple[int, int, int, int]] | None = None
    arrays: Callable[[Any, dict], tuple] | None = None
    decoded_bytes: Callable[[Any, dict], int] | None = None


REGISTRY: dict[str, DataSet] = {}


def register(data: DataSet) -> DataSet:
    """Add ``data`` (names are unique)."""
    if data.name in REGISTRY:
        raise ValueError(f"data set {data.name!r} is registered twice")
    unknown = set(data.reads) - set(OPTIONAL)
    if unknown:
        raise ValueError(f"data set {data.name!r} reads {', '.join(sorted(unknown))}, which are not among "
                         f"{', '.join(OPTIONAL)}")
    REGISTRY[data.name] = data
    return data


def get(name: str) -> DataSet:
    if name not in REGISTRY:
        raise ValueError(f"unknown data set {name!r}; allowed: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names(**traits) -> tuple[str, ...]:
    """Registered names whose traits equal ``traits`` (e.g. ``names(downloads=True)``), in order."""
    return tuple(d.name for d in REGISTRY.values() if all(getattr(d, k) == v for k, v in traits.items()))


def reading(key: str) -> tuple[str, ...]:
    """The data sets that read the optional key ``key``."""
    return tuple(d.name for d in REGISTRY.values() if key in d.reads)
