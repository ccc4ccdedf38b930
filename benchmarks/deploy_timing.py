"""How long the README's main command (`dlkit deploy` on the embedded digits) takes, by stage.

    python benchmarks/deploy_timing.py [--tune-minutes N]

Runs `dlkit deploy --json` exactly as the README does, into a temporary run folder and model
repository, with an empty artifact store (as on a fresh machine: every variant is made), and
writes results/deploy_timing.{json,md}: wall time in all (process start to
exit) and the seconds of each stage, with the selected variant. Goal: under 5 minutes.
With `--tune-minutes N` it runs `dlkit deploy --tune --tune-minutes N` instead (results in
deploy_timing_tune.*), to decide whether the main job can afford to tune by default.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune-minutes", type=float, help="Time `dlkit deploy --tune` too.")
    args = parser.parse_args()
    out = Path(__file__).parent / "results"
    tune = ["--tune", "--tune-minutes", f"{args.tune_minutes:g}"] if args.tune_minutes else []
    stem = "deploy_timing_tune" if tune else "deploy_timing"
    with tempfile.TemporaryDirectory(prefix="dlkit-deploy-timing-") as tmp:
        dlkit = Path(sys.executable).parent / "dlkit"
        cmd = [str(dlkit), "deploy", "--out", f"{tmp}/run", "--repo", f"{tmp}/repo", "--json"]
        cmd += tune
        start = time.perf_counter()
        env = os.environ | {"DLKIT_STORE": f"{tmp}/store"}  # nothing made before: a fresh machine
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"dlkit deploy failed:\n{proc.stderr[-3000:]}")
        summary = json.loads(proc.stdout)
    selected = summary["selected"]
    eager = next(v for v in summary["variants"] if v["name"] == "eager-fp32")
    result = {
        "command": " ".join(["python benchmarks/deploy_timing.py", *sys.argv[1:]]),
        "runs": " ".join(["dlkit deploy --out RUN --repo REPO --json", *tune]),
        "wall_seconds": round(wall, 1),
        "stage_seconds": summary["stage_seconds"],
        "selected": {
            k: selected[k] for k in ("name", "accuracy", "accuracy_drop_points", "latency_ms")
        },
        "eager_fp32_p50_ms": eager["latency_ms"]["p50"],
        "selected_speedup_vs_eager_fp32": eager["latency_ms"]["p50"]
        / selected["latency_ms"]["p50"],
        "smoke_test": summary["smoke_test"],
        "served": summary.get("served"),
        "goal": "wall_seconds < 300",
        "passed": wall < 300,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# `dlkit deploy` on the embedded digits: time by stage (2-core CPU machine)",
        "",
        f"`{result['command']}`",
        "",
        "| stage | seconds |",
        "| --- | --- |",
        *[f"| {k} | {v:.1f} |" for k, v in result["stage_seconds"].items()],
        f"| **wall, process start to exit** | **{wall:.1f}** |",
        "",
        f"Selected {selected['name']}: accuracy {selected['accuracy']:.4f} "
        f"(drop {selected['accuracy_drop_points']:.2f} points), p50 "
        f"{selected['latency_ms']['p50']:.3f} ms vs eager fp32 "
        f"{result['eager_fp32_p50_ms']:.3f} ms "
        f"({result['selected_speedup_vs_eager_fp32']:.1f}x). Smoke test top-1 agreement "
        f"{summary['smoke_test']['top1_agreement']:.3f}. Goal under 300 s: "
        f"{'met' if result['passed'] else 'missed'}.",
    ]
    lines += _served_lines(summary.get("served"))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _served_lines(served: dict | None) -> list[str]:
    if not served:
        return []
    rows = [
        f"| {r['concurrency']} | {r['default']['throughput']:.0f} | {r['tuned']['throughput']:.0f} "
        f"| {r['default']['p99_ms']:.2f} | {r['tuned']['p99_ms']:.2f} |"
        for r in served["levels"]
    ]
    return [
        "",
        f"Tuned for {served['objective']}: {served['chosen']} ({served['trials']} trials, "
        f"search {served['stopped']}).",
        "",
        "| concurrency | default img/s | tuned img/s | default p99 ms | tuned p99 ms |",
        "| --- | --- | --- | --- | --- |",
        *rows,
    ]


if __name__ == "__main__":
    main()
