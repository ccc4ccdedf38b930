"""`dlkit train`."""

from __future__ import annotations

import os

import click

from toolkit.choices import Autocast, Dataset, Device, Loss, Monitor, Optimizer, Scheduler
from toolkit.commands.output import choice, finite, json_option, print_json


@click.command()
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    help="ImageFolder root: DIR/<class>/*.png, or DIR/train and DIR/val.",
)
@click.option(
    "--dataset",
    type=choice(Dataset),
    help="An embedded dataset (the default when --data is not given).",
)
@click.option(
    "--model",
    help="smallresnet (default), simplenet, or a torchvision classifier such as resnet18.",
)
@click.option(
    "--epochs",
    type=click.IntRange(1, 100_000),
    help="Epochs in all (default 15); with --resume, the new total.",
)
@click.option(
    "--batch-size", type=click.IntRange(1, 1_000_000), help="Per-process batch size (default 64)."
)
@click.option(
    "--lr",
    type=float,
    callback=finite(0, 100, above=True),
    help="Peak learning rate (default 2e-3; 0.05 for sgd).",
)
@click.option("--optimizer", type=choice(Optimizer), help="Default adamw.")
@click.option(
    "--weight-decay",
    type=float,
    callback=finite(0, 10),
    help="Default 0.05 (not applied to biases and norms).",
)
@click.option("--scheduler", type=choice(Scheduler), help="Default cosine with warm-up.")
@click.option(
    "--warmup-epochs",
    type=float,
    callback=finite(0, 100_000),
    help="Linear warm-up for cosine (default 1).",
)
@click.option("--loss", type=choice(Loss), help="Cross entropy (default) or focal loss.")
@click.option(
    "--label-smoothing", type=float, callback=finite(0, 0.999), help="For --loss ce (default 0)."
)
@click.option(
    "--focal-gamma", type=float, callback=finite(0, 100), help="For --loss focal (default 2)."
)
@click.option(
    "--focal-alpha",
    callback=lambda ctx, param, value: _numbers(value, param, one=True),
    metavar="A|A,B,...",
    help="For --loss focal: one balance factor, or one per class (in class-folder order).",
)
@click.option(
    "--class-weights",
    callback=lambda ctx, param, value: _numbers(value, param, words=("auto", "none")),
    metavar="auto|none|A,B,...",
    help="Loss weight per class: auto (inverse frequency in the training split), none (the "
    "default) or one weight per class. For ce and focal alike.",
)
@click.option(
    "--grad-clip",
    type=float,
    callback=finite(0, 1e6, above=True),
    help="Clip the gradient norm to this value (positive).",
)
@click.option("--amp", type=choice(Autocast), help="Mixed precision: fp16 (CUDA) or bf16.")
@click.option(
    "--channels-last/--no-channels-last", default=None, help="channels_last memory format."
)
@click.option(
    "--early-stopping",
    type=click.IntRange(0, 100_000),
    metavar="PATIENCE",
    help="Stop after this many epochs without improvement (0: off).",
)
@click.option("--monitor", type=choice(Monitor), help="Metric for best.pt and early stopping.")
@click.option(
    "--min-delta",
    type=float,
    callback=finite(0, 1e6),
    help="Smallest change that counts as an improvement.",
)
@click.option(
    "--image-size",
    type=click.IntRange(8, 4096),
    help="Input size (default 32 for digits and small nets, 224 otherwise).",
)
@click.option(
    "--channels", type=click.Choice(["1", "3"]), help="1 grayscale or 3 RGB (default 1 for digits)."
)
@click.option("--augment/--no-augment", default=None, help="Train-time augmentation (default on).")
@click.option(
    "--hflip/--no-hflip", default=None, help="Random horizontal flips (default on, off for digits)."
)
@click.option(
    "--val-fraction",
    type=float,
    callback=finite(0, 1, above=True),
    help="Validation share when a folder has no val/ (default 0.2).",
)
@click.option(
    "--pretrained", is_flag=True, default=None, help="Start from torchvision's default weights."
)
@click.option("--weights", type=click.Path(dir_okay=False), help="Start from a local state dict.")
@click.option("--resume", type=click.Path(dir_okay=False), help="Continue a run from its last.pt.")
@click.option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    help="Seed for weights, shuffling and augmentation (default 0).",
)
@click.option("--device", type=choice(Device), help="Default auto.")
@click.option(
    "--workers",
    type=click.IntRange(0, 256),
    help="Loader worker processes (default: 0 for digits, min(4, cores) for image folders). "
    "Results do not depend on it.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    help="Intra-op threads per process (default: half the usable cores, at least one).",
)
@click.option(
    "--nproc",
    type=click.IntRange(1, 1024),
    default=1,
    show_default=True,
    help="Processes per machine for distributed data parallel (torchrun).",
)
@click.option(
    "--nnodes",
    type=click.IntRange(1, 10_000),
    default=1,
    show_default=True,
    help="Machines in the job; run the same command on each, with its --node-rank.",
)
@click.option(
    "--node-rank",
    type=click.IntRange(0, 9_999),
    default=0,
    show_default=True,
    help="This machine's number, 0 to nnodes-1; node 0 hosts the rendezvous and writes --out.",
)
@click.option("--master-addr", help="With --nnodes: node 0's address, the same on every node.")
@click.option(
    "--master-port",
    type=click.IntRange(1, 65535),
    help="With --nnodes: a free TCP port on node 0 for the rendezvous.",
)
@click.option(
    "--out", type=click.Path(file_okay=False), help="Run folder (default runs/<model>-<time>)."
)
@click.option("--quiet", is_flag=True, default=None, help="No progress output.")
@json_option
def train(nproc: int, resume: str | None, as_json: bool, **options) -> None:
    """Train an image classifier; with no data options, on the embedded digits.

    The run folder gets best.pt, last.pt, history.json, history.png and config.json.
    """
    from toolkit.training.config import TrainConfig
    from toolkit.training.distributed import Nodes, launch
    from toolkit.training.run import TrainSummary, default_run_dir, resume_config
    from toolkit.training.run import train as run_training

    nodes = Nodes(*(options.pop(k) for k in ("nnodes", "node_rank", "master_addr", "master_port")))
    nodes.check()
    overrides = {k: v for k, v in options.items() if v is not None}
    if "channels" in overrides:
        overrides["channels"] = int(overrides["channels"])
    config = resume_config(resume, overrides) if resume else TrainConfig(**overrides)
    if (nproc > 1 or nodes.nnodes > 1) and "WORLD_SIZE" not in os.environ:
        if not config.out and not resume:  # resumed runs write beside their checkpoint
            config.out = str(default_run_dir(config.model))
        summary = TrainSummary.from_dict(launch(config.to_dict(), resume, nproc, nodes))
    else:
        summary = run_training(config, resume=resume)
    if as_json:
        print_json(summary.to_dict())
        return
    click.echo(summary.describe())
    best = summary.best_checkpoint or "none in this run folder (see the warning above)"
    click.echo(f"best: {best}\nlast: {summary.last_checkpoint}")
    if nodes.node_rank > 0:
        click.echo("(the run folder is on node 0)")


def _numbers(value: str | None, param: click.Parameter, one: bool = False, words=()):
    """A comma-separated list of finite non-negative numbers (or one number with `one`, or one
    of `words`), parsed for the config: float, list of floats or the word."""
    if value is None or value in words:
        return value
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        numbers = []
    if not numbers or not all(0 <= v <= 1e6 for v in numbers) or not any(numbers):
        allowed = f"{', '.join(words)} or " if words else ""
        raise click.BadParameter(
            f"expected {allowed}comma-separated finite non-negative numbers, not all zero; "
            f"got {value!r}"
        )
    return numbers[0] if one and len(numbers) == 1 else numbers
