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
