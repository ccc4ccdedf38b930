"""Model factory: small nets, torchvision backbones, weights loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from toolkit.artifacts.checkpoint import read_state_dict
from toolkit.errors import DlkitError
from toolkit.training.models import (
    BACKBONES,
    ResidualBlock,
    SimpleNet,
    SmallResNet,
    build_model,
    create_model,
)


@pytest.mark.parametrize("name", ["simplenet", "smallresnet", *BACKBONES])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_family_builds_and_rebuilds_from_its_spec(name, channels):
    torch.manual_seed(0)
    model, spec = create_model(name, num_classes=7, in_channels=channels, image_size=32)
    x = torch.randn(2, channels, 32, 32)
    model.eval()
    assert model(x).shape == (2, 7)
    rebuilt = build_model(spec).eval()
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt(x), model(x))


def test_simplenet_and_residual_block_shapes():
    assert isinstance(create_model("simplenet", 10, 1, 8)[0], SimpleNet)
    assert isinstance(create_model("smallresnet", 10, 1)[0], SmallResNet)
    assert ResidualBlock(4, 8, stride=2)(torch.randn(1, 4, 16, 16)).shape == (1, 8, 8, 8)


def test_unknown_model_lists_choices():
    with pytest.raises(DlkitError, match=r"unknown model 'resnet1000'.*resnet18"):
        create_model("resnet1000", 10)


def test_pretrained_without_network_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.hub.set_dir(str(tmp_path / "hub"))
    with pytest.raises(
        DlkitError, match=r"could not download pretrained weights for resnet18.*--weights"
    ):
        create_model("resnet18", 10, pretrained=True)


def test_pretrained_weights_from_the_hub_cache(tmp_path):
    import torchvision

    # Put "torchvision's" weights in the cache where torch.hub looks before downloading.
    url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    reference = torchvision.models.mobilenet_v3_small()
    torch.save(reference.state_dict(), hub / "checkpoints" / Path(url).name)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    notes: list[str] = []
    try:
        model, _ = create_model(
            "mobilenet_v3_small", 4, in_channels=1, pretrained=True, notes=notes
        )
    finally:
        torch.hub.set_dir(old)
    # Backbone weights carried over; the head is new; grayscale conv sums the RGB filters.
    assert torch.equal(
        model.features[1].block[0][0].weight, reference.features[1].block[0][0].weight
    )
    assert model.classifier[-1].out_features == 4
    assert torch.allclose(
        model.features[0][0].weight, reference.features[0][0].weight.sum(1, keepdim=True)
    )
    assert notes == [  # what the run summary says
        "torchvision's default mobilenet_v3_small weights loaded",
        "classifier head replaced: 1000 → 4 classes, new weights",
        "first convolution adapted to 1 channel(s) (RGB filters summed)",
    ]


def test_weights_from_a_local_backbone_or_finished_model(tmp_path):
    import torchvision

    backbone = torchvision.models.resnet18()
    torch.save(backbone.state_dict(), tmp_path / "backbone.pt")
    notes: list[str] = []
    weights = read_state_dict(tmp_path / "backbone.pt")
    model, _ = create_model("resnet18", 3, weights=weights, weights_source="b.pt", notes=notes)
    assert torch.equal(model.layer1[0].conv1.weight, backbone.layer1[0].conv1.weight)
    assert model.fc.out_features == 3
    assert notes == [
        "weights loaded from b.pt (as torchvision defines resnet18)",
        "classifier head replaced: 1000 → 3 classes, new weights",
    ]

    torch.save(model.state_dict(), tmp_path / "finished.pt")
    notes.clear()
    weights = read_state_dict(tmp_path / "finished.pt")
    again, _ = create_model("resnet18", 3, weights=weights, weights_source="f.pt", notes=notes)
    assert torch.equal(again.fc.weight, model.fc.weight)
    assert notes == ["weights loaded from f.pt (the whole model, head included)"]
    create_model("resnet18", 3, notes=notes)
    assert len(notes) == 1  # random weights: nothing loaded, no head worth mentioning

    with pytest.raises(DlkitError, match="do not fit"):
        create_model("resnet34", 3, weights=read_state_dict(tmp_path / "finished.pt"))
    with pytest.raises(DlkitError, match="not found"):
        read_state_dict(tmp_path / "nothing.pt")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_channels": 1, "num_classes": 0}, "num_classes must be"),
        ({"in_channels": 7, "num_classes": 3}, "in_channels must be"),
        ({"in_channels": 1, "num_classes": 10**9}, "num_classes must be"),
        ({"in_channels": 1, "num_classes": 3, "bogus": 1}, "cannot build"),
    ],
)
def test_absurd_specs_are_refused_before_allocating(kwargs, message):
    from toolkit.artifacts.metadata import ModelSpec

    with pytest.raises(DlkitError, match=message):
        build_model(ModelSpec("smallresnet", kwargs))
