"""Folder trees of any image kind: channels, normalisation, augmentation keys,
ImageNet's transforms kept exactly, decode=cpu vs decode=gpu, broken files."""

import numpy as np
import pytest
import torch
from datafiles import write_tree
from PIL import Image

from dsr_tune import config as C
from dsr_tune.data import DataError, build_data, resolve, split_indices
from dsr_tune.data.images import IMAGENET_MEAN, IMAGENET_STD, FolderImages
from torchvision import transforms as T


def load(root, *keys):
    return C.load(None, ["data.name=folder", f"data.root={root}", "data.image_size=16", "data.batch_size=4",
                         "data.loader_workers=0", *keys]).data


def batches(bundle, loader):
    return [bundle.to_device(b, "cpu") for b in loader]


def test_grey_pngs_stay_one_channel_and_are_not_flipped(tmp_path):
    write_tree(tmp_path, channels=1, ext="png", per_class=5)
    cfg = load(tmp_path, "data.hflip=false")
    bundle = build_data(cfg, seed=0)
    assert bundle.in_channels == 1 and bundle.resolved["channels"] == 1 and len(bundle.resolved["mean"]) == 1
    x, _ = bundle.to_device(next(iter(bundle.train)), "cpu")
    assert x.shape == (4, 1, 16, 16)
    # no flip and no padding: a training image is exactly its test-time tensor
    ds = bundle.train.dataset
    test_view = FolderImages(ds.samples, bundle.val.dataset.spec)  # test-time recipe, same files
    torch.manual_seed(0)
    assert all(torch.equal(ds[i][0], test_view[i][0]) for i in range(len(ds)))
    # with the default flip some of the same draws do differ: the check above could fail
    flipping = build_data(load(tmp_path)).train.dataset
    torch.manual_seed(0)
    assert any(not torch.equal(flipping[i][0], test_view[i][0]) for i in range(len(ds)))


def test_channels_forced_and_inferred(tmp_path):
    write_tree(tmp_path / "rgb", channels=3, ext="png")
    assert resolve(load(tmp_path / "rgb"))["channels"] == 3
    bundle = build_data(load(tmp_path / "rgb", "data.channels=1"))
    assert bundle.to_device(next(iter(bundle.train)), "cpu")[0].shape[1] == 1 and bundle.in_channels == 1
    # 16-bit grey PNGs are grey too, scaled to 8 bits rather than clipped at 255
    for split in ("train", "val"):
        for c in range(2):
            (tmp_path / "g16" / split / f"c{c}").mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((12, 12), 40_000 + 1000 * i, dtype=np.uint16)).save(
                    tmp_path / "g16" / split / f"c{c}" / f"{i}.png")
    r = resolve(load(tmp_path / "g16"))
    assert r["channels"] == 1 and 0.6 < r["mean"][0] < 0.65  # 40,000..42,000 / 65,535, not 1.0 (clipped)


def test_mean_and_std_are_computed_from_the_training_part(tmp_path):
    """Uniform images (every pixel one value per channel) resize to themselves,
    so the expected statistics are those of the per-image values of the train
    part, validation images left out."""
    rng = np.random.default_rng(1)
    values = {}
    for split in ("train", "val"):
        for c in range(2):
            folder = tmp_path / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(10):
                v = rng.integers(0, 256, 3).astype(np.uint8)
                Image.fromarray(np.broadcast_to(v, (20, 20, 3)).copy()).save(folder / f"{i}.png")
                if split == "train":
                    values[str(folder / f"{i}.png")] = v / 255.0
    r = resolve(load(tmp_path))
    train_idx, _ = split_indices(20, 0.1)
    paths = sorted(values)  # class folders and names sort the same way here as ImageFolder's order
    used = np.stack([values[paths[i]] for i in train_idx])
    assert r["mean"] == pytest.approx(used.mean(0).tolist(), abs=1e-4)
    assert r["std"] == pytest.approx(used.std(0).tolist(), abs=1e-4)
    assert r["mean"] != pytest.approx(np.stack(list(values.values())).mean(0).tolist(), abs=1e-4)  # val excluded
    assert r["mean"] != list(IMAGENET_MEAN)
    # and the loaders normalise with them: the train part is centred, with unit spread
    ds = build_data(load(tmp_path, "data.hflip=false")).train.dataset
    x = torch.stack([ds[i][0] for i in range(len(ds))]).transpose(0, 1).flatten(1)
    assert torch.allclose(x.mean(1), torch.zeros(3), atol=2e-3) and torch.allclose(x.std(1), torch.ones(3), atol=1e-2)
    given = resolve(load(tmp_path, "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.25, 0.25, 0.25]"))
    assert given["mean"] == [0.5] * 3 and given["std"] == [0.25] * 3


