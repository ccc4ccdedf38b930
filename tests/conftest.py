"""Shared fixtures: a CLI runner, the digits as a real image folder, and a tiny trained run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolkit.cli import cli

# Small and fast: an MLP on 16×16 digits trains to ~90% in a couple of seconds.
TINY = ["--model", "simplenet", "--image-size", "16", "--batch-size", "128", "--quiet"]


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `cuda` need a GPU: where torch sees none they are skipped, not failed."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


class Cli:
    """Runs `dlkit ...` in-process; `json()` parses the single JSON object it prints."""

    def __init__(self):
        self.runner = CliRunner()

    def __call__(self, *args: str, expect: int | None = 0):
        result = self.runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, result.output
        return result

    def json(self, *args: str) -> dict:
        result = self(*args, "--json")
        return json.loads(result.stdout)


@pytest.fixture
def dlkit() -> Cli:
    return Cli()


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    from toolkit.data import write_digits_folder

    out = tmp_path_factory.mktemp("data") / "digits"
    write_digits_folder(out)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """A 4-epoch simplenet run on the embedded digits (its summary JSON)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return Cli().json("train", *TINY, "--epochs", "4", "--out", out)
