"""Stored metadata is checked once, on read, against a schema: a wrong type or value in any
field is one `Error:` line naming the field, never a traceback later; and a model must answer
one score per class name."""

from __future__ import annotations

import copy
import json

import onnx
import pytest
import torch

from toolkit.artifacts.metadata import ArtifactInfo, DataSource, parse_info
from toolkit.artifacts.onnx import METADATA_KEY
from toolkit.artifacts.torchscript import EXTRA_FILE, jit_deprecation_silenced
from toolkit.errors import DlkitError


@pytest.fixture
def stored(make_info) -> dict:
    return make_info("simplenet", 1, 16, 10, DataSource(dataset="digits")).to_dict()


def _with(stored: dict, path: str, value) -> dict:
    data = copy.deepcopy(stored)
    *parents, last = path.split(".")
    target = data
    for key in parents:
        target = target[key]
    target[last] = value
    return data


BAD = [
    ("source.data", 5, "source.data: must be text"),
    ("source.data", ["a"], "source.data: must be text"),
    ("quantization", "int8", "quantization: must be a record"),
    ("source.split_seed", -1, r"source.split_seed: must be a whole number from 0"),
    ("source.split_seed", "x", r"source.split_seed: must be a whole number"),
    ("source.split_seed", 1.5, r"source.split_seed: must be a whole number"),
    ("source.val_fraction", "0.2", "source.val_fraction: must be a number"),
    ("source.val_fraction", 1.0, "source.val_fraction: must be less than 1"),
    ("source.dataset", "imagenet", "source.dataset: must be one of digits"),
    ("source", "digits", "source: must be a record"),
    ("classes", "abcdefghij", "classes: must be a list of class names"),
    ("classes", list(range(10)), "classes: must be a list of class names"),
    ("preprocessing.image_size", True, "preprocessing.image_size: must be a whole number"),
    ("preprocessing.image_size", "16", "preprocessing.image_size: must be a whole number"),
    ("preprocessing.image_size", 5000, "preprocessing.image_size: must be a whole number"),
    ("preprocessing.crop_pct", 0.0, "preprocessing.crop_pct: must be a number from 0.05"),
    ("preprocessing.mean", "abc", "preprocessing.mean: must be a list"),
    ("preprocessing.std", [0], "preprocessing.std: must be a list of .* positive"),
    ("preprocessing", [1, 2], "preprocessing: must be a record"),
    ("model", "simplenet", "model: must be a record"),
    ("model.name", 5, "model.name: must be text"),
    ("model.kwargs", "x", "model.kwargs: must map names"),
    ("format", 5, "format: must be text"),
    ("format", "x" * 41, "format: must be text of at most 40"),
    ("precision", "int4", "precision: must be one of"),
    ("input_dtype", "int8", "input_dtype: must be one of float32"),
    ("static_batch", "8", "static_batch: must be a whole number"),
    ("static_batch", 0, "static_batch: must be a whole number from 1"),
    ("source_sha256", 5, "source_sha256: must be text"),
    ("dlkit_version", {"x": 1}, "dlkit_version: must be text"),
]


@pytest.mark.parametrize(("field", "value", "expected"), BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_each_wrong_field_is_named_when_read(stored, field, value, expected):
    with pytest.raises(DlkitError, match=expected) as caught:
        parse_info(json.dumps(_with(stored, field, value)), "m.onnx")
    assert str(caught.value).startswith("m.onnx has dlkit metadata that is not what dlkit writes")


def test_an_image_size_that_would_allocate_gigabytes_is_refused(stored):
    """4096 pixels at crop_pct 0.05: every image resized to 81920×81920 before the crop."""
    data = _with(_with(stored, "preprocessing.image_size", 4096), "preprocessing.crop_pct", 0.05)
    with pytest.raises(DlkitError, match="resizes images to 81920 pixels"):
        parse_info(data, "m.onnx")
    assert parse_info(_with(stored, "preprocessing.crop_pct", 0.875), "m").preprocessing


def test_several_problems_are_all_named_and_good_metadata_reads_back(stored):
    data = _with(_with(stored, "source.split_seed", -1), "quantization", "x")
    with pytest.raises(DlkitError, match=r"quantization: .*; source.split_seed: "):
        parse_info(data, "m.onnx")
    info = ArtifactInfo.from_dict(stored)
    assert info.to_dict() == stored


def _onnx_with(tmp_path, make_linear_onnx, stored, **changes):
    path = make_linear_onnx(tmp_path / "m.onnx")
    model = onnx.load(path)
    data = copy.deepcopy(stored) | changes
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = json.dumps(data)
    onnx.save(model, path)
    return path


def test_fewer_class_names_than_scores_is_refused_where_the_model_opens(
    dlkit, tmp_path, stored, digit_images, make_linear_onnx
):
    seven = [str(i) for i in range(7)]
    path = _onnx_with(tmp_path, make_linear_onnx, stored, classes=seven)
    for command in (["eval", path], ["predict", path, digit_images[0], "--top-k", "9"]):
        result = dlkit(*command, expect=1)
        assert result.output.startswith("Error:"), result.output
        assert "its metadata lists 7 classes" in result.output, result.output
    scripted = tmp_path / "m.torchscript.pt"
    with jit_deprecation_silenced():
        module = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10)))
        extra = {EXTRA_FILE: json.dumps(stored | {"classes": seven})}
        torch.jit.save(module, str(scripted), _extra_files=extra)
    result = dlkit("predict", scripted, digit_images[0], "--top-k", "9", expect=1)
    assert "answers shape (1, 10) for 1 images; its metadata lists 7 classes" in result.output


def test_a_checkpoint_without_weights_is_one_error(dlkit, tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path / "c.pt", "simplenet", 1, 16, 10, DataSource(dataset="digits"))
    state = torch.load(path, weights_only=True)
    del state["model_state"]
    torch.save(state, path)
    for command in (["eval", path], ["export", path, "--out", tmp_path / "e"]):
        result = dlkit(*command, expect=1)
        assert result.output.startswith("Error:") and "model_state" in result.output


@pytest.mark.slow
def test_a_checkpoint_whose_training_state_is_incomplete_is_one_error(dlkit, tiny_run, tmp_path):
    state = torch.load(tiny_run["last_checkpoint"], weights_only=True)
    for key, value in (("epoch", None), ("history", "x"), ("rng", None)):
        broken = {k: v for k, v in state.items() if k != key} | ({key: value} if value else {})
        path = tmp_path / f"no-{key}.pt"
        torch.save(broken, path)
        result = dlkit(
            "train", "--resume", path, "--epochs", "5", "--out", tmp_path / key, expect=1
        )
        assert result.output.strip().splitlines()[-1].startswith("Error:"), result.output
        assert f"lacks or garbles {key}" in result.output
    del state["model_state"]
    torch.save(state, tmp_path / "no-weights.pt")
    result = dlkit("deploy", tmp_path / "no-weights.pt", "--out", tmp_path / "d", expect=1)
    assert "without model weights (model_state)" in result.output
