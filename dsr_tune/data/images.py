"""Image data sets from disk: CIFAR-10 and class-folder trees (ImageNet)."""

from __future__ import annotations

from pathlib import Path

# torchvision is imported inside the functions: it costs ~1 s, and the
# in-memory data sets (digits, synthetic) never need it

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def cifar10(root: str, download: bool = False):
    """The paper's augmentation: 4-pixel reflect pad, random 32x32 crop, flip."""
    from torchvision import datasets, transforms as T

    root = str(Path(root).expanduser())
    train_tf = T.Compose([
        T.RandomCrop(32, padding=4, padding_mode="reflect"),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])
    test_tf = T.Compose([T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    train = datasets.CIFAR10(root, train=True, transform=train_tf, download=download)
    test = datasets.CIFAR10(root, train=False, transform=test_tf, download=download)
    return train, test, 10, 3


def image_folder(root: str, image_size: int, imagenet: bool = True):
    """``root/train/<class>/*`` and ``root/val/<class>/*``.

    imagenet=True: random-resized crop and flip for training; resize to
    size*8/7 and center crop for validation (224 -> 256 -> 224).
    imagenet=False (any tree): resize to a square ``image_size`` and flip.
    """
    from torchvision import datasets, transforms as T

    root = Path(root).expanduser()
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if imagenet:
        train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        val_tf = T.Compose([T.Resize(round(image_size * 8 / 7)), T.CenterCrop(image_size), T.ToTensor(), norm])
    else:
        square = T.Resize((image_size, image_size))
        train_tf = T.Compose([square, T.RandomHorizontalFlip(), T.ToTensor(), norm])
        val_tf = T.Compose([square, T.ToTensor(), norm])
    train = datasets.ImageFolder(str(root / "train"), transform=train_tf)
    val = datasets.ImageFolder(str(root / "val"), transform=val_tf)
    if train.classes != val.classes:
        raise ValueError(f"{root}: train/ and val/ have different class folders "
                         f"({len(train.classes)} vs {len(val.classes)})")
    return train, val, len(train.classes), 3
