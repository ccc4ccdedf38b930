"""The Trainer and `dlkit train`: history, checkpoints, resume, determinism, DDP, bad input."""

from __future__ import annotations

import io
import json

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
def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    """4 epochs straight == 2 epochs, Ctrl-C, then --resume (cosine schedule, augmentation,
    dropout and shuffling all continue from the saved state)."""
    straight = train(TrainConfig(**SMALL, epochs=4, out=str(tmp_path / "straight")))

    from toolkit.training import trainer as trainer_module

    save = trainer_module.Trainer._save

    def save_then_interrupt(self, improved):
        save(self, improved)
        if self.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "_save", save_then_interrupt)
    with pytest.raises(DlkitError, match=r"interrupted.*--resume"):
        train(TrainConfig(**SMALL, epochs=4, out=str(tmp_path / "resumed")))
    monkeypatch.undo()
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
    assert "corrupt or unreadable image" in result.output and "cat/2.png" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r" / "last.pt").exists()


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
