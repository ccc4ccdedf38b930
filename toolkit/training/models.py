"""Model factory: small nets for small images and torchvision backbones by name.

`create_model` returns the model and the `ModelSpec` that rebuilds it (`build_model`), which is
what checkpoints store instead of pickled classes. Nothing here reads files: weights come in as
state dicts (`toolkit.artifacts.checkpoint.read_state_dict` reads them).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from toolkit.artifacts.metadata import ModelSpec
from toolkit.errors import DlkitError

SMALL_MODELS = ("simplenet", "smallresnet")
BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "efficientnet_b0")


class SimpleNet(nn.Module):
    """Linear–ReLU–Dropout–Linear over the flattened image."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualBlock(nn.Module):
    """Two 3×3 conv–BN layers with an identity (or 1×1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A residual net for small images (digits, CIFAR-sized): a stem, one stage per width
    (each after the first halves the resolution), global pooling and a linear head."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...] = (16, 32, 64),
        blocks_per_stage: int = 1,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers, channels = [], widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(ResidualBlock(channels, width, stride))
                channels = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def available_models() -> list[str]:
    """Names `create_model` accepts: the small nets, then every torchvision classifier."""
    import torchvision

    return [*SMALL_MODELS, *torchvision.models.list_models(module=torchvision.models)]


def build_model(spec: ModelSpec) -> nn.Module:
    """Rebuild a model (random weights) from its spec; a spec that cannot build one (absurd
    sizes, unknown arguments) is a DlkitError."""
    kwargs = dict(spec.kwargs)
    try:
        _check_sizes(kwargs)
        if spec.name == "simplenet":
            return SimpleNet(**kwargs)
        if spec.name == "smallresnet":
            if "widths" in kwargs:
                kwargs["widths"] = tuple(kwargs["widths"])
            return SmallResNet(**kwargs)
        model = _torchvision_model(spec.name)
        _replace_head(model, kwargs["num_classes"])
        _adapt_first_conv(model, kwargs.get("in_channels", 3))
        return model
    except (TypeError, KeyError, ValueError, RuntimeError) as exc:
        raise DlkitError(f"cannot build {spec.name} from {spec.kwargs}: {exc}") from None


MAX_CLASSES = 100_000
MAX_FEATURES = 3 * 1024 * 1024


def _check_sizes(kwargs: dict) -> None:
    """Refuse sizes no classifier has before they allocate gigabytes."""
    limits = {"num_classes": MAX_CLASSES, "in_channels": 3, "in_features": MAX_FEATURES}
    for key, limit in limits.items():
        value = kwargs.get(key)
        if value is not None and (not isinstance(value, int) or not 1 <= value <= limit):
            raise ValueError(f"{key} must be an integer from 1 to {limit}, got {value!r}")


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    pretrained: bool = False,
    weights: dict[str, torch.Tensor] | None = None,
    weights_source: str = "--weights",
    notes: list[str] | None = None,
) -> tuple[nn.Module, ModelSpec]:
    """Create a classifier by name with `num_classes` outputs for `in_channels` inputs.

    `pretrained` loads torchvision's default weights (from the torch hub cache or the network);
    `weights` is a state dict, either for the backbone as torchvision defines it or for the
    finished model (`weights_source` names it in errors). Heads are replaced for
    `num_classes`; a first conv adapted to one input channel sums the pretrained RGB filters.
    `notes`, when given, gets a line for each of these (what the run summary shows).
    """
    notes = [] if notes is None else notes
    if pretrained and weights:
        raise DlkitError("use either --pretrained or --weights, not both")
    if name == "simplenet":
        spec = ModelSpec(
            name, {"in_features": in_channels * image_size**2, "num_classes": num_classes}
        )
    elif name == "smallresnet":
        spec = ModelSpec(name, {"in_channels": in_channels, "num_classes": num_classes})
    else:
        spec = ModelSpec(name, {"num_classes": num_classes, "in_channels": in_channels})
    if name in SMALL_MODELS:
        if pretrained:
            raise DlkitError(f"{name} has no pretrained weights; use --weights PATH or no option")
        model = build_model(spec)
        if weights is not None:
            load_weights(model, weights, weights_source)
            notes.append(f"weights loaded from {weights_source}")
        return model, spec

    model = _torchvision_model(name)
    backbone = pretrained  # whether weights for torchvision's own layout were loaded
    if pretrained:
        load_weights(model, _pretrained_state_dict(name), "torchvision's default weights")
        notes.append(f"torchvision's default {name} weights loaded")
    if weights is not None and _matches(model, weights):  # backbone weights as torchvision has
        load_weights(model, weights, weights_source)
        notes.append(f"weights loaded from {weights_source} (as torchvision defines {name})")
        weights, backbone = None, True
    head = _replace_head(model, num_classes)
    if head and backbone:
        notes.append(f"classifier head replaced: {head} → {num_classes} classes, new weights")
    if _adapt_first_conv(model, in_channels) and backbone:
        how = "RGB filters summed" if in_channels == 1 else "new weights"
        notes.append(f"first convolution adapted to {in_channels} channel(s) ({how})")
    if weights is not None:  # weights of the finished model
        load_weights(model, weights, weights_source)
        notes.append(f"weights loaded from {weights_source} (the whole model, head included)")
    return model, spec


# --------------------------------------------------------------------------- torchvision parts


def _torchvision_model(name: str) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise DlkitError(
            f"unknown model {name!r}; choose from {', '.join(SMALL_MODELS + BACKBONES)} "
            "or any torchvision classifier (`torchvision.models.list_models()`)"
        )
    return torchvision.models.get_model(name, weights=None)


def _replace_head(model: nn.Module, num_classes: int) -> int | None:
    """Swap the last Linear layer (the classifier) for one with `num_classes` outputs; returns
    how many outputs the replaced one had (None: it fitted already)."""
    parent_name, attr, head = _last_module(model, nn.Linear)
    if head is None:
        raise DlkitError(f"{type(model).__name__} has no Linear classifier head to replace")
    if head.out_features == num_classes:
        return None
    setattr(model.get_submodule(parent_name), attr, nn.Linear(head.in_features, num_classes))
    return head.out_features


def _adapt_first_conv(model: nn.Module, in_channels: int) -> bool:
    """Make the first convolution take `in_channels`; grayscale sums the RGB filters.
    Returns whether it changed."""
    parent_name, attr, conv = _last_module(model, nn.Conv2d, first=True)
    if conv is None or conv.in_channels == in_channels:
        return False
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
    )
    with torch.no_grad():
        if in_channels == 1:
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(model.get_submodule(parent_name), attr, new)
    return True


def _last_module(model: nn.Module, kind: type, first: bool = False):
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, kind)]
    if not found:
        return "", "", None
    name, module = found[0] if first else found[-1]
    parent, _, attr = name.rpartition(".")
    return parent, attr, module


def _pretrained_state_dict(name: str) -> dict[str, torch.Tensor]:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except ValueError as exc:
        raise DlkitError(f"torchvision has no pretrained weights for {name}") from exc
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # urllib, socket and HTTP errors all mean "no weights here"
        raise DlkitError(
            f"could not download pretrained weights for {name} ({exc}). Without network access, "
            f"copy {weights.url} to {cached} (the torch hub cache) or pass --weights PATH"
        ) from exc


# ----------------------------------------------------------------------------- state dicts


def _matches(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(own[k].shape == v.shape for k, v in state.items())


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`; a mismatch names the missing, unexpected and misshapen keys."""
    if not _matches(model, state):
        own = model.state_dict()
        missing = sorted(own.keys() - state.keys())
        unexpected = sorted(state.keys() - own.keys())
        wrong = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if keys
        )
        raise DlkitError(f"weights from {source} do not fit {type(model).__name__} ({detail})")
    model.load_state_dict(state)
