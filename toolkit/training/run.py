"""`train(config)`: data, model, optimiser and Trainer wired together into one run folder."""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from toolkit import __version__
from toolkit.artifacts.checkpoint import Checkpoint, load_checkpoint, read_state_dict
from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.data import create_loader, load_splits
from toolkit.devices import resolve_device
from toolkit.errors import DlkitError
from toolkit.training.config import TrainConfig
from toolkit.training.distributed import DistEnv
from toolkit.training.losses import create_loss
from toolkit.training.models import build_model, create_model
from toolkit.training.optim import create_optimizer, create_scheduler
from toolkit.training.trainer import EarlyStopping, Trainer

# Settings that define the model and its data: a resumed run must keep them.
FIXED_ON_RESUME = (
    "model",
    "dataset",
    "data",
    "image_size",
    "channels",
    "val_fraction",
    "split_seed",
)


@dataclass
class TrainSummary:
    """What a training run did (`dlkit train --json` prints `to_dict()`)."""

    run_dir: str
    best_checkpoint: str
    last_checkpoint: str
    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    final_val_accuracy: float
    epochs_run: int
    epochs_total: int
    stopped_early: bool
    train_seconds: float
    world_size: int
    device: str
    monitor: str = "val_accuracy"
    stop_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSummary:
        return cls(**d)


def resume_config(resume: str, overrides: dict[str, Any]) -> TrainConfig:
    """The configuration stored in checkpoint `resume`, with `overrides` (options the user gave
    explicitly) applied. Changing the model or data of a run is refused. The run folder is
    never taken from the file: it is `--out`, or the folder the checkpoint is in."""
    ckpt = load_checkpoint(resume)
    if not isinstance(ckpt.state.get("config"), dict):
        raise DlkitError(f"{resume} holds no training state; it cannot be resumed")
    try:
        stored = TrainConfig.from_dict(ckpt.state["config"])
    except TypeError as exc:
        raise DlkitError(f"{resume} holds a training configuration dlkit cannot read") from exc
    stored.out = None  # a checkpoint's paths are data, not instructions
    for name in FIXED_ON_RESUME:
        if name in overrides and overrides[name] != getattr(stored, name):
            raise DlkitError(
                f"{resume} was trained with {name}={getattr(stored, name)!r}, not "
                f"{overrides[name]!r}: a run cannot be resumed with another {name}. "
                "Start a new run (with --weights to reuse the weights) instead."
            )
    return dataclasses.replace(stored, **overrides)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: TrainConfig, resume: str | None = None) -> TrainSummary:
    """Run training as `config` says (in a torchrun job when launched by one) and return a
    summary: checkpoints, best validation accuracy, epochs run."""
    env = DistEnv.from_environ()
    config = config.resolved()
    ckpt = load_checkpoint(resume) if resume else None
    device = resolve_device(config.device, env.local_rank)
    run_dir = _run_dir(config, resume)
    if env.world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(config, ckpt, device, run_dir, env)
    except torch.OutOfMemoryError as exc:
        raise DlkitError(
            f"CUDA ran out of memory at batch size {config.batch_size}; lower --batch-size "
            "(or use --amp bf16/fp16 and --channels-last)"
        ) from exc
    except KeyboardInterrupt:
        raise DlkitError(
            f"interrupted; {run_dir / 'last.pt'} holds the last finished epoch: continue with "
            f"`dlkit train --resume {run_dir / 'last.pt'}`"
        ) from None
    finally:
        if env.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _model(config: TrainConfig, ckpt: Checkpoint | None, classes: list[str]):
    """The model to train and its spec: the checkpoint's when resuming, else a new one."""
    if ckpt is not None:
        if list(ckpt.info.classes) != classes:
            raise DlkitError(
                f"{ckpt.path} was trained on classes {list(ckpt.info.classes)}, but the data "
                f"now has {classes}"
            )
        return build_model(ckpt.info.model), ckpt.info.model
    return create_model(
        config.model,
        num_classes=len(classes),
        in_channels=config.channels,
        image_size=config.image_size,
        pretrained=config.pretrained,
        weights=read_state_dict(config.weights) if config.weights else None,
        weights_source=str(config.weights),
    )