def test_imagenet_defaults_are_exactly_todays_transforms(tmp_path):
    """RandomResizedCrop + flip for training, Resize(8/7) + CenterCrop for
    test, ImageNet's constants: bit-equal to torchvision's pipeline."""
    write_tree(tmp_path, per_class=2, size=(50, 37))
    cfg = C.load(None, ["data.name=imagenet", f"data.root={tmp_path}", "data.image_size=24"]).data
    r = resolve(cfg)
    assert (r["hflip"], r["random_resized_crop"], r["crop_padding"], r["val_fraction"]) == (True, True, 0, 0.01)
    assert r["mean"] == list(IMAGENET_MEAN) and r["std"] == list(IMAGENET_STD)
    bundle = build_data(cfg)
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_ref = T.Compose([T.RandomResizedCrop(24), T.RandomHorizontalFlip(), *norm])
    test_ref = T.Compose([T.Resize(27), T.CenterCrop(24), *norm])
    for ds, ref in ((bundle.train.dataset, train_ref), (bundle.test.dataset, test_ref)):
        for i in range(len(ds)):
            img = Image.open(ds.samples[i][0]).convert("RGB")
            torch.manual_seed(i)
            ours = ds[i][0]
            torch.manual_seed(i)
            assert torch.equal(ours, ref(img)), ds.samples[i][0]


def test_crop_padding_and_random_resized_crop_keys(tmp_path):
    write_tree(tmp_path, per_class=2)
    padded = build_data(load(tmp_path, "data.crop_padding=3", "data.hflip=false")).train.dataset
    plain = build_data(load(tmp_path, "data.hflip=false")).train.dataset
    torch.manual_seed(0)
    assert any(not torch.equal(padded[i][0], plain[i][0]) for i in range(len(plain)))  # shifted crops
    assert padded[0][0].shape == plain[0][0].shape == (3, 16, 16)
    rrc = build_data(load(tmp_path, "data.random_resized_crop=true"))
    assert rrc.resolved["random_resized_crop"] is True and rrc.train.dataset.spec.random_resized_crop
    with pytest.raises(C.ConfigError, match="data.crop_padding"):
        load(tmp_path, "data.random_resized_crop=true", "data.crop_padding=2")


@pytest.mark.parametrize("name,channels,workers", [("imagenet", 3, 2), ("folder", 3, 0), ("folder", 1, 0)])
def test_decode_gpu_path_on_cpu_matches_cpu_path(tmp_path, name, channels, workers):
    """The same seed draws the same crops and flips on both paths; the pixels
    then differ only by decoder and resize-kernel rounding. Tolerance: mean
    absolute difference under 0.5 grey levels (of 255) and no pixel more than
    2 levels apart; measured here ~0.15 mean, 1 max (libjpeg-turbo in both,
    PIL's vs torch's antialiased bilinear). A single differing crop or flip
    moves the mean by tens of levels, which the last assertion shows. With
    loader processes the draws happen there, seeded the same on both paths."""
    write_tree(tmp_path, per_class=6, size=(60, 50), channels=channels)
    keys = [f"data.name={name}", f"data.root={tmp_path}", "data.image_size=24", "data.batch_size=4",
            f"data.loader_workers={workers}"]
    out = {}
    for decode in ("cpu", "gpu"):
        bundle = build_data(C.load(None, keys + [f"data.decode={decode}"]).data, seed=0)
        torch.manual_seed(1)
        train = torch.cat([x for x, _ in batches(bundle, bundle.train)])
        test, labels = zip(*batches(bundle, bundle.test))
        out[decode] = train, torch.cat(test), torch.cat(labels)
    std = torch.tensor(bundle.resolved["std"]).view(1, -1, 1, 1) * 255  # back to grey levels
    for k in (0, 1):
        diff = ((out["cpu"][k] - out["gpu"][k]) * std).abs()
        assert out["cpu"][k].shape == out["gpu"][k].shape and out["cpu"][k].shape[1:] == (channels, 24, 24)
        assert diff.mean() < 0.5 and diff.max() <= 2.0 + 1e-3, (k, diff.mean().item(), diff.max().item())
    assert torch.equal(out["cpu"][2], out["gpu"][2])
    shifted = ((out["cpu"][0] - out["gpu"][0].roll(1, 0)) * std).abs().mean()
    assert shifted > 5.0  # other images' crops: far outside the tolerance


