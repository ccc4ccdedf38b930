"""AMP training throughput of ResNet-18 (batch 128, 224×224) through dlkit's Trainer and
through a plain hand-written loop beside it, in one run.

    python benchmarks/amp_training.py                        # on a GPU: the committed result
    python benchmarks/amp_training.py --device cpu --quick   # dry run: 32×32, batch 4, 2 steps

Configurations: fp32, fp32 channels_last, AMP fp16 channels_last, AMP bf16 channels_last. The
data is synthetic and already on the device: a few fixed batches of random images and labels,
stored in the configuration's memory format, so the figures are the training step itself (no
decoding, augmentation or host-to-device copies). Both loops train their own copy of the same
initial model with the same optimizer (SGD, Nesterov momentum, `create_optimizer`) and loss.
Rounds alternate the order of the configurations and of the two loops (ABBA), so that clock
and thermal drift hit all alike; each figure is the median epoch over the rounds. One training
step of fp32 and of fp16 channels_last is profiled (torch.profiler, ops by self device time).

Goals: AMP fp16 channels_last at least 2.4x the images/s of fp32 (through the Trainer), and the
Trainer within 5% of the plain loop in every configuration. Writes amp_training.{json,md} and
amp_training_profile_<configuration>.txt.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.bench.environment import PeakMemory, describe_environment, tf32_settings
from toolkit.errors import DlkitError
from toolkit.training.models import create_model
from toolkit.training.optim import create_optimizer
from toolkit.training.trainer import Trainer

# name -> (amp, channels_last)
CONFIGS = {
    "fp32": ("off", False),
    "fp32-cl": ("off", True),
    "fp16-cl": ("fp16", True),
    "bf16-cl": ("bf16", True),
}
PROFILED = ("fp32", "fp16-cl")
AMP_SPEEDUP_TARGET = 2.4
TRAINER_OVERHEAD_LIMIT = 1.05
OPTIMIZER = {"name": "sgd", "lr": 0.01, "weight_decay": 5e-5, "momentum": 0.9}


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return create_optimizer(model, *OPTIMIZER.values())


class SyntheticLoader:
    """`steps` batches per epoch, cycling over a few fixed ones, with the `sampler.set_epoch`
    that the Trainer calls on its DataLoader."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int):
        self.batches, self.steps = batches, steps
        self.sampler = SimpleNamespace(set_epoch=lambda epoch: None)

    def __iter__(self):
        return (self.batches[i % len(self.batches)] for i in range(self.steps))

    def __len__(self) -> int:
        return self.steps