def _trainer(config: TrainConfig, model, info: ArtifactInfo, splits, device, run_dir, env):
    """Loaders, optimiser, schedule, early stopping and the Trainer, as `config` says."""
    seed_everything(config.seed + env.rank)  # augmentation differs per rank, weights do not
    pin = device.type == "cuda" if config.pin_memory is None else config.pin_memory
    loader_args = dict(seed=config.seed, workers=config.workers, pin_memory=pin)
    loader_args |= dict(rank=env.rank, world_size=env.world_size)
    train_loader = create_loader(splits.train, config.batch_size, train=True, **loader_args)
    val_loader = create_loader(splits.val, config.batch_size, **loader_args)
    optimizer = create_optimizer(
        model, config.optimizer, config.lr, config.weight_decay, config.momentum
    )
    stopping = EarlyStopping(config.monitor, config.early_stopping, config.min_delta)
    schedule = create_scheduler(
        optimizer,
        config.scheduler,
        epochs=config.epochs,
        steps_per_epoch=len(train_loader),
        warmup_epochs=config.warmup_epochs,
        monitor_mode=stopping.mode,
    )
    return Trainer(
        model=model,
        optimizer=optimizer,
        loss_fn=create_loss(config.loss, config.label_smoothing, config.focal_gamma).to(device),
        train_loader=train_loader,
        val_loader=val_loader,
        device=device,
        schedule=schedule,
        amp=config.amp,
        channels_last=config.channels_last,
        grad_clip=config.grad_clip,
        early_stopping=stopping,
        run_dir=run_dir if env.rank == 0 else None,
        checkpoint_extra={"info": info.to_dict(), "config": config.to_dict()},
        run_files={"config.json": config.to_dict()},
        quiet=config.quiet,
        rank=env.rank,
        world_size=env.world_size,
    )


def _train(
    config: TrainConfig, ckpt: Checkpoint | None, device: torch.device, run_dir: Path, env: DistEnv
) -> TrainSummary:
    seed_everything(config.seed)
    splits = load_splits(config.source, config.preprocessing, config.augmentation)
    if len(splits.train) == 0:
        raise DlkitError(f"no training images in {config.source.describe()}")
    model, spec = _model(config, ckpt, splits.classes)
    info = ArtifactInfo(
        classes=tuple(splits.classes),
        preprocessing=config.preprocessing,
        model=spec,
        source=config.source,
        dlkit_version=__version__,
    )
    trainer = _trainer(config, model, info, splits, device, run_dir, env)
    if ckpt is not None:
        trainer.load_state_dict(ckpt.state)
    start_epoch = trainer.epoch
    start = time.perf_counter()
    history = trainer.fit(config.epochs)
    stopping = trainer.early_stopping
    best = next((h for h in history if h["epoch"] == stopping.best_epoch), history[-1])
    return TrainSummary(
        run_dir=str(run_dir),
        best_checkpoint=str(run_dir / "best.pt"),
        last_checkpoint=str(run_dir / "last.pt"),
        best_epoch=stopping.best_epoch,
        best_val_accuracy=best["val_accuracy"],
        best_val_loss=best["val_loss"],
        final_val_accuracy=history[-1]["val_accuracy"],
        epochs_run=trainer.epoch - start_epoch,
        epochs_total=trainer.epoch,
        stopped_early=stopping.should_stop,
        train_seconds=time.perf_counter() - start,
        world_size=env.world_size,
        device=str(device),
        monitor=str(config.monitor),
        stop_reason=stopping.reason(trainer.epoch, config.epochs),
    )


def default_run_dir(model: str) -> Path:
    return Path("runs") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def _run_dir(config: TrainConfig, resume: str | None) -> Path:
    """The run folder; another run's checkpoints there are never overwritten."""
    if config.out:
        run_dir = Path(config.out)
    elif resume:
        run_dir = Path(resume).parent
    else:
        run_dir = default_run_dir(config.model)
    if not resume and (run_dir / "last.pt").exists():
        raise DlkitError(
            f"{run_dir} already holds a training run; continue it with --resume "
            f"{run_dir / 'last.pt'} or choose another --out"
        )
    return run_dir