def test_decode_gpu_takes_non_jpeg_files_on_the_cpu(tmp_path):
    """PNGs (and CMYK JPEGs, PNGs named .JPEG) are decoded by PIL in the
    training process, then go through the same device recipe."""
    write_tree(tmp_path, per_class=3, ext="png")
    gpu, cpu = build_data(load(tmp_path, "data.decode=gpu")), build_data(load(tmp_path))
    batch = next(iter(gpu.test))
    assert not batch["params"][:, 10].any()  # marked: not for the JPEG decoder
    assert torch.allclose(gpu.to_device(batch, "cpu")[0], cpu.to_device(next(iter(cpu.test)), "cpu")[0], atol=0.05)


def truncate_one(root) -> str:
    victim = sorted((root / "train" / "class1").iterdir())[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) * 4 // 5])  # header intact (passes PIL verify), pixels missing
    return str(victim)


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_undecodable_file_raises_data_error_naming_it(tmp_path, decode):
    write_tree(tmp_path, per_class=4)
    victim = truncate_one(tmp_path)
    C.load(None, ["data.name=folder", f"data.root={tmp_path}", "data.image_size=16"])  # the pre-check passes
    bundle = build_data(load(tmp_path, "data.val_fraction=0", f"data.decode={decode}", "data.mean=[0.5,0.5,0.5]",
                             "data.std=[0.2,0.2,0.2]"))
    with pytest.raises(DataError) as exc:
        for batch in bundle.train:
            bundle.to_device(batch, "cpu")
    assert str(exc.value).startswith(victim) and "\n" not in str(exc.value)


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_skip_bad_images_drops_and_counts(tmp_path, decode):
    write_tree(tmp_path, per_class=4)
    truncate_one(tmp_path)
    bundle = build_data(load(tmp_path, "data.val_fraction=0", f"data.decode={decode}", "data.skip_bad_images=true",
                             "data.batch_size=3"))  # 12 images: 4 full batches, one holds the broken file
    sizes = [len(bundle.to_device(b, "cpu")[1]) for b in bundle.train]
    assert sorted(sizes) == [2, 3, 3, 3] and bundle.pop_bad_images() == 1 and bundle.pop_bad_images() == 0


def test_resolved_choices_are_cached_used_and_follow_the_files(tmp_path, monkeypatch):
    from dsr_tune.data import images

    write_tree(tmp_path, per_class=3, ext="png")
    cfg = load(tmp_path)
    first = resolve(cfg)
    bundle = build_data(cfg)
    assert bundle.resolved == first  # build_data runs on exactly these values
    spec = bundle.train.dataset.spec
    assert (list(spec.mean), list(spec.std), spec.channels, spec.hflip) == (first["mean"], first["std"], 3, True)

    def no_decoding(self, i):
        raise AssertionError("statistics recomputed")
    monkeypatch.setattr(images.FolderImages, "__getitem__", no_decoding)
    assert resolve(cfg) == first  # cached per process: no image decoded again
    monkeypatch.undo()
    Image.fromarray(np.zeros((30, 30, 3), dtype=np.uint8)).save(tmp_path / "train" / "class0" / "black.png")
    assert resolve(cfg)["mean"][0] < first["mean"][0]  # a new file: a new listing, recomputed
