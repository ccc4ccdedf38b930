"""The Trainer: train and validate loops, history, early stopping, best and last checkpoints.

One loop serves every precision (autocast and GradScaler are switched, not duplicated) and every
process count (DDP is a wrapper; metrics are summed across ranks). The hot loop never calls
`.item()`: losses and hits accumulate on the device and are read once per epoch.
"""

from __future__ import annotations

import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from toolkit.artifacts.checkpoint import save_checkpoint
from toolkit.errors import DlkitError
from toolkit.files import write_json
from toolkit.log import logger
from toolkit.plots import plot_history
from toolkit.processes import interrupts_held
from toolkit.training.batchnorm import recompute_batch_norm
from toolkit.training.loaders import derived_seed
from toolkit.training.optim import Schedule

# How often (in batches) progress reads the running loss back from the device.
PROGRESS_EVERY = 10
# Without a terminal (a CI log, a file) a progress line every this many seconds of an epoch.
PROGRESS_LOG_SECONDS = 30.0
# Tells an epoch's seed from a sample's (both derive from the run's seed and the epoch).
EPOCH_STREAM = 1
# What a run folder holds (besides the `run_files` a run adds).
RUN_FILES = ("last.pt", "best.pt", "history.json", "history.png")


@dataclass
class EarlyStopping:
    """Tracks the best value of a monitored metric; `patience` > 0 also stops the run after that
    many epochs without an improvement of more than `min_delta`."""

    monitor: str = "val_accuracy"
    patience: int = 0
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    @property
    def mode(self) -> str:
        return "min" if self.monitor.endswith("loss") else "max"

    def update(self, metrics: dict[str, float], epoch: int) -> bool:
        """Record an epoch's metrics; return whether it is the best so far."""
        value = metrics[self.monitor]
        sign = -1.0 if self.mode == "min" else 1.0
        improved = self.best is None or sign * (value - self.best) > self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def reason(self, epoch: int, epochs: int) -> str:
        """Why a run ended at `epoch` of `epochs`, in words."""
        if self.should_stop:
            return (
                f"stopped early after epoch {epoch}: {self.monitor} did not improve for "
                f"{self.bad_epochs} epochs (best {self.best:.4f} at epoch {self.best_epoch})"
            )
        return f"finished {epoch} of {epochs} epochs"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]


# What a resumable checkpoint holds (see Trainer.state_dict), and the type of each.
_STATE_DICTS = ("model_state", "optimizer_state", "scaler_state", "early_stopping", "rng")
RESUME_STATE = dict.fromkeys(_STATE_DICTS, dict) | {"epoch": int, "history": list}


class Progress:
    """Progress through one epoch on stderr: a tqdm bar on a terminal; otherwise (a CI log, a
    file) a log line every PROGRESS_LOG_SECONDS, so long epochs are not silent."""

    def __init__(self, epoch: int, batches: int, enabled: bool, world_size: int = 1):
        terminal = sys.stderr.isatty()
        self.epoch, self.batches, self.world_size = epoch, batches, world_size
        self.bar = tqdm(
            total=batches,
            desc=f"epoch {epoch}",
            file=sys.stderr,
            leave=False,
            disable=not (enabled and terminal),
            unit="batch",
        )
        self.log = enabled and not terminal
        self.step = 0
        self.start = self.logged = time.perf_counter()

    def update(self, loss_sum: torch.Tensor, hits: torch.Tensor, seen: int) -> None:
        """After each batch, with the running sums (read from the device only now and then)."""
        self.step += 1
        self.bar.update()
        if self.step % PROGRESS_EVERY or (self.bar.disable and not self.log):
            return
        now = time.perf_counter()
        if self.log and now - self.logged < PROGRESS_LOG_SECONDS:
            return
        loss, acc = loss_sum.item() / seen, hits.item() / seen
        speed = seen * self.world_size / max(now - self.start, 1e-9)
        if self.log:
            self.logged = now
            logger.info(
                f"epoch {self.epoch}: batch {self.step}/{self.batches}  train_loss {loss:.4f}"
                f"  train_acc {acc:.3f}  {speed:.0f} img/s"
            )
        else:
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", img_s=f"{speed:.0f}")

    def close(self) -> None:
        self.bar.close()


