"""Entry point of one torchrun worker: `python -m toolkit.training.worker JOB.json`.

Rank 0 writes the run summary (or the user-facing error) beside the job file for the launcher.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from toolkit.errors import DlkitError
from toolkit.training.config import TrainConfig
from toolkit.training.distributed import DistEnv
from toolkit.training.run import train


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    rank = DistEnv.from_environ().rank
    try:
        summary = train(TrainConfig.from_dict(job["config"]), resume=job["resume"])
    except DlkitError as exc:
        if rank == 0:
            (Path(job["dir"]) / "error.txt").write_text(str(exc))
        sys.exit(1)
    if rank == 0:
        (Path(job["dir"]) / "result.json").write_text(json.dumps(summary.to_dict()))


if __name__ == "__main__":
    main(sys.argv[1])
