"""Image files on disk, without torch: listing a class-folder tree, reading
one image's header or pixels, and the error a file that cannot be read raises.

The listing follows torchvision's ImageFolder conventions (classes are the
sorted sub-folder names, files are found recursively, sorted, by extension),
so indices and labels are the ones ImageFolder would give, but it runs here
without importing torch: the pre-checks and the resolved settings use it
before any heavy import.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

# torchvision's IMG_EXTENSIONS: the same files count as images
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# PIL modes with a single grey band ('I', 'I;16*' are 16/32-bit grey, 'LA' grey with alpha)
GREY_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")
PIL_ERRORS = (OSError, ValueError, SyntaxError)  # what PIL raises for a broken file


class DataError(ValueError):
    """An image could not be read or decoded. The message is one line that
    starts with the file's path."""


def is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def class_folders(split_dir: str | Path) -> list[str]:
    """Sorted names of the class sub-folders (hidden ones skipped)."""
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _class_files(folder: str) -> list[str]:
    out = []
    for dirpath, _, filenames in sorted(os.walk(folder, followlinks=True)):
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image(f)]
    return out


def class_mismatch(train: list[str], val: list[str]) -> str | None:
    """What differs between train/'s and val/'s class folders, or None."""
    if list(train) == list(val):
        return None
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))

    def few(names):
        return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
    return (f"train/ and val/ have different class folders: only in train/: {few(only_train) or '-'}; "
            f"only in val/: {few(only_val) or '-'}")


def tree_key(split_dir: str | Path, classes: list[str] | None = None) -> tuple:
    """A cache key of a split's listing: the class folders and their mtimes,
    which change when a file is added to or removed from a class folder, so
    a cached listing (or what is computed from it) never hides new files."""
    split_dir = Path(split_dir).expanduser().resolve()
    classes = class_folders(split_dir) if classes is None else classes
    return tuple((c, os.stat(split_dir / c).st_mtime_ns) for c in classes)


@functools.lru_cache(maxsize=16)
def _scan(split_dir: Path, key: tuple) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    classes = tuple(c for c, _ in key)
    samples = tuple((path, label) for label, c in enumerate(classes) for path in _class_files(str(split_dir / c)))
    return classes, samples


def scan_split(split_dir: str | Path, classes: list[str] | None = None
               ) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    """(class names, ((path, label), ...)) of one split, in ImageFolder's order.

    ``classes`` fixes the label of each class folder (val/ takes train/'s);
    by default the split's own sorted sub-folders. Cached per process while
    the class folders are unchanged (ImageNet's 1.28M files take seconds).
    """
    split_dir = Path(split_dir).expanduser().resolve()
    return _scan(split_dir, tree_key(split_dir, classes))


def first_images(split_dir: str | Path, per_class: int = 1, classes: int = 8) -> list[str]:
    """A few files spread over the classes (the first ``per_class`` of up to
    ``classes`` evenly spaced class folders), found without listing the tree."""
    split_dir = Path(split_dir)
    names = class_folders(split_dir)
    step = max(1, len(names) // classes)
    out = []
    for name in names[::step][:classes]:
        for dirpath, dirnames, filenames in os.walk(split_dir / name, followlinks=True):
            dirnames.sort()
            picked = [os.path.join(dirpath, f) for f in sorted(filenames) if is_image(f)][:per_class]
            out += picked
            if picked:
                break
    return out


def infer_channels(paths: list[str]) -> int:
    """1 when every readable file is grey ('L', '1', 'I;16', ...), else 3;
    from the headers alone (PIL opens lazily, no pixel is decoded). An
    unreadable file is passed over: the pre-check or the loaders name it."""
    from PIL import Image

    grey = 0
    for path in paths:
        try:
            with Image.open(path) as img:
                if img.mode not in GREY_MODES:
                    return 3
                grey += 1
        except PIL_ERRORS:
            continue
    return 1 if grey else 3


def to_mode(img, channels: int):
    """A PIL image as 'L' (channels=1) or 'RGB' (3). 16/32-bit grey is scaled
    to 8 bits (PIL's own conversion would clip it at 255 instead)."""
    from PIL import Image

    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8), "L")
    # always a new image (convert copies even to its own mode): the caller may
    # close the file's image, and Pillow then refuses to touch its pixels
    return img.convert("L" if channels == 1 else "RGB")


def open_image(path: str, channels: int, data: bytes | None = None):
    """Decode a file (or its bytes) into a PIL image of ``channels``; any
    failure is a :class:`DataError` naming the file."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            return to_mode(img, channels)
    except PIL_ERRORS as exc:
        raise DataError(f"{path}: cannot decode the image ({exc})") from None


def verify_images(paths: list[str]) -> str | None:
    """The first file PIL cannot open and verify, with the reason; None if all do."""
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as exc:  # verify() raises whatever the plugin raises
            return f"{path} ({type(exc).__name__}: {exc})"
    return None


# fixed, not train.seed: the validation slice is the same for every seed, so a
# selection across seeds compares like with like
VAL_SEED = 20190214


def val_count(n: int, fraction: float) -> int:
    """How many of ``n`` images the validation slice takes (see :func:`split_indices`)."""
    if fraction <= 0 or n < 2:
        return 0
    return min(max(int(round(n * fraction)), 1), n - 1)


def split_indices(n: int, fraction: float) -> tuple[list[int], list[int]]:
    """(train part, validation part) of ``range(n)``, both sorted.

    A fixed-seed permutation: the same for every train.seed and every call,
    disjoint, covering all n. The validation part has round(n * fraction)
    items, at least 1 when fraction > 0 and n >= 2, never all n.
    """
    n_val = val_count(n, fraction)
    import numpy as np

    order = np.random.default_rng(VAL_SEED).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())
