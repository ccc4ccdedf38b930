"""`train(config)`: data, model, optimiser and Trainer wired together into one run folder."""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit import __version__
from toolkit.artifacts.checkpoint import Checkpoint, load_checkpoint, read_state_dict
from toolkit.artifacts.metadata import ArtifactInfo, check_class_names
from toolkit.cpu import cpu_info, native_bf16
from toolkit.data import Splits, build_transform, dataset_labels, is_grayscale_folder, load_splits
from toolkit.devices import resolve_device, usable_cores
from toolkit.errors import DlkitError
from toolkit.files import remove_leftovers
from toolkit.log import logger
from toolkit.processes import sigterm_interrupts
from toolkit.training.batchnorm import needs_recompute, statistics_images
from toolkit.training.config import TrainConfig
from toolkit.training.distributed import DistEnv, join_group, leave_group
from toolkit.training.loaders import create_loader
from toolkit.training.losses import class_weights, create_loss, per_class
from toolkit.training.models import build_model, create_model
from toolkit.training.optim import create_optimizer, create_scheduler
from toolkit.training.summary import (
    TrainSummary,
    chance_loss,
    class_list,
    learned,
    startup_lines,
)
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
# Loader settings for a loader that reads the whole dataset in every process.
FULL_SET = {"rank": 0, "world_size": 1}
# Fewer optimiser steps an epoch than this, and "learnt nothing" suggests a smaller batch.
FEW_STEPS = 10


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


def default_threads(local_processes: int = 1) -> int:
    """Intra-op threads per process unless told: half the usable cores, shared among this
    machine's processes, at least one. torch's default (every core) fights whatever else runs:
    on the shared 2-core machine two threads trained 1.42x faster than one when nothing else
    ran, but 2.7x slower beside one busy process (benchmarks/results/train_threads.md)."""
    return max(1, usable_cores() // (2 * local_processes))


def default_workers(config: TrainConfig, local_processes: int = 1) -> int:
    """Loader workers unless told: none for in-memory data, which needs no decoding; image
    files decode in min(4, cores per process) workers (one decoding in the training process
    ran at a quarter of the speed of two workers)."""
    if config.data is None:
        return 0
    return min(4, max(1, usable_cores() // local_processes))


def train(config: TrainConfig, resume: str | None = None) -> TrainSummary:
    """Run training as `config` says (in a torchrun job when launched by one) and return a
    summary: checkpoints, best validation accuracy, epochs run."""
    env = DistEnv.from_environ()
    config = config.resolved()
    ckpt = load_checkpoint(resume) if resume else None
    device = resolve_device(config.device, env.local_rank)
    run_dir = _run_dir(config, resume)
    if env.local_rank == 0:
        _warn_about_amp(config.amp, device)
    if env.local_rank == 0 and run_dir.is_dir():
        remove_leftovers(run_dir)  # checkpoints half-written by a run that was killed
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads or default_threads(env.local_world_size))
    try:
        with sigterm_interrupts():  # SIGTERM stops as Ctrl-C does: last.pt kept, no temp file
            if env.world_size > 1:
                env, run_dir = join_group(env, device, run_dir)
            return _train(config, ckpt, device, run_dir, env)
    except torch.OutOfMemoryError as exc:
        raise DlkitError(
            f"CUDA ran out of memory at batch size {config.batch_size}; lower --batch-size "
            "(or use --amp bf16/fp16 and --channels-last)"
        ) from exc
    except ValueError as exc:
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        raise DlkitError(
            f"batch normalization in {config.model} cannot train on a batch of one image at "
            f"{config.image_size} px (one value per channel): raise --batch-size, or "
            "--image-size"
        ) from None
    except KeyboardInterrupt:
        last = run_dir / "last.pt"
        if not last.exists():
            raise DlkitError(
                "interrupted before the first epoch was saved; nothing was kept"
            ) from None
        raise DlkitError(
            f"interrupted; {last} holds the last finished epoch: continue with "
            f"`dlkit train --resume {last}`"
        ) from None
    finally:
        torch.set_num_threads(threads)
        leave_group()


def _warn_about_amp(amp: str, device: torch.device) -> None:
    if amp != "bf16" or device.type != "cpu":
        return
    model, flags = cpu_info()
    if not native_bf16(flags):
        logger.warning(
            "--amp bf16 on %s: this CPU has no native bf16 (AVX-512 BF16 or AMX), so bf16 is "
            "emulated and trains many times slower than fp32 (about 25x on an AVX2 machine); "
            "leave out --amp here",
            model,
        )


def _model(config: TrainConfig, ckpt: Checkpoint | None, classes: list[str], notes: list[str]):
    """The model to train and its spec: the checkpoint's when resuming, else a new one
    (`notes` gets what was loaded or replaced)."""
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
        notes=notes,
    )


def _check_classes(config: TrainConfig, classes: list[str]) -> None:
    """Refuse, before any work, data a classifier cannot be trained on."""
    if len(classes) < 2:
        raise DlkitError(
            f"{config.source.describe()} has {len(classes)} class ({', '.join(classes)}): a "
            "classifier needs at least two classes, one folder of images each"
        )
    check_class_names(classes)


def run_loss(config: TrainConfig, splits: Splits) -> tuple[torch.nn.Module, list[float] | None]:
    """The loss `config` asks for, with its class weights (`auto`: from the training split)."""
    weights = class_weights(config.class_weights, dataset_labels(splits.train), splits.classes)
    alpha = config.focal_alpha
    if isinstance(alpha, list):
        alpha = per_class(alpha, splits.classes, "--focal-alpha")
    loss_fn = create_loss(config.loss, config.label_smoothing, config.focal_gamma, weights, alpha)
    return loss_fn, weights


def _trainer(config: TrainConfig, model, info: ArtifactInfo, splits, loss_fn, device, run_dir, env):
    """Loaders, optimiser, schedule, early stopping and the Trainer, as `config` says."""
    pin = device.type == "cuda" if config.pin_memory is None else config.pin_memory
    workers = config.workers
    if workers is None:
        workers = default_workers(config, env.local_world_size)
    loader_args = dict(seed=config.seed, workers=workers, pin_memory=pin)
    loader_args |= dict(rank=env.rank, world_size=env.world_size)
    train_loader = create_loader(splits.train, config.batch_size, train=True, **loader_args)
    val_loader = create_loader(splits.val, config.batch_size, **loader_args)
    bn_loader = None
    if needs_recompute(model, len(train_loader)):
        # Every process recomputes on all training images, so all hold the same statistics.
        images = statistics_images(
            splits.train, build_transform(config.preprocessing), config.batch_size
        )
        bn_loader = create_loader(images, config.batch_size, **(loader_args | FULL_SET))
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
        loss_fn=loss_fn.to(device),
        train_loader=train_loader,
        val_loader=val_loader,
        device=device,
        schedule=schedule,
        amp=config.amp,
        channels_last=config.channels_last,
        grad_clip=config.grad_clip,
        early_stopping=stopping,
        bn_loader=bn_loader,
        run_dir=run_dir if env.writes else None,
        checkpoint_extra={"info": info.to_dict(), "config": config.to_dict()},
        run_files={"config.json": config.to_dict()},
        quiet=config.quiet,
        writer=env.writes,
        rank=env.rank,
        world_size=env.world_size,
        seed=config.seed,  # dropout differs per rank and epoch, weights do not
    )


