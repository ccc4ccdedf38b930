"""Image folders, in-memory arrays, the embedded digits, transforms and loaders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.artifacts.metadata import DataSource, Preprocessing
from toolkit.data import (
    ArrayDataset,
    Augmentation,
    build_transform,
    dataset_labels,
    load_digits,
    load_image,
    load_splits,
    scan_image_folder,
    stratified_split,
    write_digits_folder,
)
from toolkit.errors import DlkitError
from toolkit.training.loaders import create_loader


def test_digits_are_upscaled_uint8_with_ten_classes():
    images, labels, classes = load_digits(image_size=32)
    assert images.shape == (1797, 32, 32) and images.dtype == np.uint8
    assert classes == [str(i) for i in range(10)]
    assert set(labels.tolist()) == set(range(10))
    assert images.max() == 255


def test_stratified_split_is_deterministic_and_per_class():
    labels = np.repeat(np.arange(4), 25)
    train, val = stratified_split(labels, 0.2, seed=3)
    assert (train, val) == stratified_split(labels, 0.2, seed=3)
    assert stratified_split(labels, 0.2, seed=4)[1] != val
    assert sorted(train + val) == list(range(100))
    assert np.bincount(labels[val]).tolist() == [5, 5, 5, 5]


def test_image_folder_single_folder_is_split(tmp_path, make_folder):
    make_folder(tmp_path / "data", per_class=10)
    pre = Preprocessing.default(3, 16, crop_pct=0.875)
    splits = load_splits(DataSource(None, str(tmp_path / "data")), pre, Augmentation())
    assert splits.classes == ["cat", "dog"]
    assert (len(splits.train), len(splits.val)) == (16, 4)
    x, y = splits.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y in (0, 1)


def test_image_folder_with_train_and_val(tmp_path, make_folder):
    make_folder(tmp_path / "d" / "train", per_class=4)
    make_folder(tmp_path / "d" / "val", per_class=2)
    splits = load_splits(DataSource(None, str(tmp_path / "d")), Preprocessing.default(1, 8))
    assert (len(splits.train), len(splits.val)) == (8, 4)
    assert splits.val[0][0].shape == (1, 8, 8)  # RGB files read as grayscale


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "data folder not found"),
        (lambda root: root.mkdir(), "no class folders"),
        (lambda root: (root / "cat").mkdir(parents=True), "has no images"),
    ],
)
def test_bad_folders_say_what_is_wrong(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DlkitError, match=message):
        scan_image_folder(root)


def test_corrupt_image_is_named(tmp_path, make_folder):
    root = make_folder(tmp_path / "data", per_class=3)
    bad = root / "dog" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    splits = load_splits(
        DataSource(None, str(root), val_fraction=0.34), Preprocessing.default(3, 8)
    )
    dataset = splits.train if any(p == str(bad) for p, _ in splits.train.samples) else splits.val
    index = next(i for i, (p, _) in enumerate(dataset.samples) if p == str(bad))
    with pytest.raises(DlkitError, match=r"corrupt or unreadable image: .*dog/1\.png"):
        dataset[index]


def test_array_dataset_converts_channels():
    images = np.random.default_rng(0).integers(0, 255, (6, 10, 10), dtype=np.uint8)
    pre = Preprocessing.default(3, 12)
    ds = ArrayDataset(images, [0, 1, 0, 1, 0, 1], channels=3, transform=build_transform(pre))
    x, y = ds[1]
    assert x.shape == (3, 12, 12) and y == 1
    mean, std = torch.tensor(pre.mean)[:, None, None], torch.tensor(pre.std)[:, None, None]
    pixels = x * std + mean  # grayscale was replicated to RGB before per-channel normalising
    assert torch.allclose(pixels[0], pixels[1], atol=1e-6)
    with pytest.raises(DlkitError, match="uint8"):
        ArrayDataset(images.astype(np.float32), [0] * 6, channels=1)
    with pytest.raises(DlkitError, match="labels"):
        ArrayDataset(images, [0], channels=1)


def test_augmentation_is_random_and_eval_transform_is_not():
    image = torch.randint(0, 255, (1, 32, 32), dtype=torch.uint8)
    pre = Preprocessing.default(1, 28)
    train_tf = build_transform(pre, Augmentation(hflip=True, rotation=15))
    eval_tf = build_transform(pre)
    assert not torch.equal(train_tf(image), train_tf(image))
    assert torch.equal(eval_tf(image), eval_tf(image))
    assert build_transform(pre, Augmentation(enabled=False))(image).shape == (1, 28, 28)


def test_loader_shuffling_depends_only_on_seed_and_epoch():
    ds = torch.utils.data.TensorDataset(torch.arange(40), torch.zeros(40))

    def order(seed, epoch):
        loader = create_loader(ds, 8, train=True, seed=seed)
        loader.sampler.set_epoch(epoch)
        return torch.cat([x for x, _ in loader]).tolist()

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    # Evaluation loaders keep every sample, in order, sharded without padding.
    shards = [create_loader(ds, 8, rank=r, world_size=3) for r in range(3)]
    seen = sorted(int(x) for loader in shards for batch, _ in loader for x in batch)
    assert seen == list(range(40))


def test_write_digits_folder_matches_the_embedded_split(tmp_path, digits_dir):
    counts = {
        split: sum(1 for _ in (digits_dir / split).rglob("*.png")) for split in ("train", "val")
    }
    assert counts == {"train": 1438, "val": 359}
    assert sorted(p.name for p in (digits_dir / "train").iterdir()) == [str(i) for i in range(10)]
    pre = Preprocessing.default(1, 32)
    folder = load_splits(DataSource(None, str(digits_dir)), pre)
    embedded = load_splits(DataSource(), pre)
    for i in (0, 100, 358):
        path, label = folder.val.samples[i]
        j = embedded.val.indices.index(int(Path(path).stem))  # files are named by digit index
        assert torch.equal(folder.val[i][0], embedded.val[j][0])
        assert label == embedded.val[j][1]
    with pytest.raises(DlkitError, match="not empty"):
        write_digits_folder(digits_dir)


def test_data_digits_command(dlkit, tmp_path):
    out = dlkit.json("data", "digits", tmp_path / "d")
    assert (out["train"], out["val"]) == (1438, 359)
    assert dlkit("data", "digits", tmp_path / "d", expect=1).output.startswith("Error: ")


def test_loader_batches_do_not_depend_on_the_worker_count(tmp_path, make_folder):
    """Augmentation is drawn per sample from (seed, epoch, index): 0 or 2 workers, the same
    pixels in the same order, and the main process's generator (dropout's) is untouched."""
    root = make_folder(tmp_path / "data", per_class=6, size=(20, 20))
    pre = Preprocessing.default(3, 16)
    splits = load_splits(DataSource(None, str(root)), pre, Augmentation(rotation=20))

    def batches(workers: int) -> list[torch.Tensor]:
        loader = create_loader(splits.train, 4, train=True, seed=3, workers=workers)
        out = []
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            out += [x for x, _ in loader]
        return out

    torch.manual_seed(0)
    before = torch.get_rng_state()
    in_process = batches(0)
    assert torch.equal(torch.get_rng_state(), before)
    in_workers = batches(2)
    assert len(in_process) == len(in_workers) == 4
    for a, b in zip(in_process, in_workers, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(in_process[0], in_process[2])  # epochs differ


def test_dataset_labels_without_decoding(tmp_path, make_folder):
    root = make_folder(tmp_path / "data", per_class=3)
    (root / "dog" / "0.png").write_bytes(b"corrupt, never read")
    splits = load_splits(
        DataSource(None, str(root), val_fraction=0.34), Preprocessing.default(3, 8)
    )
    assert dataset_labels(splits.train).tolist() == [label for _, label in splits.train.samples]
    digits = load_splits(DataSource(), Preprocessing.default(1, 8))
    labels = dataset_labels(digits.val)
    assert len(labels) == 359 and labels[5] == digits.val[5][1]


@pytest.mark.parametrize("name", ["a\nb", "tab\there", "nel\x85", "line\u2028sep"])
def test_a_class_folder_named_with_a_control_character_is_named(tmp_path, make_folder, name):
    root = make_folder(tmp_path / "data", classes=("ok", name), per_class=1)
    with pytest.raises(DlkitError, match="newline or control character") as error:
        scan_image_folder(root)
    assert repr(str(root / name)) in str(error.value)


def test_a_class_folder_whose_name_is_not_utf8_is_refused_before_training(
    dlkit, tmp_path, make_folder
):
    """It trained and exported, then `package` died in UnicodeEncodeError writing labels."""
    name = os.fsdecode(b"caf\xe9")  # Latin-1 bytes, as an old archive may hold
    root = make_folder(tmp_path / "data", classes=("ok", name), per_class=2)
    with pytest.raises(DlkitError, match=r"has a name that is not UTF-8 text \(b'caf\\xe9'\)"):
        scan_image_folder(root)
    result = dlkit("train", "--data", root, "--epochs", "1", "--out", tmp_path / "run", expect=1)
    assert result.output.startswith("Error: class folder ") and "rename it" in result.output
    assert not (tmp_path / "run").exists()


def test_exif_orientation_is_applied(tmp_path, make_exif_jpegs):
    from PIL import Image

    upright, turned = make_exif_jpegs(tmp_path)
    with Image.open(turned) as stored:
        assert stored.size == (32, 48)  # stored on its side
    for channels in (1, 3):
        a, b = load_image(upright, channels), load_image(turned, channels)
        assert a.size == (48, 32) and np.array_equal(np.asarray(a), np.asarray(b))


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    levels = np.array([[0, 64, 128], [192, 255, 7]], dtype=np.uint16)
    Image.fromarray(levels * 257).save(tmp_path / "deep.png")  # 16-bit PNG, full range
    with Image.open(tmp_path / "deep.png") as stored:
        assert stored.mode.startswith("I")
    for channels in (1, 3):
        pixels = np.asarray(load_image(tmp_path / "deep.png", channels))
        gray = pixels if channels == 1 else pixels[..., 0]
        assert gray.tolist() == levels.tolist()  # 257 * v >> 8 == v


def test_a_folder_of_grayscale_images_trains_on_one_channel(tmp_path, make_shapes, make_folder):
    from toolkit.data import is_grayscale_folder
    from toolkit.training.config import TrainConfig

    gray = make_shapes(tmp_path / "gray", per_class=4)  # PNG "L" and grayscale JPEG
    colour = make_shapes(tmp_path / "colour", per_class=4, mode="RGB")
    mixed = make_folder(make_shapes(tmp_path / "mixed", per_class=4), classes=("rgb",))
    assert is_grayscale_folder(str(gray)) and not is_grayscale_folder(str(colour))
    assert not is_grayscale_folder(str(mixed))
    assert TrainConfig(data=str(gray)).resolved().channels == 1
    assert TrainConfig(data=str(colour)).resolved().channels == 3
    assert TrainConfig(data=str(gray), channels=3).resolved().channels == 3  # asked for
