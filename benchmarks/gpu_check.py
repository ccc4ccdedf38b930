"""The Python half of benchmarks/gpu_check.sh: what the machine has, the out-of-memory check and
the summary. Each writes into the check's folder.

    python benchmarks/gpu_check.py environment DIR      # environment.json: versions, GPU, imports
    python benchmarks/gpu_check.py oom DIR --device cuda
    python benchmarks/gpu_check.py summary DIR          # summary.{txt,md,json} from steps.tsv
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Packages dlkit imports somewhere; the GPU machine lacks some of them (tritonclient, torchao).
PACKAGES = ("tritonclient", "torchao", "pytriton", "onnxruntime", "onnx", "onnxscript")
PACKAGES += ("torchvision", "numpy", "matplotlib", "sklearn", "PIL", "click", "tqdm")
OOM_BATCH_SIZE, OOM_CAP_MIB = 1024, 256


def package_state(name: str) -> str:
    """The package's version, or why it cannot be imported."""
    from importlib.metadata import packages_distributions, version

    try:
        importlib.import_module(name)
    except Exception as exc:  # a broken install counts as missing, with its reason
        return f"missing ({type(exc).__name__}: {exc})"
    distributions = packages_distributions().get(name)
    return version(distributions[0]) if distributions else "installed"


def toolkit_imports() -> dict[str, str]:
    """Every toolkit module: "ok", or the error importing it raises on this machine."""
    import toolkit

    results = {}
    for module in pkgutil.walk_packages(toolkit.__path__, "toolkit.", onerror=lambda name: None):
        if module.name.startswith("toolkit.triton.backend"):
            continue  # python-backend models: they import Triton's own utilities, only there
        try:
            importlib.import_module(module.name)
            results[module.name] = "ok"
        except Exception as exc:
            results[module.name] = f"{type(exc).__name__}: {exc}"
    return results


def python_state() -> dict[str, str]:
    """Which Python runs the check (the carried wheels' venv, or the machine's), and whether
    its libpython is there (the pip tritonserver's python stub needs it)."""
    import sysconfig

    folder, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    lib = Path(folder or "") / (name or "")
    return {
        "executable": sys.executable,
        "prefix": sys.prefix,
        "libpython": str(lib) if lib.is_file() else f"missing ({lib})",
    }


def environment(folder: Path) -> dict[str, Any]:
    import torch

    from toolkit.artifacts.onnx import gpu_providers
    from toolkit.bench.environment import describe_environment

    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = describe_environment(device)
    result["packages"] = {name: package_state(name) for name in PACKAGES}
    result["onnxruntime_gpu_providers"] = gpu_providers(tensorrt=True)
    result["python"] = python_state()
    result["toolkit_imports"] = toolkit_imports()
    (folder / "environment.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------- out of memory


def oom_child(cap_mib: int, simulate: bool, argv: list[str]) -> None:
    """Run `dlkit ARGV` in this process with at most `cap_mib` MiB of GPU memory. `simulate`
    (a dry run on a CPU) makes the first forward pass raise what CUDA would raise instead."""
    import torch

    from toolkit.cli import main

    if simulate:

        def out_of_memory(module, inputs):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated on the CPU)")

        torch.nn.modules.module.register_module_forward_pre_hook(out_of_memory)
    else:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(cap_mib * 2**20 / total)
    sys.argv = ["dlkit", *argv]
    main()