def _train(
    config: TrainConfig, ckpt: Checkpoint | None, device: torch.device, run_dir: Path, env: DistEnv
) -> TrainSummary:
    seed_everything(config.seed)
    splits = load_splits(config.source, config.preprocessing, config.augmentation)
    if len(splits.train) == 0:
        why = f": --val-fraction {config.val_fraction:g} left none for training"
        raise DlkitError(
            f"no training images in {config.source.describe()}{why if splits.val else ''}"
        )
    _check_classes(config, splits.classes)
    loss_fn, weights = run_loss(config, splits)
    origin: list[str] = []
    model, spec = _model(config, ckpt, splits.classes, origin)
    info = ArtifactInfo(
        classes=tuple(splits.classes),
        preprocessing=config.preprocessing,
        model=spec,
        source=config.source,
        dlkit_version=__version__,
    )
    trainer = _trainer(config, model, info, splits, loss_fn, device, run_dir, env)
    if ckpt is not None:
        trainer.load_state_dict(ckpt.state)
    if env.writes and not config.quiet:
        _log_startup(config, splits, trainer, weights, run_dir, ckpt, origin)
    start_epoch = trainer.epoch
    start = time.perf_counter()
    trainer.fit(config.epochs)
    summary = _summarise(config, trainer, splits, run_dir, env)
    summary.epochs_run = trainer.epoch - start_epoch
    summary.train_seconds = time.perf_counter() - start
    summary.class_weights = weights
    return summary