@dataclass
class Trainer:
    """Fits `model` and, when `run_dir` is set, writes `last.pt`, `best.pt`, `history.json` and
    `history.png` there after every epoch (only the `writer` process reports progress and
    writes).

    With `seed`, each epoch's random draws in the training process (dropout) come from
    (seed, epoch, rank), so a resumed run continues exactly whichever process saved it.

    With `bn_loader` (training images through the evaluation transform; given for epochs of
    few steps) BatchNorm statistics are recomputed before each validation
    (`toolkit.training.batchnorm`), so validation, `best.pt` and early stopping judge the
    weights as they are.

    `checkpoint_extra` is stored in every checkpoint (the run's metadata and configuration);
    `run_files` (name -> JSON-able object) are written beside the checkpoints with them, so a
    run that fails before its first epoch leaves nothing behind; one that fails while saving
    its first epoch removes what that save wrote.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader
    device: torch.device
    schedule: Schedule | None = None
    amp: str = "off"
    channels_last: bool = False
    grad_clip: float | None = None
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    bn_loader: DataLoader | None = None  # training images to recompute BatchNorm statistics on
    run_dir: Path | None = None
    checkpoint_extra: dict[str, Any] = field(default_factory=dict)
    run_files: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False
    writer: bool = True
    rank: int = 0
    world_size: int = 1
    seed: int | None = None
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.amp == "fp16" and self.device.type != "cuda":
            raise DlkitError("--amp fp16 needs CUDA; on the CPU use --amp bf16")
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.model.to(self.device, memory_format=self.memory_format)
        self.net = self.model
        self._saved = False  # whether this Trainer has saved an epoch yet
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    # ------------------------------------------------------------------------------ loops

    def _batch(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=True)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp != "off")

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training data; returns train loss, accuracy and images/s."""
        self.net.train()
        self.train_loader.sampler.set_epoch(self.epoch)
        loss_sum = torch.zeros((), device=self.device)
        hits = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        progress = Progress(
            self.epoch + 1, len(self.train_loader), not self.quiet and self.writer, self.world_size
        )
        start = time.perf_counter()
        for batch in self.train_loader:
            x, y = self._batch(batch)
            with self._autocast():
                logits = self.net(x)
                loss = self.loss_fn(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.schedule is not None and self.schedule.interval == "step":
                self.schedule.scheduler.step()
            loss_sum += loss.detach().float() * len(y)
            hits += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            progress.update(loss_sum, hits, seen)
        progress.close()
        totals = self._all_reduce(loss_sum, hits.float(), seen)
        elapsed = time.perf_counter() - start
        return {
            "train_loss": totals[0] / totals[2],
            "train_accuracy": totals[1] / totals[2],
            "images_per_second": totals[2] / elapsed,
        }

    @torch.no_grad()
    def evaluate(self, loader: DataLoader | None = None) -> dict[str, float]:
        """Loss and accuracy over `loader` (default: the validation loader), all ranks summed."""
        loader = self.val_loader if loader is None else loader
        self.net.eval()
        loss_sum = torch.zeros((), device=self.device)
        hits = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        for batch in loader:
            x, y = self._batch(batch)
            with self._autocast():
                logits = self.model(x)
                loss = self.loss_fn(logits, y)
            loss_sum += loss.float() * len(y)
            hits += (logits.argmax(1) == y).sum()
            seen += len(y)
        loss_total, hit_total, count = self._all_reduce(loss_sum, hits.float(), seen)
        if count == 0:
            raise DlkitError("the validation split is empty; add images or raise --val-fraction")
        return {"val_loss": loss_total / count, "val_accuracy": hit_total / count}

    def _all_reduce(self, *values) -> list[float]:
        # Sums on the device and plain counts alike: one float64 tensor on the device.
        packed = torch.stack(
            [torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in values]
        )
        if self.world_size > 1:
            dist.all_reduce(packed)
        return packed.tolist()

    # ----------------------------------------------------------------------------- fitting

    def fit(self, epochs: int) -> list[dict[str, float]]:
        """Train until `epochs` epochs are done in all (counting resumed ones) or early stopping
        says stop. A Ctrl-C loses only the epoch in progress: `last.pt` holds the one before."""
        while self.epoch < epochs and not self.early_stopping.should_stop:
            if self.seed is not None:
                torch.manual_seed(derived_seed(self.seed, self.epoch, self.rank, EPOCH_STREAM))
            metrics = {"epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
            metrics |= self.train_epoch()
            if self.bn_loader is not None:
                recompute_batch_norm(
                    self.model, (self._batch(b)[0] for b in self.bn_loader), self._autocast
                )
            metrics |= self.evaluate()
            if not all(math.isfinite(metrics[k]) for k in ("train_loss", "val_loss")):
                raise DlkitError(
                    f"the loss became {metrics['train_loss']} in epoch {self.epoch + 1}; "
                    "lower --lr, add --grad-clip, or use --amp bf16 instead of fp16"
                )
            self._step_epoch_schedule(metrics)
            self.epoch += 1
            improved = self.early_stopping.update(metrics, self.epoch)
            self.history.append(metrics)
            if self.writer:
                self._report(metrics, improved)
                self._save(improved)
        if self.early_stopping.should_stop and self.writer and not self.quiet:
            logger.info(self.early_stopping.reason(self.epoch, epochs))
        return self.history

    def _step_epoch_schedule(self, metrics: dict[str, float]) -> None:
        if self.schedule is None:
            return
        if self.schedule.interval == "epoch":
            self.schedule.scheduler.step()
        elif self.schedule.interval == "metric":
            self.schedule.scheduler.step(metrics[self.early_stopping.monitor])

    def _report(self, m: dict[str, float], improved: bool) -> None:
        if self.quiet:
            return
        logger.info(
            f"epoch {m['epoch']:>3}  train_loss {m['train_loss']:.4f}"
            f"  train_acc {m['train_accuracy']:.4f}  val_loss {m['val_loss']:.4f}"
            f"  val_acc {m['val_accuracy']:.4f}  lr {m['lr']:.2e}"
            f"  {m['images_per_second']:.0f} img/s{'  *best' if improved else ''}"
        )

    # ---------------------------------------------------------------------- state and files

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this epoch ended."""
        return {
            "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.schedule.scheduler.state_dict() if self.schedule else None,
            "scaler_state": self.scaler.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": random.getstate(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (a checkpoint read from outside): checked before use, and
        whatever torch still refuses in it is one DlkitError."""
        wrong = [k for k, kind in RESUME_STATE.items() if not isinstance(state.get(k), kind)]
        if wrong:
            raise DlkitError(
                f"the checkpoint's training state lacks or garbles {', '.join(wrong)}, so it "
                "cannot be resumed; train afresh from its weights with --weights"
            )
        try:
            self._load_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise DlkitError(
                f"the checkpoint's training state is damaged ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); it cannot be resumed"
            ) from None

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        if self.schedule is not None and state.get("scheduler_state") is not None:
            self.schedule.scheduler.load_state_dict(state["scheduler_state"])
        self.scaler.load_state_dict(state["scaler_state"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(_as_random_state(rng["python"]))

    def _save(self, improved: bool) -> None:
        """Write this epoch's checkpoints and files. A failure (a full disk) is one DlkitError;
        when it is the run's first save, what that save wrote is removed again."""
        if self.run_dir is None:
            return
        names = {*RUN_FILES, *self.run_files}
        before = None if self._saved else {n for n in names if (self.run_dir / n).exists()}
        created = not self.run_dir.exists()
        try:
            with interrupts_held():  # an epoch's files are all written, or none: Ctrl-C waits
                self._write_run_files(improved)
        except (OSError, RuntimeError, DlkitError) as exc:
            reason = self._failure_reason(exc)
            last = self.run_dir / "last.pt"
            if before is None:
                raise DlkitError(
                    f"could not save epoch {self.epoch} in {self.run_dir}: {reason}. {last} holds "
                    f"the last epoch saved: continue with `dlkit train --resume {last}` once the "
                    "folder can be written"
                ) from exc
            for name in names - before:
                (self.run_dir / name).unlink(missing_ok=True)
            if created and self.run_dir.exists() and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()
            raise DlkitError(
                f"could not save the first epoch in {self.run_dir}: {reason}; nothing was kept"
            ) from exc
        self._saved = True

    def _failure_reason(self, exc: BaseException) -> str:
        """Why a save failed, in words: torch reports a full disk as "unexpected pos ...", so
        the free space is compared with what a checkpoint needs."""
        folder = self.run_dir
        while not folder.exists():
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        needed = _tensor_bytes([self.model.state_dict(), self.optimizer.state_dict()])
        if free < needed:
            return (
                f"the disk is full ({free / 1e6:.1f} MB free, a checkpoint needs "
                f"{needed / 1e6:.1f} MB)"
            )
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
        return str(exc)

    def _write_run_files(self, improved: bool) -> None:
        state = self.state_dict() | self.checkpoint_extra
        state["best_metric"] = self.early_stopping.best
        save_checkpoint(state, self.run_dir / "last.pt")
        if improved:
            save_checkpoint(state, self.run_dir / "best.pt")
        for name, content in self.run_files.items():
            write_json(self.run_dir / name, content)
        write_json(self.run_dir / "history.json", self.history)
        plot_history(self.history, self.run_dir / "history.png")


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors in nested dicts and lists."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _as_random_state(state) -> tuple:
    """`random.setstate` wants tuples; a checkpoint may hand back lists."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
