"""Distributed data parallel: launching workers through torchrun, on one machine or several,
and reading torchrun's environment in each worker.

One machine: `torchrun --standalone`. Several: every machine runs the same `dlkit train
--nnodes N --node-rank R --master-addr A --master-port P`; torchrun's c10d rendezvous meets at
A:P, hosted by node 0. The rendezvous numbers processes by host name, so node 0's rank is not
always 0: the process that writes the run folder is node 0's first (`DistEnv.writer`), which
`join_group` finds and whose run folder every process then reports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import DlkitError
from toolkit.files import private_folder

# How the launcher tells its workers which node they are on (torchrun's GROUP_RANK is the
# rendezvous' numbering, not the user's).
NODE_RANK_VARIABLE = "DLKIT_NODE_RANK"


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun).
    `writer` is the global rank that reports progress and writes the run folder."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int | None = None
    writer: int = 0

    @classmethod
    def from_environ(cls) -> DistEnv:
        env = os.environ
        node = env.get(NODE_RANK_VARIABLE)
        return cls(
            rank=int(env.get("RANK", 0)),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            world_size=int(env.get("WORLD_SIZE", 1)),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", 1)),
            node_rank=None if node is None else int(node),
        )

    @property
    def writes(self) -> bool:
        return self.rank == self.writer


@dataclass(frozen=True)
class Nodes:
    """Where the processes of a job run: `nnodes` machines, this one `node_rank`, meeting at
    `master_addr:master_port` (node 0's address)."""

    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    def check(self) -> None:
        """Refuse settings that cannot meet: one clear message before anything starts."""
        if self.nnodes == 1:
            if self.node_rank or self.master_addr or self.master_port:
                raise DlkitError("--node-rank, --master-addr and --master-port go with --nnodes 2+")
            return
        if not (self.master_addr and self.master_port):
            raise DlkitError(
                f"--nnodes {self.nnodes} needs --master-addr and --master-port: node 0's address "
                "and a free port there, the same on every node"
            )
        if not 0 <= self.node_rank < self.nnodes:
            raise DlkitError(
                f"--node-rank must be from 0 to {self.nnodes - 1} with --nnodes {self.nnodes}, "
                f"got {self.node_rank}"
            )

    def torchrun_args(self, nproc: int) -> list[str]:
        """torchrun's options for `nproc` processes on this node."""
        if self.nnodes == 1:
            return ["--standalone", f"--nproc-per-node={nproc}"]
        host = f"[{self.master_addr}]" if ":" in str(self.master_addr) else self.master_addr
        return [
            f"--nnodes={self.nnodes}",
            f"--nproc-per-node={nproc}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={host}:{self.master_port}",
            f"--rdzv-id=dlkit-{self.master_port}",
            # Node 0 hosts the rendezvous, whether or not its host name matches the address.
            f"--rdzv-conf=is_host={int(self.node_rank == 0)}",
        ]


def launch(
    config: dict[str, Any], resume: str | None, nproc: int, nodes: Nodes | None = None
) -> dict[str, Any]:
    """Run `train` in `nproc` processes on this node (of `nodes`) through PyTorch's own
    launcher (torchrun) and return the run's summary. gloo is used on the CPU, nccl on CUDA
    (chosen in each worker)."""
    nodes = nodes or Nodes()
    nodes.check()
    with private_folder("dlkit-ddp-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"config": config, "resume": resume, "dir": str(tmp)}))
        cmd = [
            sys.executable, "-m", "torch.distributed.run", *nodes.torchrun_args(nproc),
            "-m", "toolkit.training.worker", str(job),
        ]  # fmt: skip
        env = os.environ | {NODE_RANK_VARIABLE: str(nodes.node_rank)}
        returncode = subprocess.run(cmd, env=env).returncode
        error, result = Path(tmp) / "error.txt", Path(tmp) / "result.json"
        if error.exists():
            raise DlkitError(error.read_text())
        if returncode != 0 or not result.exists():
            where = f" on node {nodes.node_rank} of {nodes.nnodes}" if nodes.nnodes > 1 else ""
            raise DlkitError(
                f"distributed training with {nproc} processes{where} failed (exit status "
                f"{returncode}); the workers' messages are above"
            )
        return json.loads(result.read_text())


def join_group(env: DistEnv, device, run_dir: Path) -> tuple[DistEnv, Path]:
    """Join the job's process group (nccl on CUDA, gloo on the CPU) and agree on the writer
    and its run folder; returns this process's environment with `writer` set, and that folder."""
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    places: list[Any] = [None] * env.world_size
    dist.all_gather_object(places, (env.node_rank, env.local_rank))
    writer = places.index((0, 0)) if (0, 0) in places else 0
    folder = [str(run_dir)]
    dist.broadcast_object_list(folder, src=writer)
    return dataclasses.replace(env, writer=writer), Path(folder[0])


def leave_group() -> None:
    """Destroy the process group, if this process is in one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