def _log_startup(config, splits: Splits, trainer: Trainer, weights, run_dir, ckpt, origin) -> None:
    """What is about to happen, in one block: data, model, where it runs, loss and schedule."""
    params = sum(p.numel() for p in trainer.model.parameters())
    loss = str(config.loss)
    if config.loss == "focal":
        loss += f" (gamma {config.focal_gamma:g}, alpha {config.focal_alpha or 'none'})"
    elif config.label_smoothing:
        loss += f" (label smoothing {config.label_smoothing:g})"
    weights_text = "none" if weights is None else ", ".join(f"{w:.3g}" for w in weights)
    if isinstance(config.class_weights, str) and weights is not None:
        weights_text = f"{config.class_weights}: {weights_text}"
    processes = f" x {trainer.world_size} processes" if trainer.world_size > 1 else ""
    workers = trainer.train_loader.num_workers
    facts = {
        "data": config.source.describe(),
        "classes": class_list(splits.classes),
        "images": f"{len(splits.train)} train, {len(splits.val)} validation",
        "input": f"{config.image_size}x{config.image_size}, {_channels_fact(config)}",
        "model": f"{config.model}, {params:,} parameters",
        "weights": "; ".join(origin) or (None if ckpt else "random (no --pretrained or --weights)"),
        "device": f"{trainer.device}{processes}",
        "threads": f"{torch.get_num_threads()} intra-op, {workers} loader workers",
        "loss": loss,
        "class weights": weights_text,
        "optimiser": f"{config.optimizer}, lr {config.lr:g}, {config.scheduler} schedule",
        "epochs": f"{config.epochs} of batch {config.batch_size}, {_steps_fact(trainer)}",
        "precision": None if config.amp == "off" else f"autocast {config.amp}",
        "batch norm": _batch_norm_fact(trainer),
        "resumed": None if ckpt is None else f"{ckpt.path} after epoch {trainer.epoch}",
        "run folder": str(run_dir),
    }
    logger.info("training:\n%s", "\n".join(startup_lines(facts)))


def _channels_fact(config: TrainConfig) -> str:
    """The input channels, and why when the folder's images are all grayscale."""
    if config.data is None or not is_grayscale_folder(config.data):
        return f"{config.channels} channel(s)"
    if config.channels == 1:
        return "1 channel (every image is grayscale; --channels 3 trains on RGB)"
    return "3 channels (every image is grayscale: --channels 1 would train on one)"


def _batch_norm_fact(trainer: Trainer) -> str | None:
    if trainer.bn_loader is None:
        return None
    return (
        f"statistics recomputed on {len(trainer.bn_loader.dataset)} training images before "
        "each validation (too few steps an epoch for running averages)"
    )


def _steps_fact(trainer: Trainer) -> str:
    """Optimiser steps an epoch, and the images a dropped last partial batch leaves out."""
    loader = trainer.train_loader
    steps = len(loader)
    text = f"{steps} step{'' if steps == 1 else 's'} an epoch"
    per_process = len(loader.dataset) // trainer.world_size
    if loader.drop_last and per_process % loader.batch_size:
        left = per_process % loader.batch_size
        text += f" ({left} of {per_process} images left out of each, a different {left} each time)"
    return text


def few_steps_hint(steps: int) -> str:
    """For the "learnt nothing" warning: a run of few steps an epoch made few updates."""
    if steps >= FEW_STEPS:
        return ""
    return (
        f"; with {steps} step{'' if steps == 1 else 's'} an epoch the model was updated only a "
        "few times: a smaller --batch-size or more --epochs gives it more updates"
    )


def _summarise(config: TrainConfig, trainer: Trainer, splits: Splits, run_dir, env) -> TrainSummary:
    """The summary of a finished run; warns when the model learnt nothing."""
    history, stopping = trainer.history, trainer.early_stopping
    best = next((h for h in history if h["epoch"] == stopping.best_epoch), history[-1])
    top = max(history, key=lambda h: h["val_accuracy"])
    labels = dataset_labels(splits.val)
    chance = chance_loss(trainer.loss_fn, labels, len(splits.classes))
    beat_chance = learned(history, chance, labels)
    if not beat_chance and env.writes:
        logger.warning(
            "the model learnt nothing: its best val loss %.4f is no better than the %.4f of "
            "answering every class as equally likely, nor its accuracy than always answering "
            "the most common class. Check the images and their class folders, or train longer "
            "or with another --lr%s.",
            min(h["val_loss"] for h in history),
            chance,
            few_steps_hint(len(trainer.train_loader)),
        )
    best_checkpoint: str | None = str(run_dir / "best.pt")
    if env.writes and not (run_dir / "best.pt").exists():
        logger.warning(
            "%s has no best.pt: no epoch of this run beat the best %s of the run it resumed "
            "(%.4f at epoch %d), whose best.pt holds those weights",
            run_dir,
            config.monitor,
            stopping.best,
            stopping.best_epoch,
        )
        best_checkpoint = None
    return TrainSummary(
        run_dir=str(run_dir),
        best_checkpoint=best_checkpoint,
        last_checkpoint=str(run_dir / "last.pt"),
        best_epoch=stopping.best_epoch,
        best_val_accuracy=best["val_accuracy"],
        best_val_loss=best["val_loss"],
        final_val_accuracy=history[-1]["val_accuracy"],
        epochs_run=0,
        epochs_total=trainer.epoch,
        stopped_early=stopping.should_stop,
        train_seconds=0.0,
        world_size=env.world_size,
        device=str(trainer.device),
        monitor=str(config.monitor),
        stop_reason=stopping.reason(trainer.epoch, config.epochs),
        best_value=stopping.best,
        max_val_accuracy=top["val_accuracy"],
        max_val_accuracy_epoch=top["epoch"],
        learned=beat_chance,
        chance_val_loss=chance,
        threads=torch.get_num_threads(),
        workers=trainer.train_loader.num_workers,
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
