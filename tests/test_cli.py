"""The command line: fast help without torch, clean errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from toolkit.cli import COMMANDS


def test_help_of_every_command_does_not_import_torch():
    # A fresh interpreter: importing torch anywhere on this path would show in sys.modules.
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from toolkit.cli import cli, COMMANDS\n"
        "runner = CliRunner()\n"
        "calls = [['--help'], ['data', 'digits', '--help'], *[[c, '--help'] for c in COMMANDS]]\n"
        "for args in calls:\n"
        "    result = runner.invoke(cli, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "    assert 'Usage:' in result.output\n"
        "heavy = ('torch', 'torchvision', 'onnx', 'onnxruntime', 'numpy')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_top_level_help_lists_every_command(dlkit):
    text = dlkit("--help").output
    listed = [line.split()[0] for line in text.partition("Commands:")[2].splitlines() if line]
    assert listed == list(COMMANDS)


def test_version(dlkit):
    from toolkit import __version__

    assert dlkit("--version").output.strip() == f"dlkit, version {__version__}"


def test_user_error_is_one_line_without_traceback(dlkit, tmp_path):
    result = dlkit("eval", tmp_path / "missing.pt", expect=1)
    assert result.output == f"Error: model file not found: {tmp_path / 'missing.pt'}\n"


def test_a_mistake_in_the_options_exits_2_with_its_error_line(dlkit):
    """As the README says: click's usage convention, exit status 2, and an `Error:` line."""
    result = dlkit("train", "--epochs", "zero", expect=2)
    assert "Error: Invalid value for '--epochs': 'zero' is not a valid integer" in result.output
    assert "Traceback" not in result.output


HUGE = "1" + "0" * 23  # 1e23 written as an integer, which click reads as one


def _repository(root):
    """A minimal model repository (one python-backend model) for `dlkit k8s`."""
    from tritonclient.grpc import model_config_pb2 as mc

    from toolkit.triton.configs import write_config

    (root / "m" / "1").mkdir(parents=True)
    write_config(mc.ModelConfig(name="m", backend="python"), root / "m" / "config.pbtxt")
    return root


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["train", "--seed", "-1"], "--seed"),
        (["train", "--seed", "1e23"], "--seed"),
        (["train", "--seed", str(2**32)], "--seed"),
        (["train", "--warmup-epochs", "1e23"], "--warmup-epochs"),
        (["tune", "--window-seconds", "1e23"], "--window-seconds"),
        (["tune", "--concurrency", HUGE], "--concurrency"),
        (["tune", "--concurrency", "1,4,2000"], "--concurrency"),
        (["tune", "--budget-minutes", "1e23"], "--budget-minutes"),
        (["tune", "--p99-ms", "inf"], "--p99-ms"),
        (["deploy", "--bench-seconds", "1e23"], "--bench-seconds"),
        (["deploy", "--tune-minutes", "1e23"], "--tune-minutes"),
        (["deploy", "--batch-sizes", f"1,{HUGE}"], "--batch-sizes"),
        (["bench", "--max-time", "1e23"], "--max-time"),
        (["bench", "--min-time", "1e23"], "--min-time"),
        (["bench", "--url", "127.0.0.1:1", "--concurrency", HUGE], "--concurrency"),
        (["bench", "--url", "127.0.0.1:1", "--duration", "1e23"], "--duration"),
        (["predict", "--timeout", "1e23", "a.onnx", "b.png"], "--timeout"),
        (["serve", "--timeout", "1e23"], "--timeout"),
        (["export", "x.pt", "--atol", "1e23"], "--atol"),
        (["data", "digits", "out", "--val-fraction", "nan"], "--val-fraction"),
    ],
)
def test_absurd_numbers_are_refused_before_anything_runs(dlkit, args, option):
    result = dlkit(*args, expect=2)
    assert f"Error: Invalid value for '{option}'" in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replicas", HUGE], "--replicas must be from 1 to 10000"),
        (["--max-replicas", HUGE], "--max-replicas must be from 1 to 10000"),
        (["--memory", HUGE], f"--memory {HUGE} must be from 1Mi to 64Ti"),
        (["--memory", "0"], "--memory 0 must be from 1Mi to 64Ti"),
        (["--memory", "0.5"], "--memory 0.5 must be from 1Mi to 64Ti"),
        (["--cpu", "0.0001"], "--cpu 0.0001 must be from 1m to 1024 cores"),
        (["--cpu", "100000"], "--cpu 100000 must be from 1m to 1024 cores"),
        (["--cpu", "2", "--cpu-limit", "1"], "--cpu-limit 1 is less than --cpu 2"),
        (["--gpus", "1000"], "--gpus must be from 0 to 64"),
        (["--target-queue-ms", "nan"], "--target-queue-ms must be more than 0"),
        (["--target-queue-ms", "inf"], "--target-queue-ms must be more than 0"),
        (["--target-queue-ms", "1e23"], "--target-queue-ms must be more than 0"),
        (["--target-cpu", "100000"], "--target-cpu must be from 1 to 1000"),
    ],
)
def test_k8s_refuses_absurd_sizes_and_writes_nothing(dlkit, tmp_path, args, message):
    repo = _repository(tmp_path / "repo")
    result = dlkit("k8s", "--repo", repo, "--out", tmp_path / "k8s", *args, expect=1)
    assert result.output == f"Error: {result.output.removeprefix('Error: ')}"
    assert message in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "k8s").exists()


def test_progress_goes_to_stderr_and_json_keeps_it_quiet(dlkit, digits_checkpoint, tmp_path):
    plain = dlkit("export", digits_checkpoint, "--onnx", "--out", tmp_path / "a")
    assert "onnx" in plain.stdout
    quiet = dlkit("export", digits_checkpoint, "--onnx", "--out", tmp_path / "b", "--json")
    assert quiet.stderr == ""
    assert quiet.stdout.lstrip().startswith("{")


@pytest.mark.slow
def test_console_script_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "toolkit", "--help"], capture_output=True, text=True, check=True
    )
    assert "train" in out.stdout


def test_help_names_only_options_and_variants_that_exist():
    # `dlkit quantize --help` once pointed at `--autocast bf16` and a variant `eager-amp`.
    import re

    from toolkit.cli import cli
    from toolkit.variants.registry import variants

    commands = {name: cli.get_command(None, name) for name in COMMANDS}
    options = {"--help", "--version", "--verbose"}
    for command in commands.values():
        for param in command.params:
            options |= {o for o in param.opts + param.secondary_opts if o.startswith("--")}
    for name, command in commands.items():
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        text = " ".join(texts)
        for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", text):
            assert option in options, f"dlkit {name} --help mentions {option}"
        for variant in re.findall(r"`((?:eager|compile|onnx|torchscript|torch)-[a-z0-9-]+)`", text):
            assert variant in variants(), f"dlkit {name} --help mentions variant {variant}"
