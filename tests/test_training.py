"""The Trainer and `dlkit train`: history, checkpoints, resume, determinism, DDP, bad input."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from toolkit.artifacts.checkpoint import load_checkpoint, read_checkpoint_file
from toolkit.errors import DlkitError
from toolkit.training.config import TrainConfig
from toolkit.training.optim import WarmupCosine, create_optimizer, create_scheduler
from toolkit.training.run import train
from toolkit.training.trainer import EarlyStopping

SMALL = dict(model="simplenet", image_size=16, batch_size=128, quiet=True)


def weights_of(path):
    return read_checkpoint_file(path)["model_state"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_train_writes_a_complete_run_folder(tiny_run):
    from pathlib import Path

    run = Path(tiny_run["run_dir"])
    assert {p.name for p in run.iterdir()} >= {
        "best.pt",
        "last.pt",
        "history.json",
        "history.png",
        "config.json",
    }
    assert tiny_run["epochs_run"] == 4 and 0.8 < tiny_run["best_val_accuracy"] <= 1.0
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    for key in ("train_loss", "val_loss", "val_accuracy", "lr", "images_per_second"):
        assert all(isinstance(h[key], float) for h in history), key
    assert max(h["val_accuracy"] for h in history) == tiny_run["best_val_accuracy"]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt.info.classes == tuple(str(i) for i in range(10))
    assert ckpt.info.model.name == "simplenet"
    assert ckpt.info.preprocessing.input_shape == (1, 16, 16)
    for key in (
        "optimizer_state",
        "scheduler_state",
        "scaler_state",
        "early_stopping",
        "rng",
        "versions",
    ):
        assert key in ckpt.state, key
    assert ckpt.state["epoch"] == 4
    assert json.loads((run / "config.json").read_text())["image_size"] == 16
    assert tiny_run["learned"] and tiny_run["chance_val_loss"] == pytest.approx(math.log(10))
    assert tiny_run["monitor"] == "val_accuracy" and tiny_run["threads"] >= 1


@pytest.mark.slow
def test_same_seed_same_weights(tmp_path):
    a = train(TrainConfig(**SMALL, epochs=2, seed=5, out=str(tmp_path / "a")))
    b = train(TrainConfig(**SMALL, epochs=2, seed=5, out=str(tmp_path / "b")))
    c = train(TrainConfig(**SMALL, epochs=2, seed=6, out=str(tmp_path / "c")))
    assert_same_weights(weights_of(a.last_checkpoint), weights_of(b.last_checkpoint))
    assert not torch.equal(
        weights_of(a.last_checkpoint)["net.1.weight"],
        weights_of(c.last_checkpoint)["net.1.weight"],
    )


@pytest.mark.slow
def test_interrupted_run_resumes_exactly(tmp_path, interrupt_after_epoch):
    """4 epochs straight == 2 epochs, Ctrl-C, then --resume (cosine schedule, augmentation,
    dropout and shuffling all continue from the saved state)."""
    straight = train(TrainConfig(**SMALL, epochs=4, out=str(tmp_path / "straight")))

    with interrupt_after_epoch(2), pytest.raises(DlkitError, match=r"interrupted.*--resume"):
        train(TrainConfig(**SMALL, epochs=4, out=str(tmp_path / "resumed")))
    assert load_checkpoint(tmp_path / "resumed" / "last.pt").state["epoch"] == 2

    resumed = train(
        TrainConfig(**SMALL, epochs=4, out=str(tmp_path / "resumed")),
        resume=str(tmp_path / "resumed" / "last.pt"),
    )
    assert resumed.epochs_run == 2 and resumed.epochs_total == 4
    assert_same_weights(weights_of(straight.last_checkpoint), weights_of(resumed.last_checkpoint))
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


@pytest.mark.slow
def test_cli_resume_extends_a_finished_run(dlkit, tmp_path, tiny_args):
    """N epochs straight == N/2, then `--resume last.pt --epochs N`, for schedules that do not
    depend on the run length."""
    common = [*tiny_args, "--scheduler", "plateau"]
    dlkit("train", *common, "--epochs", "4", "--out", tmp_path / "straight")
    dlkit("train", *common, "--epochs", "2", "--out", tmp_path / "split")
    summary = dlkit.json(
        "train", "--resume", tmp_path / "split" / "last.pt", "--epochs", "4", "--quiet"
    )
    assert summary["epochs_run"] == 2
    assert_same_weights(
        weights_of(tmp_path / "straight" / "last.pt"), weights_of(tmp_path / "split" / "last.pt")
    )


def test_early_stopping_tracks_the_monitored_metric():
    stop = EarlyStopping("val_loss", patience=2, min_delta=0.01)
    assert stop.mode == "min"
    assert stop.update({"val_loss": 1.0}, 1)
    assert stop.update({"val_loss": 0.5}, 2)
    assert not stop.update({"val_loss": 0.495}, 3)  # within min_delta
    assert not stop.should_stop
    assert not stop.update({"val_loss": 0.6}, 4)
    assert stop.should_stop and stop.best_epoch == 2
    acc = EarlyStopping("val_accuracy")
    assert acc.update({"val_accuracy": 0.5}, 1) and not acc.update({"val_accuracy": 0.4}, 2)
    assert not acc.should_stop  # patience 0: tracks the best, never stops


@pytest.mark.slow
def test_early_stopping_ends_the_run(tmp_path):
    # A learning rate this small never improves after the first epoch.
    summary = train(
        TrainConfig(**SMALL, epochs=10, lr=1e-12, early_stopping=2, out=str(tmp_path / "r"))
    )
    assert summary.stopped_early and summary.epochs_run == 3
    assert summary.stop_reason.startswith("stopped early after epoch 3: val_accuracy did not")


@pytest.mark.parametrize("name", ["cosine", "onecycle", "step", "plateau", "none"])
def test_schedulers_step_and_round_trip(name):
    model = torch.nn.Linear(3, 2)
    opt = create_optimizer(model, "sgd", 0.1, weight_decay=1e-4)
    schedule = create_scheduler(opt, name, epochs=4, steps_per_epoch=5)
    if schedule is None:
        assert name == "none"
        return
    for _ in range(5):
        opt.step()
        if schedule.interval == "step":
            schedule.scheduler.step()
    if schedule.interval == "epoch":
        schedule.scheduler.step()
    elif schedule.interval == "metric":
        schedule.scheduler.step(0.5)
    # Resume reads it back with weights_only=True: it must be tensors and plain data.
    state = schedule.scheduler.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == state


def test_warmup_cosine_shape():
    fn = WarmupCosine(warmup_steps=10, total_steps=110)
    assert fn(0) == pytest.approx(0.1) and fn(9) == pytest.approx(1.0)
    assert fn(60) == pytest.approx(0.505) and fn(110) == pytest.approx(0.01)


def test_optimizer_skips_weight_decay_on_biases():
    opt = create_optimizer(torch.nn.Linear(3, 2), "adamw", 1e-3, weight_decay=0.1)
    decays = [(len(g["params"]), g["weight_decay"]) for g in opt.param_groups]
    assert decays == [(1, 0.1), (1, 0.0)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        dict(amp="bf16"),
        dict(channels_last=True, grad_clip=1.0, loss="focal"),
        dict(optimizer="sgd", scheduler="onecycle", label_smoothing=0.1),
    ],
)
def test_training_options_run(tmp_path, options):
    summary = train(TrainConfig(**{**SMALL, "epochs": 1, **options}, out=str(tmp_path / "r")))
    assert summary.epochs_run == 1 and summary.best_val_accuracy > 0.2


@pytest.mark.slow
def test_smallresnet_trains_on_an_image_folder(tmp_path, digits_dir, dlkit):
    summary = dlkit.json(
        "train", "--data", digits_dir, "--model", "smallresnet", "--channels", "1", "--image-size",
        "16", "--epochs", "1", "--workers", "1", "--quiet", "--out", tmp_path / "r",
    )  # fmt: skip
    assert summary["best_val_accuracy"] > 0.3
    assert load_checkpoint(summary["best_checkpoint"]).info.source.data == str(digits_dir)


@pytest.mark.slow
def test_two_process_ddp_on_cpu(dlkit, tmp_path, tiny_args):
    summary = dlkit.json(
        "train", *tiny_args, "--epochs", "2", "--nproc", "2", "--out", tmp_path / "ddp"
    )
    assert summary["world_size"] == 2 and summary["epochs_run"] == 2
    assert summary["best_val_accuracy"] > 0.5
    assert {p.name for p in (tmp_path / "ddp").iterdir()} >= {"best.pt", "last.pt", "history.json"}


# ----------------------------------------------------------------------------------- bad input


def test_cuda_without_cuda_is_refused(dlkit, tmp_path, tiny_args):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = dlkit("train", *tiny_args, "--device", "cuda", "--out", tmp_path / "r", expect=1)
    assert "CUDA is not available" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(DlkitError, match="fp16 needs CUDA"):
        train(TrainConfig(**SMALL, amp="fp16", device="cpu", out=str(tmp_path / "r")))


def test_missing_data_folder(dlkit, tmp_path):
    result = dlkit("train", "--data", tmp_path / "nope", "--out", tmp_path / "r", expect=1)
    assert result.output == f"Error: data folder not found: {tmp_path / 'nope'}\n"
    assert not (tmp_path / "r").exists()


def test_corrupt_image_in_a_worker_is_named(dlkit, tmp_path, make_folder, tiny_args):
    root = make_folder(tmp_path / "data", per_class=4, size=(16, 16))
    (root / "cat" / "2.png").write_bytes(b"not a png")
    result = dlkit(
        "train",
        "--data",
        root,
        *tiny_args,
        "--epochs",
        "1",
        "--workers",
        "1",
        "--out",
        tmp_path / "r",
        expect=1,
    )
    assert result.output.startswith("Error: corrupt or unreadable image: ")  # no class name
    assert "cat/2.png" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()  # not even config.json: a failed run leaves nothing


def test_unsafe_checkpoint_is_refused_not_executed(dlkit, tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed!",))

    path = tmp_path / "evil.pt"
    torch.save({"model_state": Payload()}, path)
    for args in (["eval", path], ["train", "--resume", path]):
        result = dlkit(*args, expect=1)
        assert "weights_only" in result.output and "executed!" not in result.output


@pytest.mark.slow
def test_resume_with_another_model_or_into_an_existing_run(dlkit, tiny_run, tmp_path, tiny_args):
    result = dlkit(
        "train", "--resume", tiny_run["last_checkpoint"], "--model", "resnet18", expect=1
    )
    assert "trained with model='simplenet'" in result.output
    result = dlkit("train", *tiny_args, "--out", tiny_run["run_dir"], expect=1)
    assert "already holds a training run" in result.output
    torch.save({"weight": torch.zeros(2)}, tmp_path / "bare.pt")
    assert (
        "not a dlkit checkpoint"
        in dlkit("train", "--resume", tmp_path / "bare.pt", expect=1).output
    )


# ------------------------------------------------------------------------- what a run reports


@pytest.fixture
def log_lines():
    """The messages dlkit logs (INFO and up) while the test runs."""
    import logging

    from toolkit.log import logger

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.parametrize(("flags", "warned"), [({"avx2"}, True), ({"avx2", "amx_bf16"}, False)])
def test_bf16_warns_on_a_cpu_without_native_bf16(dlkit, tmp_path, monkeypatch, flags, warned):
    from toolkit.training import run

    monkeypatch.setattr(run, "cpu_info", lambda: ("Some CPU", flags))
    # The warning comes first, before the data is read (here: a folder that is not there).
    result = dlkit(
        "train", "--amp", "bf16", "--data", tmp_path / "none", "--device", "cpu", expect=1
    )
    assert ("no native bf16" in result.stderr) == warned
    assert result.stderr.endswith(f"Error: data folder not found: {tmp_path / 'none'}\n")


def test_defaults_for_threads_and_workers():
    from toolkit.devices import usable_cores
    from toolkit.training.run import default_threads, default_workers

    cores = usable_cores()
    assert default_threads() == max(1, cores // 2)
    assert default_threads(local_processes=cores) == 1
    assert default_workers(TrainConfig().resolved()) == 0  # digits are in memory
    assert default_workers(TrainConfig(data="photos").resolved()) == min(4, cores)


def test_progress_without_a_terminal_is_logged(log_lines, monkeypatch):
    from toolkit.training import trainer

    monkeypatch.setattr(trainer, "PROGRESS_LOG_SECONDS", 0.0)
    progress = trainer.Progress(epoch=3, batches=25, enabled=True)
    assert progress.bar.disable  # pytest's stderr is not a terminal
    for seen in range(1, 26):
        progress.update(torch.tensor(0.5 * seen), torch.tensor(seen // 2), seen)
    progress.close()
    assert len(log_lines) == 2 and log_lines[0].startswith(
        "epoch 3: batch 10/25  train_loss 0.5000"
    )
    quiet = trainer.Progress(epoch=1, batches=25, enabled=False)
    for seen in range(1, 26):
        quiet.update(torch.tensor(1.0), torch.tensor(1), seen)
    assert len(log_lines) == 2


def summary_of(**changes):
    from toolkit.training.summary import TrainSummary

    fields = dict(
        run_dir="r", best_checkpoint="r/best.pt", last_checkpoint="r/last.pt", best_epoch=1,
        best_val_accuracy=0.2375, best_val_loss=1.9, final_val_accuracy=0.25, epochs_run=3,
        epochs_total=3, stopped_early=True, train_seconds=1.0, world_size=1, device="cpu",
        monitor="val_loss", stop_reason="stopped early after epoch 3", best_value=1.9,
        max_val_accuracy=0.275, max_val_accuracy_epoch=2,
    )  # fmt: skip
    return TrainSummary(**(fields | changes))


def test_the_summary_names_the_monitored_metric():
    text = summary_of().describe()
    assert text.startswith(
        "best checkpoint: epoch 1 of 3, by lowest val_loss 1.9000 (val accuracy 0.2375); "
        "highest val accuracy 0.2750 at epoch 2\nstopped early after epoch 3"
    )
    by_accuracy = summary_of(monitor="val_accuracy", best_value=0.275, best_epoch=2)
    by_accuracy.best_val_accuracy = 0.275
    assert by_accuracy.describe().startswith(
        "best checkpoint: epoch 2 of 3, by highest val_accuracy 0.2750 (val loss 1.9000)\n"
    )
    assert summary_of().to_dict()["monitor"] == "val_loss"


def test_chance_loss_and_learned():
    import math

    from toolkit.training.losses import create_loss
    from toolkit.training.summary import chance_loss, learned

    labels = [0, 1, 2, 3] * 25
    assert chance_loss(create_loss("ce"), labels, 4) == pytest.approx(math.log(4))
    focal = chance_loss(create_loss("focal", focal_gamma=2.0), labels, 4)
    assert focal == pytest.approx((1 - 1 / 4) ** 2 * math.log(4))
    weighted = create_loss("ce", class_weights=[1.0, 2.0, 3.0, 4.0])
    assert chance_loss(weighted, labels, 4) == pytest.approx(math.log(4))

    def epochs(*pairs):
        return [{"val_loss": loss, "val_accuracy": acc} for loss, acc in pairs]

    chance = math.log(4)
    assert not learned(epochs((chance, 0.25), (chance * 0.99, 0.27)), chance, labels)
    assert learned(epochs((chance, 0.25), (chance * 0.9, 0.3)), chance, labels)
    assert learned(epochs((chance * 1.5, 0.6)), chance, labels)  # overconfident, but right


def test_class_weights_and_focal_alpha_on_an_imbalanced_folder(tmp_path, make_folder):
    import torch.nn.functional as F

    from toolkit.data import load_splits
    from toolkit.training.run import run_loss

    root = make_folder(tmp_path / "data", classes=("a",), per_class=12, size=(8, 8))
    make_folder(root, classes=("b",), per_class=4, size=(8, 8))
    make_folder(root, classes=("c",), per_class=6, size=(8, 8))
    config = TrainConfig(data=str(root), class_weights="auto", image_size=8).resolved()
    splits = load_splits(config.source, config.preprocessing)
    counts = [sum(1 for _, y in splits.train.samples if y == c) for c in range(3)]
    assert counts == [10, 3, 5]  # a fifth of each class went to validation
    expected = [18 / (3 * n) for n in counts]
    loss_fn, weights = run_loss(config, splits)
    assert weights == pytest.approx(expected)
    logits, target = torch.randn(9, 3), torch.tensor([0, 1, 2] * 3)
    weight = torch.tensor(expected, dtype=torch.float32)
    assert torch.allclose(loss_fn(logits, target), F.cross_entropy(logits, target, weight=weight))

    focal = dataclasses.replace(config, loss="focal", focal_alpha=[0.2, 0.5, 0.3]).resolved()
    loss_fn, _ = run_loss(focal, splits)
    assert loss_fn.alpha.tolist() == pytest.approx([0.2, 0.5, 0.3])
    assert torch.equal(loss_fn.weight, weight)
    short = dataclasses.replace(focal, focal_alpha=[0.2, 0.8])
    with pytest.raises(DlkitError, match=r"--focal-alpha has 2 values for 3 classes \(a, b, c\)"):
        run_loss(short, splits)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (("cat", "dog\nfox"), r"class folder '{root}/dog\nfox' has a newline or control"),
        (("cat",), "has 1 class (cat): a classifier needs at least two classes"),
    ],
)
def test_class_folders_a_classifier_cannot_use(dlkit, tmp_path, make_folder, setup, message):
    root = make_folder(tmp_path / "data", classes=setup, per_class=3, size=(8, 8))
    result = dlkit("train", "--data", root, "--out", tmp_path / "r", expect=1)
    assert message.format(root=root) in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--lr", "nan"], "Invalid value for '--lr'"),
        (["train", "--lr", "-1"], "Invalid value for '--lr'"),
        (["train", "--lr", "inf"], "Invalid value for '--lr'"),
        (["train", "--workers", "-1"], "Invalid value for '--workers'"),
        (["train", "--threads", "0"], "Invalid value for '--threads'"),
        (["train", "--image-size", "100000"], "Invalid value for '--image-size'"),
        (["train", "--warmup-epochs", "nan"], "Invalid value for '--warmup-epochs'"),
        (["train", "--grad-clip", "-1"], "Invalid value for '--grad-clip'"),
        (["train", "--focal-alpha", "nan"], "Invalid value for '--focal-alpha'"),
        (["train", "--focal-alpha", "0.2,x"], "Invalid value for '--focal-alpha'"),
        (["train", "--class-weights", "1,-2"], "Invalid value for '--class-weights'"),
        (["train", "--class-weights", "0,0"], "Invalid value for '--class-weights'"),
        (["train", "--class-weights", "balanced"], "Invalid value for '--class-weights'"),
        (["train", "--nnodes", "2"], "--nnodes 2 needs --master-addr and --master-port"),
        (
            [
                "train",
                "--nnodes",
                "2",
                "--node-rank",
                "2",
                "--master-addr",
                "h",
                "--master-port",
                "1",
            ],
            "--node-rank must be from 0 to 1 with --nnodes 2, got 2",
        ),
        (["train", "--node-rank", "1"], "--node-rank, --master-addr and --master-port go with"),
        (["eval", "model.pt", "--batch-size", "0"], "Invalid value for '--batch-size'"),
    ],
)
def test_bad_numbers_are_one_clear_error(dlkit, tmp_path, args, message):
    out = ["--out", tmp_path / "r"] if args[0] == "train" else []
    result = dlkit(*args, *out, expect=None)
    assert result.exit_code in (1, 2), result.output  # 2: click's usage errors
    assert message in result.output and result.output.count("Error") == 1
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_config_checks_the_new_settings():
    with pytest.raises(DlkitError, match="--threads must be a number from 1"):
        TrainConfig(threads=0).resolved()
    with pytest.raises(DlkitError, match="--focal-alpha applies to --loss focal only"):
        TrainConfig(focal_alpha=0.25).resolved()
    with pytest.raises(DlkitError, match="--class-weights must be auto, none or one"):
        TrainConfig(class_weights="balanced").resolved()
    with pytest.raises(DlkitError, match="--focal-alpha takes finite non-negative"):
        TrainConfig(loss="focal", focal_alpha=float("nan")).resolved()
    assert TrainConfig(loss="focal", focal_alpha=[0.25, 0.75]).resolved().focal_alpha == [
        0.25,
        0.75,
    ]


# --------------------------------------------------------------------- slow: whole runs


def quick(*extra: str) -> list[str]:
    """`dlkit train` options for a run of seconds that logs its progress (no --quiet)."""
    return ["--model", "simplenet", "--image-size", "16", "--batch-size", "32", *extra]


@pytest.mark.slow
def test_the_worker_count_does_not_change_the_weights(tmp_path, make_folder):
    root = make_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=16, size=(20, 20))
    runs = [
        train(TrainConfig(**SMALL, data=str(root), epochs=2, workers=n, out=str(tmp_path / str(n))))
        for n in (0, 2)
    ]
    assert [r.workers for r in runs] == [0, 2]
    assert_same_weights(weights_of(runs[0].last_checkpoint), weights_of(runs[1].last_checkpoint))


@pytest.mark.slow
def test_startup_summary_threads_and_class_weights(dlkit, tmp_path, make_folder):
    root = make_folder(tmp_path / "data", classes=("a",), per_class=12, size=(8, 8))
    make_folder(root, classes=("b",), per_class=4, size=(8, 8))
    before = torch.get_num_threads()
    args = quick("--data", root, "--epochs", "1", "--threads", "2", "--class-weights", "auto")
    result = dlkit("train", *args, "--workers", "1", "--out", tmp_path / "r")
    lines = result.stderr.splitlines()
    assert lines[0] == "training:"
    for expected in (
        "classes        2 (a, b)",
        "images         13 train, 3 validation",
        "input          16x16, 3 channel(s)",
        "threads        2 intra-op, 1 loader workers",
        "loss           ce",
        "class weights  auto: 0.65, 2.17",
        f"run folder     {tmp_path / 'r'}",
    ):
        assert f"  {expected}" in lines, expected
    assert any(line.startswith("  model          simplenet, ") for line in lines)
    assert torch.get_num_threads() == before  # the run's budget does not leak
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["class_weights"], config["threads"], config["workers"]) == ("auto", 2, 1)
    assert load_checkpoint(tmp_path / "r" / "last.pt").state["config"]["class_weights"] == "auto"


@pytest.mark.slow
def test_startup_summary_names_the_weights_and_a_grayscale_folder(dlkit, tmp_path, make_shapes):
    from toolkit.training.models import create_model

    folder = make_shapes(tmp_path / "gray", per_class=10)
    model, _ = create_model("simplenet", 2, in_channels=1, image_size=16)
    torch.save(model.state_dict(), tmp_path / "start.pt")
    args = quick("--data", folder, "--epochs", "1", "--weights", tmp_path / "start.pt")
    lines = dlkit("train", *args, "--out", tmp_path / "r").stderr.splitlines()
    assert (
        "  input          16x16, 1 channel (every image is grayscale; --channels 3 trains on RGB)"
        in lines
    )
    assert f"  weights        weights loaded from {tmp_path / 'start.pt'}" in lines
    args = quick("--data", folder, "--epochs", "1", "--channels", "3", "--batch-size", "6")
    random_start = dlkit("train", *args, "--out", tmp_path / "s").stderr.splitlines()
    assert "  weights        random (no --pretrained or --weights)" in random_start
    steps = "2 steps an epoch (4 of 16 images left out of each, a different 4 each time)"
    assert f"  epochs         1 of batch 6, {steps}" in random_start
    assert any("3 channels (every image is grayscale: --channels 1" in x for x in random_start)


@pytest.mark.slow
def test_early_stopping_says_why_and_the_summary_names_the_monitor(dlkit, tmp_path):
    args = quick("--epochs", "10", "--lr", "1e-12", "--early-stopping", "2", "--min-delta", "0.01")
    result = dlkit("train", *args, "--monitor", "val_loss", "--out", tmp_path / "r")
    assert "stopped early after epoch 3: val_loss did not improve for 2 epochs" in result.stderr
    assert result.stdout.startswith("best checkpoint: epoch 1 of 3, by lowest val_loss ")
    assert "stopped early after epoch 3" in result.stdout.splitlines()[1]


@pytest.mark.slow
def test_a_model_that_learns_nothing_is_flagged(dlkit, tmp_path, make_folder):
    root = make_folder(tmp_path / "noise", per_class=10, size=(16, 16))  # random pixels
    result = dlkit("train", *quick("--data", root, "--epochs", "1", "--lr", "1e-12", "--json"),
                   "--out", tmp_path / "r")  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["learned"] is False and summary["chance_val_loss"] == pytest.approx(math.log(2))
    assert "with 1 step an epoch the model was updated only a few times" in result.stderr
    assert "the model learnt nothing" in result.stderr


@pytest.mark.slow
def test_a_full_disk_is_one_clear_error_and_leaves_no_temporary_files(dlkit, tmp_path, small_disk):
    # Too small for the first checkpoint: nothing of the run is kept.
    disk = small_disk(300_000)
    result = dlkit("train", *quick("--epochs", "2", "--quiet"), "--out", disk / "r", expect=1)
    assert result.output.startswith(f"Error: could not save the first epoch in {disk / 'r'}: ")
    assert "the disk is full" in result.output and "nothing was kept" in result.output
    assert "Traceback" not in result.output and os.listdir(disk) == []

    # Room for epoch 1 (last.pt and best.pt) but not for epoch 2's new last.pt beside them.
    dlkit("train", *quick("--epochs", "1", "--quiet"), "--out", tmp_path / "sizing")
    size = (tmp_path / "sizing" / "last.pt").stat().st_size
    disk = small_disk(int(2.5 * size))
    result = dlkit("train", *quick("--epochs", "3", "--quiet"), "--out", disk / "r", expect=1)
    assert result.output.startswith(f"Error: could not save epoch 2 in {disk / 'r'}: ")
    assert f"{disk / 'r' / 'last.pt'} holds the last epoch saved" in result.output
    assert load_checkpoint(disk / "r" / "last.pt").state["epoch"] == 1
    assert not [p.name for p in (disk / "r").iterdir() if ".tmp-" in p.name]


def file_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(folder).iterdir()}


@pytest.mark.slow
def test_resume_writes_beside_the_copy_it_resumes_never_to_the_stored_folder(
    dlkit, tiny_run, tmp_path
):
    original = file_bytes(tiny_run["run_dir"])
    (tmp_path / "copy").mkdir()
    shutil.copy(tiny_run["last_checkpoint"], tmp_path / "copy" / "last.pt")
    summary = dlkit.json("train", "--resume", tmp_path / "copy" / "last.pt", "--epochs", "5")
    assert summary["run_dir"] == str(tmp_path / "copy") and summary["epochs_total"] == 5
    assert load_checkpoint(tmp_path / "copy" / "last.pt").state["epoch"] == 5
    assert {"history.json", "config.json"} <= set(os.listdir(tmp_path / "copy"))
    # best.pt only if an epoch here beat the best of the original run; the summary says which.
    has_best = (tmp_path / "copy" / "best.pt").exists()
    assert summary["best_checkpoint"] == (str(tmp_path / "copy" / "best.pt") if has_best else None)
    assert file_bytes(tiny_run["run_dir"]) == original
    # --out wins over the checkpoint's folder.
    summary = dlkit.json("train", "--resume", tmp_path / "copy" / "last.pt", "--epochs", "6",
                         "--out", tmp_path / "elsewhere")  # fmt: skip
    assert summary["run_dir"] == str(tmp_path / "elsewhere")
    assert load_checkpoint(tmp_path / "copy" / "last.pt").state["epoch"] == 5


@pytest.mark.slow
def test_exif_turned_jpegs_train_like_upright_ones(tmp_path, make_exif_jpegs):
    upright, turned = make_exif_jpegs(tmp_path / "pictures")
    for picture in (upright, turned):
        for label in ("c0", "c1"):
            (tmp_path / picture.stem / label).mkdir(parents=True)
            for i in range(4):
                shutil.copy(picture, tmp_path / picture.stem / label / f"{i}.jpg")
    runs = [
        train(
            TrainConfig(
                **SMALL, data=str(tmp_path / name), epochs=1, out=str(tmp_path / f"r-{name}")
            )
        )
        for name in ("upright", "turned")
    ]
    assert_same_weights(weights_of(runs[0].last_checkpoint), weights_of(runs[1].last_checkpoint))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_nodes(args: list[str], *extra, timeout: float = 240) -> list[dict]:
    """Two `dlkit train --nnodes 2` processes on this machine, as two nodes would run them;
    their summaries, node 1's first. A hang fails the test after `timeout` seconds."""
    port = free_port()
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parent.parent)}
    cmd = [sys.executable, "-m", "toolkit", "train", *args, "--nnodes", "2", "--nproc", "1"]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(port), "--json", *map(str, extra)]
    nodes = []
    try:
        for rank in (1, 0):  # node 1 first: it waits for node 0 to host the rendezvous
            nodes.append(
                subprocess.Popen(
                    [*cmd, "--node-rank", str(rank)],
                    env=env,
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
        outputs = []
        for node in nodes:
            stdout, stderr = node.communicate(timeout=timeout)
            assert node.returncode == 0, stderr[-3000:]
            outputs.append(json.loads(stdout))
        return outputs
    finally:
        for node in nodes:
            node.kill()
            node.communicate()


@pytest.mark.slow
def test_two_nodes_train_and_resume_like_two_processes_on_one(dlkit, tmp_path, tiny_args):
    """1 epoch on two "nodes" (c10d rendezvous on 127.0.0.1, gloo), resumed on both for a
    second, ends with exactly the weights of 2 epochs of `--nproc 2` on one machine."""
    common = [*tiny_args, "--scheduler", "plateau"]  # a schedule that does not know the total
    dlkit.json("train", *common, "--epochs", "2", "--nproc", "2", "--out", tmp_path / "one")
    node1, node0 = launch_nodes(common, "--epochs", "1", "--out", tmp_path / "two")
    assert node0["world_size"] == node1["world_size"] == 2
    assert node0["run_dir"] == node1["run_dir"] == str(tmp_path / "two")
    assert load_checkpoint(tmp_path / "two" / "last.pt").state["epoch"] == 1

    resumed = launch_nodes(common, "--resume", tmp_path / "two" / "last.pt", "--epochs", "2")
    assert [r["run_dir"] for r in resumed] == [str(tmp_path / "two")] * 2  # beside last.pt
    assert load_checkpoint(tmp_path / "two" / "last.pt").state["epoch"] == 2
    assert_same_weights(
        weights_of(tmp_path / "one" / "last.pt"), weights_of(tmp_path / "two" / "last.pt")
    )


def test_a_validation_fraction_that_leaves_nothing_to_train_on_says_so(
    dlkit, tmp_path, make_folder
):
    root = make_folder(tmp_path / "data", per_class=3, size=(8, 8))
    result = dlkit(
        "train", "--data", root, "--val-fraction", "0.99", "--out", tmp_path / "r", expect=1
    )
    assert result.output == (
        f"Error: no training images in {root}: --val-fraction 0.99 left none for training\n"
    )


@pytest.mark.slow
def test_a_batch_of_one_that_batch_norm_cannot_take_is_one_clear_error(
    dlkit, tmp_path, make_folder
):
    root = make_folder(tmp_path / "data", per_class=3, size=(8, 8))
    args = ["--model", "resnet18", "--image-size", "8", "--batch-size", "1", "--epochs", "1"]
    result = dlkit("train", "--data", root, *args, "--out", tmp_path / "r", expect=1)
    assert "Error: batch normalization in resnet18 cannot train on a batch" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_ctrl_c_before_the_first_epoch_is_saved_keeps_nothing(dlkit, tmp_path, monkeypatch):
    from toolkit.training import trainer as trainer_module

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", interrupted)
    result = dlkit("train", "--quiet", "--out", tmp_path / "r", expect=1)
    assert (
        result.output == "Error: interrupted before the first epoch was saved; nothing was kept\n"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_sigterm_stops_training_as_ctrl_c_does_and_resume_ends_the_same(dlkit, tmp_path):
    """SIGTERM (a scheduler's stop) ended the run at once (exit -15) with last.pt and no
    best.pt; now it is handled like Ctrl-C: the epoch being saved is saved whole, and resuming
    ends with the weights of an uninterrupted run."""
    args = [*quick("--epochs", "4", "--seed", "3", "--quiet")]
    straight = dlkit.json("train", *args, "--out", tmp_path / "straight")
    out = tmp_path / "stopped"
    command = [sys.executable, "-m", "toolkit", "train", *quick("--epochs", "4", "--seed", "3")]
    lines = []
    with subprocess.Popen(
        [*command, "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    ) as process:
        for line in process.stderr:
            lines.append(line)
            if line.startswith("epoch   2"):  # epoch 1 is saved by then
                process.send_signal(signal.SIGTERM)
                break
        lines += process.stderr.readlines()
    assert process.returncode == 1, "".join(lines)
    last = out / "last.pt"
    assert lines[-1] == (
        f"Error: interrupted; {last} holds the last finished epoch: continue with "
        f"`dlkit train --resume {last}`\n"
    )
    assert {"best.pt", "last.pt"} <= {p.name for p in out.iterdir()}
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    resumed = dlkit.json("train", "--resume", last, "--quiet")
    assert resumed["epochs_total"] == 4
    assert_same_weights(
        weights_of(straight["last_checkpoint"]), weights_of(resumed["last_checkpoint"])
    )


def test_a_signal_while_an_epoch_is_saved_waits_for_the_save():
    from toolkit.processes import interrupts_held, sigterm_interrupts

    written = []
    with sigterm_interrupts():
        with pytest.raises(KeyboardInterrupt), interrupts_held():
            os.kill(os.getpid(), signal.SIGTERM)
            written.append("last.pt")  # still runs: the signal waits
            written.append("best.pt")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted long before
    assert written == ["last.pt", "best.pt"]


@pytest.mark.slow
def test_a_resumed_run_removes_what_a_killed_one_half_wrote(dlkit, tmp_path):
    """SIGKILL leaves `.best.pt.tmp-PID` behind; the next run in that folder removes those of
    dead processes (and keeps those of live ones)."""
    dlkit("train", *quick("--epochs", "1", "--quiet"), "--out", tmp_path / "r")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / "r" / f".best.pt.tmp-{gone.pid}"
    dead.write_bytes(b"half a checkpoint")
    live = tmp_path / "r" / f".last.pt.tmp-{os.getppid()}"
    live.write_bytes(b"another writer's")
    dlkit("train", "--resume", tmp_path / "r" / "last.pt", "--epochs", "2", "--quiet")
    assert not dead.exists() and live.exists()