def oom_check(folder: Path, device: str, timeout: float = 120) -> dict[str, Any]:
    """`dlkit train` at a batch size that cannot fit under a memory cap must end in one line
    naming the batch size and what to try, with exit status 1 and no traceback."""
    args = ["train", "--device", device, "--model", "smallresnet", "--image-size", "128"]
    args += ["--batch-size", str(OOM_BATCH_SIZE), "--epochs", "1", "--quiet"]
    args += ["--out", str(folder / "oom_run")]
    child = [sys.executable, __file__, "oom-child", "--cap-mib", str(OOM_CAP_MIB)]
    child += ["--simulate"] * (device != "cuda") + ["--", *args]
    proc = subprocess.run(child, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    checks = {
        "exit status 1": proc.returncode == 1,
        "ends in one line starting 'Error: '": message.startswith("Error: ")
        and sum(line.startswith("Error") for line in lines) == 1,
        f"names batch size {OOM_BATCH_SIZE}": f"batch size {OOM_BATCH_SIZE}" in message,
        "says what to try (--batch-size)": "--batch-size" in message,
        "no traceback": "Traceback" not in output,
    }
    result = {
        "command": f"dlkit {' '.join(args)}",
        "memory": "simulated out-of-memory error (CPU dry run)"
        if device != "cuda"
        else f"GPU memory capped at {OOM_CAP_MIB} MiB (set_per_process_memory_fraction)",
        "simulated": device != "cuda",
        "exit_status": proc.returncode,
        "message": message,
        "other_output_lines": lines[:-1][-20:],
        "checks": checks,
        "passed": all(checks.values()),
    }
    (folder / "oom_check.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------------- summary


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def last_log_line(folder: Path, step: str) -> str:
    path = folder / "logs" / f"{step}.log"
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    lines = [line.strip() for line in lines if line.strip()]
    return lines[-1] if lines else "(empty log)"


def environment_note(folder: Path) -> str:
    env = read_json(folder / "environment.json")
    gpu = env["gpu"]
    where = f"{gpu['name']}, CUDA {gpu['cuda']}" if gpu else "no GPU"
    missing = [name for name, state in env["packages"].items() if state.startswith("missing")]
    broken = [name for name, state in env["toolkit_imports"].items() if state != "ok"]
    return (
        f"{where}, torch {env['versions']['torch']}, numpy {env['versions']['numpy']}; "
        f"missing: {', '.join(missing) or 'none'}; cannot import: "
        f"{', '.join(b.removeprefix('toolkit.') for b in broken) or 'nothing'}"
    )


def train_note(folder: Path) -> str:
    s = read_json(folder / "train.json")
    return (
        f"best val accuracy {s['best_val_accuracy']:.4f} (epoch {s['best_epoch']}), "
        f"{s['epochs_run']} epochs in {s['train_seconds']:.1f}s on {s['device']}"
    )


def eval_note(folder: Path) -> str:
    r = read_json(folder / "eval_cpu.json")
    return f"accuracy {r['accuracy']:.4f} on {r['num_samples']} images, CPU with CUDA hidden"


def oom_note(folder: Path) -> str:
    r = read_json(folder / "oom_check.json")
    failed = [name for name, ok in r["checks"].items() if not ok]
    verdict = "checks passed" if r["passed"] else f"FAILED: {', '.join(failed)}"
    return f"{verdict}{' (simulated)' if r['simulated'] else ''}: {r['message']}"


def goals_note(path: Path) -> str:
    goals = read_json(path)["goals"]
    return "; ".join(
        f"{g['value']:.2f} {'met' if g['passed'] else 'NOT met'}"
        if g["value"] is not None
        else "not measured"
        for g in goals
    )


def serving_note(folder: Path) -> str:
    r = read_json(folder / "serving" / "gpu_serving.json")
    top = max(r["served"], key=lambda level: level["throughput"])
    tuned = r.get("tune")
    changes = ", ".join(tuned["changes"]) if tuned else "not run"
    return (
        f"served {top['throughput']:.0f} images/s at concurrency {top['concurrency']} "
        f"(p99 {top['latency_ms']['p99']:.2f} ms), {r['goals'][0]['value']:.0%} of the in-process "
        f"{r['ceiling']['best']:.0f}; tune changed: {changes or 'nothing'}"
    )


def deploy_note(folder: Path) -> str:
    report = read_json(folder / "deploy" / "report.json")
    if report.get("error"):
        return f"stopped at '{report['failed_stage']}': {report['error']}"
    return f"selected {report['selected']['name']}; packaged {len(report['packaged'])} models"


GOAL_FILES = (
    "cuda_variants/cuda_variants.json",
    "serving/gpu_serving.json",
    "amp_training/amp_training.json",
)
NOTES: dict[str, Callable[[Path], str]] = {
    "environment": environment_note,
    "train": train_note,
    "eval_cpu": eval_note,
    "oom": oom_note,
    "amp_training": lambda f: goals_note(f / "amp_training" / "amp_training.json"),
    "cuda_variants": lambda f: goals_note(f / "cuda_variants" / "cuda_variants.json"),
    "deploy": deploy_note,
    "serving": serving_note,
}


def goal_lines(folder: Path) -> list[str]:
    """The headline ratios: every goal of the benchmarks, met or by how much missed."""
    lines = []
    for path in GOAL_FILES:
        for g in (read_json(folder / path) or {}).get("goals", []):
            target = g["target"] if isinstance(g["target"], str) else f"at least {g['target']:g}"
            if g["value"] is None:
                lines.append(f"{g['goal']}: not measured (target {target})")
                continue
            verdict = "met" if g["passed"] else f"NOT met, missed by {g['missed_by']:.1%}"
            lines.append(f"{g['goal']}: {g['value']:.2f} (target {target}): {verdict}")
    return lines or ["no benchmark goals were measured"]


def step_note(folder: Path, name: str, status: str) -> str:
    """What a step found, from its result file; for a failure also its log's last line."""
    if status == "not run":
        return "the time budget was spent before this step"
    try:
        note = NOTES[name](folder)
    except Exception:  # no result file (the step failed early): its log says why
        return last_log_line(folder, name)
    return note if status == "ok" else f"{note} | log: {last_log_line(folder, name)}"


def summary(folder: Path) -> str:
    """summary.{txt,md,json} from steps.tsv and the results; returns the text."""
    steps = []
    for line in (folder / "steps.tsv").read_text().splitlines():
        name, status, seconds, exit_status = line.split("\t")
        note = step_note(folder, name, status)
        if status == "failed":
            status = f"failed {exit_status}"
        steps.append({"step": name, "status": status, "seconds": seconds, "note": note})
    width = max(len(s["step"]) for s in steps)
    rows = [f"{'step':<{width}}  {'status':<9}  {'s':>6}  note"]
    rows += [
        f"{s['step']:<{width}}  {s['status']:<9}  {s['seconds']:>6}  {s['note'][:160]}"
        for s in steps
    ]
    rows.append(f"{'all':<{width}}  {'':<9}  {sum(float(s['seconds']) for s in steps):>6.1f}")
    goals = goal_lines(folder)
    text = "\n".join([*rows, "", "headline ratios:", *[f"  {g}" for g in goals]]) + "\n"
    (folder / "summary.txt").write_text(text)
    (folder / "summary.md").write_text(f"# GPU check\n\n```\n{text}```\n")
    (folder / "summary.json").write_text(json.dumps({"steps": steps, "goals": goals}, indent=2))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("environment", "oom", "summary"):
        sub = commands.add_parser(name)
        sub.add_argument("folder", type=Path)
        if name == "oom":
            sub.add_argument("--device", default="cuda")
    child = commands.add_parser("oom-child", help=argparse.SUPPRESS)
    child.add_argument("--cap-mib", type=int, required=True)
    child.add_argument("--simulate", action="store_true")
    child.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command == "environment":
        env = environment(args.folder)
        print(json.dumps({k: env[k] for k in ("gpu", "versions", "packages")}, indent=2))
    elif args.command == "oom":
        result = oom_check(args.folder, args.device)
        print(json.dumps(result, indent=2))
        sys.exit(0 if result["passed"] else 1)
    elif args.command == "summary":
        summary(args.folder)
    else:
        oom_child(args.cap_mib, args.simulate, [a for a in args.argv if a != "--"])


if __name__ == "__main__":
    main()