class PlainLoop:
    """The loop people write by hand: autocast, GradScaler for fp16, nothing else."""

    def __init__(self, model: nn.Module, loader: SyntheticLoader, device, amp, channels_last):
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.model = model.to(device, memory_format=self.memory_format)
        self.optimizer = sgd(model)
        self.loader, self.device = loader, device
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def epoch(self) -> float:
        """Train one epoch; the last batch's loss."""
        self.model.train()
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
            y = y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=bool(self.dtype)):
                loss = F.cross_entropy(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss.item()


@dataclass
class Pair:
    """One configuration: the Trainer and the plain loop, each with its own copy of the model."""

    name: str
    trainer: Trainer
    plain: PlainLoop
    trainer_s: list[float] = field(default_factory=list)
    plain_s: list[float] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None


def synthetic_batches(args, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    return [
        (
            torch.randn(shape, device=device, generator=generator),
            torch.randint(0, 1000, (args.batch_size,), device=device, generator=generator),
        )
        for _ in range(4)
    ]


def build(name: str, args, device: torch.device, data) -> Pair:
    """Both loops of one configuration; raises DlkitError where the device cannot run it."""
    amp, channels_last = CONFIGS[name]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    loader = SyntheticLoader([(x.contiguous(memory_format=layout), y) for x, y in data], args.steps)
    torch.manual_seed(0)
    model, _ = create_model(args.model, 1000, 3, args.image_size)
    twin = copy.deepcopy(model)
    trainer = Trainer(
        model,
        sgd(model),
        nn.CrossEntropyLoss(),
        loader,
        loader,
        device,
        amp=amp,
        channels_last=channels_last,
        quiet=True,
    )
    return Pair(name, trainer, PlainLoop(twin, loader, device, amp, channels_last))


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds `fn()` took with everything it queued on the GPU finished, and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def measure(pairs: list[Pair], rounds: int, device: torch.device) -> None:
    """A warm-up epoch of each loop (peak memory recorded), then `rounds` rounds in ABBA order."""
    for pair in pairs:
        with PeakMemory(device.type) as peak:
            pair.trainer.train_epoch()
            pair.plain.epoch()
        pair.peak_memory_bytes = peak.bytes
    for r in range(rounds):
        for pair in pairs if r % 2 == 0 else pairs[::-1]:
            loops = [("trainer", pair.trainer.train_epoch), ("plain", pair.plain.epoch)]
            for loop, run in loops if r % 2 == 0 else loops[::-1]:
                seconds, result = timed(run, device)
                getattr(pair, f"{loop}_s").append(seconds)
                pair.losses[loop] = result["train_loss"] if loop == "trainer" else result
            print(
                f"round {r + 1} {pair.name}: trainer {pair.trainer_s[-1]:.3f}s, "
                f"plain {pair.plain_s[-1]:.3f}s",
                file=sys.stderr,
                flush=True,
            )


def profile_step(pair: Pair, device: torch.device) -> str:
    """One Trainer step under torch.profiler: ops ranked by their own device (CPU) time. A
    profiler that cannot start here costs only its table, not the measurements."""
    try:
        return _profile_table(pair, device)
    except Exception as exc:
        return f"profiling failed: {type(exc).__name__}: {exc}"


def _profile_table(pair: Pair, device: torch.device) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    loader = pair.trainer.train_loader
    pair.trainer.train_loader = SyntheticLoader(loader.batches, steps=1)
    try:
        with profile(activities=activities) as prof:
            timed(pair.trainer.train_epoch, device)
    finally:
        pair.trainer.train_loader = loader
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=20)


def goal(text: str, value: float | None, target: float, at_least: bool = True) -> dict[str, Any]:
    """A ratio goal; `missed_by` is how far a missed one is from the target, as a fraction."""
    passed = value is not None and (value >= target if at_least else value <= target)
    missed_by = None if passed or value is None else abs(value - target) / target
    bound = "at least" if at_least else "at most"
    return {
        "goal": text,
        "value": value,
        "target": f"{bound} {target:g}",
        "passed": passed,
        "missed_by": missed_by,
    }


def goals(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    measured = {k: v for k, v in results.items() if "skipped" not in v}
    speedup = None
    if "fp16-cl" in measured and "fp32" in measured:
        speedup = (
            measured["fp16-cl"]["trainer_images_per_s"] / measured["fp32"]["trainer_images_per_s"]
        )
    worst = max(measured, key=lambda k: measured[k]["trainer_over_plain"], default=None)
    return [
        goal("AMP fp16 channels_last images/s over fp32 (Trainer)", speedup, AMP_SPEEDUP_TARGET),
        goal(
            f"Trainer epoch time over the plain loop's, worst configuration ({worst})",
            measured[worst]["trainer_over_plain"] if worst else None,
            TRAINER_OVERHEAD_LIMIT,
            at_least=False,
        ),
    ]


def summarize(pair: Pair, args) -> dict[str, Any]:
    images = args.batch_size * args.steps
    trainer, plain = statistics.median(pair.trainer_s), statistics.median(pair.plain_s)
    amp, channels_last = CONFIGS[pair.name]
    return {
        "amp": amp,
        "channels_last": channels_last,
        "trainer_images_per_s": images / trainer,
        "plain_images_per_s": images / plain,
        "trainer_over_plain": trainer / plain,
        "trainer_epoch_s": pair.trainer_s,
        "plain_epoch_s": pair.plain_s,
        "peak_memory_bytes": pair.peak_memory_bytes,
        "last_loss": pair.losses,
    }


def format_markdown(result: dict[str, Any]) -> str:
    env, s = result["environment"], result["settings"]
    where = env["gpu"]["name"] if env["gpu"] else f"{env['cpu']['model']} (CPU dry run)"
    versions = env["versions"]
    tf32 = ", ".join(f"{k} {v}" for k, v in (result["tf32"] or {}).items()) or "-"
    lines = [
        f"# AMP training throughput: {s['model']}, batch {s['batch_size']}, "
        f"{s['image_size']}×{s['image_size']}",
        "",
        f"`{result['command']}` on {where}; torch {versions['torch']}, "
        f"CUDA {env['gpu']['cuda'] if env['gpu'] else '-'}, python {versions['python']}; "
        f"TF32: {tf32}; cudnn.benchmark {result['cudnn_benchmark']}.",
        "",
        f"{s['data']} {s['steps']} steps per epoch, {s['rounds']} rounds after a warm-up epoch.",
        "",
        "| configuration | Trainer images/s | plain loop images/s | Trainer / plain (time) "
        "| vs fp32 (Trainer) | peak MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = result["results"].get("fp32", {}).get("trainer_images_per_s")
    for name, r in result["results"].items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | |")
            continue
        ratio = f"{r['trainer_images_per_s'] / base:.2f}x" if base else "-"
        peak = f"{r['peak_memory_bytes'] / 2**20:,.0f}" if r["peak_memory_bytes"] else "-"
        lines.append(
            f"| {name} | {r['trainer_images_per_s']:,.1f} | {r['plain_images_per_s']:,.1f} "
            f"| {r['trainer_over_plain']:.3f} | {ratio} | {peak} |"
        )
    lines += ["", "## Goals", ""]
    for g in result["goals"]:
        if g["value"] is None:
            outcome = "not measured"
        else:
            miss = "" if g["passed"] else f", {g['missed_by']:.1%} off"
            outcome = f"{g['value']:.3f} ({g['target']}): {'met' if g['passed'] else 'NOT met'}"
            outcome += miss
        lines.append(f"- {g['goal']}: {outcome}")
    for name, table in result["profiles"].items():
        lines += ["", f"## One Trainer step, {name} (torch.profiler)", "", "```", table, "```"]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results (temp with --quick)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--steps", type=int, help="training steps per epoch")
    parser.add_argument("--rounds", type=int, help="measured epochs per loop and configuration")
    args = parser.parse_args()
    quick = {"batch_size": 4, "image_size": 32, "steps": 2, "rounds": 2}
    full = {"batch_size": 128, "image_size": 224, "steps": 20, "rounds": 5}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        temp = Path(tempfile.gettempdir()) / "dlkit-amp-training-quick"
        args.out = temp if args.quick else Path(__file__).parent / "results"
    return args


def run(args) -> dict[str, Any]:
    """Build every configuration, measure, profile; the result (JSON-able)."""
    from toolkit.devices import resolve_device

    device = resolve_device(args.device)
    data = synthetic_batches(args, device)
    pairs, skipped = [], {}
    for name in CONFIGS:
        try:
            pairs.append(build(name, args, device, data))
        except DlkitError as exc:
            skipped[name] = {"skipped": str(exc)}
    measure(pairs, args.rounds, device)
    measured = {p.name: summarize(p, args) for p in pairs}
    results = {name: measured.get(name) or skipped[name] for name in CONFIGS}
    profiles = {p.name: profile_step(p, device) for p in pairs if p.name in PROFILED}
    return {
        "command": " ".join(["python benchmarks/amp_training.py", *sys.argv[1:]]),
        "environment": describe_environment(device.type),
        "tf32": tf32_settings() if device.type == "cuda" else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "settings": {
            "model": args.model,
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "steps": args.steps,
            "rounds": args.rounds,
            "optimizer": OPTIMIZER,
            "data": "Synthetic images and labels already on the device (4 fixed random "
            "batches in each configuration's memory format): no loading or host copies.",
        },
        "results": results,
        "goals": goals(results),
        "profiles": profiles,
    }


def main() -> None:
    args = parse_args()
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, table in result["profiles"].items():
        (args.out / f"amp_training_profile_{name}.txt").write_text(table + "\n")
    (args.out / "amp_training.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "amp_training.md").write_text(format_markdown(result))
    print(json.dumps({"goals": result["goals"]}, indent=2))


if __name__ == "__main__":
    main()
