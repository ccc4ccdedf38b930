"""Entry point of one torchrun worker: `python -m toolkit.training.worker JOB.json`.

The first process of each node writes the run summary beside the job file for that node's
launcher; the first process to fail with a user-facing error writes it there instead.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from toolkit.errors import DlkitError
from toolkit.training.config import TrainConfig
from toolkit.training.distributed import DistEnv
from toolkit.training.run import train


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    folder = Path(job["dir"])
    try:
        summary = train(TrainConfig.from_dict(job["config"]), resume=job["resume"])
    except DlkitError as exc:
        with contextlib.suppress(FileExistsError), open(folder / "error.txt", "x") as f:
            f.write(str(exc))
        sys.exit(1)
    if DistEnv.from_environ().local_rank == 0:
        (folder / "result.json").write_text(json.dumps(summary.to_dict()))


if __name__ == "__main__":
    main(sys.argv[1])
