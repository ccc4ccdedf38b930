"""Distributed data parallel: reading torchrun's environment and launching workers with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import DlkitError


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environ(cls) -> DistEnv:
        env = os.environ
        return cls(
            int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))
        )


def launch(config: dict[str, Any], resume: str | None, nproc: int) -> dict[str, Any]:
    """Run `train` in `nproc` processes through PyTorch's own launcher (torchrun) and return
    rank 0's summary. gloo is used on the CPU, nccl on CUDA (chosen in each worker)."""
    with tempfile.TemporaryDirectory(prefix="dlkit-ddp-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"config": config, "resume": resume, "dir": tmp}))
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "toolkit.training.worker", str(job),
        ]  # fmt: skip
        returncode = subprocess.run(cmd).returncode
        error, result = Path(tmp) / "error.txt", Path(tmp) / "result.json"
        if error.exists():
            raise DlkitError(error.read_text())
        if returncode != 0 or not result.exists():
            raise DlkitError(
                f"distributed training with {nproc} processes failed (exit status {returncode}); "
                "the workers' messages are above"
            )
        return json.loads(result.read_text())
