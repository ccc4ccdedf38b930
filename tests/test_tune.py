"""`dlkit tune`: the search's decisions on made-up measurements (fast, no server), then real
tuning runs on a tiny digits model served by a pip-installed tritonserver (loopback, bounded
budgets and windows)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolkit.bench.load import ServingLevel
from toolkit.choices import InstanceKind, Objective
from toolkit.triton.configs import ServingOptions
from toolkit.tune.report import pareto_front
from toolkit.tune.search import Goal, climb, confirm, confirmation, judge
from toolkit.tune.space import SearchSpace, TrialConfig
from toolkit.tune.trials import LevelResult, Trial, TrialStatus

LEVELS = (1, 16)
START = TrialConfig("m", ServingOptions(max_batch_size=32, max_queue_delay_us=2000))  # a long wait
SPACE = SearchSpace(variants=("m",))


def level(
    concurrency: int,
    throughput: float,
    p99: float,
    failures: int = 0,
    spread: float | None = None,
    stable: bool = True,
) -> LevelResult:
    latency = {"p50": p99 / 2, "p90": p99, "p95": p99, "p99": p99, "mean": p99 / 2}
    latency |= {"std": 0.0, "min": p99 / 4}
    load = ServingLevel(concurrency, 1, 100, failures, throughput, latency, 1.0)
    return LevelResult(dataclasses.replace(load, stable=stable, spread=spread))


def synthetic(config: TrialConfig) -> list[LevelResult]:
    """A made-up server: the queue delay costs latency at concurrency 1 (a request waits for
    others that never come) and buys a little throughput at 16; one runtime thread beats
    the default two at 16; two instances help only at 16 and cost at 1."""
    s = config.serving
    delay = s.max_queue_delay_us / 1000 if s.dynamic_batching else 0.0
    one = 1.5 + delay + (0.3 if s.instances > 1 else 0.0)
    sixteen = 800.0 * (1.1 if s.dynamic_batching else 0.7) * (1.25 if s.threads == 1 else 1.0)
    sixteen *= 1.0 + delay / 50 + (0.02 if s.instances > 1 else 0.0)
    return [level(1, 1000 / one, one * 2), level(16, sixteen, 16000 / sixteen * 2)]


def search(goal: Goal, measure=synthetic, load=lambda round_number: 1.0) -> list[Trial]:
    """Run the search to the end, each round's figures scaled by `load(round)` (other work on
    the machine slows a whole round alike)."""
    trials: list[Trial] = []
    while (step := climb(SPACE, START, trials, goal)).next is not None:
        number = trials[-1].round + 1 if trials else 0
        for config in step.next:
            levels = [
                level(lv.concurrency, lv.throughput * load(number), lv.p99_ms / load(number))
                for lv in measure(config)
            ]
            trials.append(Trial(len(trials), config, number, step.axis, levels=levels))
    return trials


def best(trials: list[Trial], goal: Goal) -> TrialConfig:
    return climb(SPACE, START, trials, goal).best


def test_latency_objective_drops_the_queue_delay_and_walks_no_cross_product():
    goal = Goal(Objective.LATENCY, LEVELS)
    trials = search(goal)
    chosen = best(trials, goal).serving
    assert chosen.max_queue_delay_us == 0 or not chosen.dynamic_batching
    assert chosen.instances == 1
    assert len({t.config for t in trials}) < 40  # the space holds 2*4*3*3*4*4*2 configs
    # Deterministic: the same measurements give the same trials and the same answer.
    again = search(goal)
    assert [t.config for t in again] == [t.config for t in trials]


def test_throughput_objective_takes_the_thread_win_but_not_a_loss_at_concurrency_1():
    goal = Goal(Objective.THROUGHPUT, LEVELS)
    chosen = best(search(goal), goal).serving
    assert chosen.threads == 1 and chosen.dynamic_batching
    # The longest queue delay adds 4% at 16 (inside the margin) and halves concurrency 1.
    assert chosen.max_queue_delay_us < 2000 and chosen.instances == 1


def test_decisions_hold_when_other_work_slows_whole_rounds():
    goal = Goal(Objective.THROUGHPUT, LEVELS)
    quiet = best(search(goal), goal)
    noisy = best(search(goal, load=lambda r: 0.4 if r % 2 else 1.0), goal)
    assert noisy == quiet


def test_a_win_inside_the_margin_does_not_move_the_search():
    goal = Goal(Objective.THROUGHPUT, LEVELS)

    def slightly_better_with_two_threads(config):
        levels = synthetic(dataclasses.replace(config, serving=config.serving))
        gain = 1.03 if config.serving.inter_op_threads == 2 else 1.0
        return [level(lv.concurrency, lv.throughput * gain, lv.p99_ms) for lv in levels]

    assert best(search(goal, slightly_better_with_two_threads), goal).serving.inter_op_threads == 1


def test_failed_trials_are_recorded_and_never_chosen():
    goal = Goal(Objective.THROUGHPUT, LEVELS)

    def four_instances_fail(config):
        return [] if config.serving.instances == 4 else synthetic(config)

    trials = search(goal, four_instances_fail)
    failed = [t for t in trials if not t.levels]
    assert failed and all(t.config.serving.instances == 4 for t in failed)
    for trial in failed:
        trial.status, trial.error = TrialStatus.FAILED, "cannot load"
        assert judge(trial, goal) == judge(trial, goal)  # a verdict, not an exception
        assert not judge(trial, goal).feasible
    assert best(trials, goal).serving.instances != 4


def test_p99_limit_and_failed_requests():
    tight = Goal(Objective.THROUGHPUT, LEVELS, p99_ms=1.0)
    trial = Trial(0, START, levels=synthetic(START))
    verdict = judge(trial, tight)
    assert not verdict.feasible and "over the 1 ms limit" in verdict.reason
    assert math.isfinite(verdict.value)  # ranked by how far over, so the search can close in
    failing = Trial(1, START, levels=[level(1, 500, 2), level(16, 900, 30, failures=3)])
    assert (
        "3 failed requests at concurrency 16"
        in judge(failing, Goal(Objective.LATENCY, LEVELS)).reason
    )
    with pytest.raises(Exception, match="p99-ms"):
        Goal(Objective.LATENCY, LEVELS, p99_ms=0)


def test_confirmation_keeps_the_default_when_the_winner_does_not_hold():
    goal = Goal(Objective.THROUGHPUT, LEVELS)
    default = Trial(0, START, levels=[level(1, 600, 3), level(16, 1000, 30)])
    better = Trial(1, START, levels=[level(1, 610, 3), level(16, 1300, 25)])
    worse_at_one = Trial(2, START, levels=[level(1, 300, 6), level(16, 1400, 25)])
    assert confirm(default, better, goal) is better
    assert confirm(default, worse_at_one, goal) is default
    tight = Goal(Objective.THROUGHPUT, LEVELS, p99_ms=5)
    assert confirm(default, better, tight) is None  # neither keeps p99 within 5 ms at 16


def test_a_change_within_the_noise_is_no_change():
    goal = Goal(Objective.THROUGHPUT, LEVELS)
    one_thread = dataclasses.replace(START, serving=dataclasses.replace(START.serving, threads=1))

    def trial(index, config, at_16, spread=0.12, stable=True):
        levels = [
            level(1, 500, 4, spread=spread),
            level(16, at_16, 30, spread=spread, stable=stable),
        ]
        return Trial(index, config, levels=levels)

    default = trial(0, START, 1020)
    # 1,025 against 1,020 images/s with windows 12% apart: a tie, whatever the margin says.
    kept, why = confirmation(default, trial(1, one_thread, 1025), goal)
    assert kept is default
    assert why == (
        "kept the default: the best's 1,025.00 images/s against the default's 1,020.00 "
        "images/s (+0.5%) at concurrency 16 is within the measured noise (±12%)"
    )
    # 8% better is past the 5% margin, but not past the 12% the windows wandered.
    assert confirmation(default, trial(1, one_thread, 1102), goal)[0] is default
    # A real win: 30% better with the same noise.
    better = trial(1, one_thread, 1326)
    kept, why = confirmation(default, better, goal)
    assert kept is better and why.endswith("beyond the measured noise (±12%)")
    # Any level whose windows did not agree: no difference is established.
    kept, why = confirmation(default, trial(1, one_thread, 1326, stable=False), goal)
    assert kept is default and "did not agree for the best at concurrency 16" in why


def test_the_search_refuses_trials_it_did_not_ask_for():
    goal = Goal(Objective.THROUGHPUT, LEVELS)
    stray = Trial(0, dataclasses.replace(START, variant="other"), levels=synthetic(START))
    with pytest.raises(ValueError, match="the search asks"):
        climb(SPACE, START, [stray], goal)


def test_space_skips_settings_that_do_not_apply():
    off = TrialConfig("m", ServingOptions(max_batch_size=32, dynamic_batching=False))
    off = SPACE.normalise(off)
    axes = {a.name: a for a in SPACE.axes()}
    assert SPACE.neighbours(off, axes["max_queue_delay_us"]) == []
    assert SPACE.neighbours(off, axes["preferred_batch_sizes"]) == []
    fixed = dataclasses.replace(SPACE, batches=False)
    assert fixed.neighbours(START, {a.name: a for a in fixed.axes()}["dynamic_batching"]) == []
    assert [c.serving.kind for c in SPACE.neighbours(START, axes["kind"])] == []
    cuda = dataclasses.replace(SPACE, kind=(InstanceKind.GPU, InstanceKind.CPU))
    kinds = {a.name: a for a in cuda.axes()}["kind"]
    assert [c.serving.kind for c in cuda.neighbours(START, kinds)] == ["gpu", "cpu"]
    # TensorRT runs on GPU instances only: its config keeps KIND_GPU (a CPU trial would fail).
    trt = ServingOptions(max_batch_size=32, kind=InstanceKind.GPU, accelerator="tensorrt")
    assert cuda.neighbours(TrialConfig("m", trt), kinds) == []


def test_pareto_front():
    trials = [
        Trial(0, START, levels=[level(16, 1000, 20)]),
        Trial(1, START, levels=[level(16, 1200, 30)]),
        Trial(2, START, levels=[level(16, 900, 25)]),  # beaten by trial 0 on both
        Trial(3, START, status=TrialStatus.FAILED),
    ]
    assert [t.index for t in pareto_front(trials, 16)] == [0, 1]


def test_pareto_front_holds_every_trial_no_working_one_dominates():
    trials = [
        Trial(0, START, levels=[level(16, 1000, 20)]),
        Trial(1, START, levels=[level(16, 1100, 24)]),
        Trial(2, START, levels=[level(16, 1100, 24)]),  # the same figures: both on it
        Trial(3, START, levels=[level(16, 1300, 35)]),
        # Failing requests answered fast: more "throughput", lower p99 than 0 and 1, and no
        # trade-off anyone should pick. It must not push them off the front.
        Trial(4, START, levels=[level(16, 1250, 15, failures=40)]),
        Trial(5, START, levels=[level(16, 950, 26)]),  # dominated by 0 (and 1, 2)
        Trial(6, START, levels=[level(1, 500, 3)]),  # not measured at 16
    ]
    front = [t.index for t in pareto_front(trials, 16)]
    assert front == [0, 1, 2, 3]
    # Checked against the definition, trial by trial.
    working = [t for t in trials if t.level(16) and not t.level(16).failures]
    for t in working:
        a = t.level(16)
        dominated = any(
            b.throughput >= a.throughput
            and b.p99_ms <= a.p99_ms
            and (b.throughput, b.p99_ms) != (a.throughput, a.p99_ms)
            for b in (u.level(16) for u in working)
        )
        assert (t.index in front) == (not dominated)


# ------------------------------------------------------------------------- a real server

pytestmark_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the pip-installed tritonserver is Linux-only"
)
FAST = ["--concurrency", "1,2", "--window-seconds", "0.2"]


@pytest.fixture(scope="module")
def digits_onnx(digits_checkpoint, tmp_path_factory) -> Path:
    """The untrained digits checkpoint exported to ONNX (with its checkpoint's hash)."""
    from toolkit.variants.export import export_checkpoint

    out = tmp_path_factory.mktemp("tune-export")
    [result] = export_checkpoint(digits_checkpoint, out, ("onnx",))
    return Path(result.path)


@pytest.fixture
def repo(digits_onnx, tmp_path) -> Path:
    """A repository holding the digits model, version 1, packaged for the python backend."""
    from toolkit.triton.repository import PackageOptions, package_artifact

    repo = tmp_path / "repo"
    package_artifact(digits_onnx, repo, "digits", options=PackageOptions(backend="python"))
    return repo


def snapshot_tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def tritonservers_under(path: Path) -> list[int]:
    """Live tritonserver processes serving a repository under `path`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and "tritonserver" in cmdline and str(path) in cmdline:
            found.append(int(entry.name))
    return found


def test_tune_writes_nothing_when_what_is_served_would_not_change(digits_onnx, repo, tmp_path):
    """The model's newest version is the tuned file itself: a default kept (nothing beat it
    beyond the noise) or a config it serves already writes no byte-identical version."""
    from types import SimpleNamespace

    from toolkit.artifacts import read_info
    from toolkit.tune.inputs import Candidate
    from toolkit.tune.report import TuneReport
    from toolkit.tune.run import TuneConfig, _write

    served = TrialConfig("m", ServingOptions(max_batch_size=32))  # as `repo` packaged it
    other = TrialConfig("m", ServingOptions(max_batch_size=32, threads=1))
    candidate = Candidate("m", digits_onnx, read_info(digits_onnx), backend="python")
    tuning = SimpleNamespace(candidates={"m": candidate})
    config = TuneConfig(artifacts=[str(digits_onnx)], repo=str(repo), name="digits")

    def write(baseline: TrialConfig, selected: TrialConfig) -> dict | None:
        default, chosen = Trial(0, baseline), Trial(1, selected)
        kept = default if selected == baseline else chosen
        report = TuneReport({}, "", [default, chosen], default, kept, chosen, "converged")
        report.decision = "decided"
        written = _write(config, tuning, report, "digits")
        assert (written is None) == ("nothing written" in report.decision)
        return written

    before = snapshot_tree(repo)
    assert write(other, other) is None  # the default kept: what is served stays
    assert write(other, served) is None  # chosen, but served that way already
    assert snapshot_tree(repo) == before
    written = write(served, other)  # a real change: written, and said to be
    assert written["version"] == 2 and "threads '0' -> '1'" in written["config_changes"]


@pytestmark_linux
@pytest.mark.slow
def test_tune_writes_a_new_version_that_serves_like_the_local_runner(
    dlkit, digits_onnx, repo, tmp_path
):
    from toolkit.artifacts import open_runner, read_info
    from toolkit.artifacts.onnx import write_info
    from toolkit.triton.client import TritonClient
    from toolkit.triton.server import TritonServer

    before = snapshot_tree(repo / "digits" / "1")
    # Another file than version 1's (the same weights, written again): a new version.
    again = tmp_path / "again.onnx"
    again.write_bytes(digits_onnx.read_bytes())
    write_info(again, read_info(digits_onnx).derive(dlkit_version="exported again"))
    out = dlkit.json(
        "tune", again, "--repo", repo, "--name", "digits", "--budget-minutes", "0.3",
        *FAST, "--report", tmp_path / "report",
    )  # fmt: skip
    assert snapshot_tree(repo / "digits" / "1") == before  # earlier versions byte-identical
    trials = out["trials"]
    assert [t["trial"] for t in trials] == list(range(len(trials))) and len(trials) >= 2
    for trial in trials:
        assert set(trial) >= {"variant", "config", "levels", "status", "round"}
        if trial["status"] == "measured":
            assert [lv["concurrency"] for lv in trial["levels"]] == [1, 2]
            for lv in trial["levels"]:
                assert lv["throughput"] > 0 and lv["p50_ms"] <= lv["p99_ms"]
                assert lv["failures"] == 0
    assert out["baseline"]["config"]["max_queue_delay_us"] == 0  # the package default
    assert out["selected"]["trial"] in {t["trial"] for t in trials}
    assert out["accuracy"]["top1_agreement_with_local"] == 1.0
    assert out["accuracy"]["baseline"].startswith("fp32 checkpoint")
    assert "Coordinate descent" in out["strategy"]
    parts = out["breakdown"]["default"]["parts_us"]
    assert sum(parts.values()) == pytest.approx(out["breakdown"]["default"]["round_trip_us"], 0.05)
    written = out["written"]
    # Same format and backend: the next version of digits, its config tuned for every version.
    assert (written["model"], written["version"]) == ("digits", 2) and "instead_of" not in written
    for name in ("tune.md", "tune.json", "tune.png"):
        assert (tmp_path / "report" / name).is_file()
    # The chosen config loads in Triton and answers as the model run locally.
    batch = np.random.default_rng(0).standard_normal((5, 1, 16, 16)).astype(np.float32)
    with TritonServer(
        repo, models=[written["model"]], http_port=0, grpc_port=0, metrics_port=0
    ) as server:
        assert server.failed_models() == {}
        with TritonClient(server.grpc_url) as client:
            served = client.infer(written["model"], batch)
            config = client.config(written["model"])
    np.testing.assert_allclose(served, open_runner(again)(batch), atol=1e-5)
    chosen = out["selected"]["config"]
    assert config.instance_group[0].count == chosen["instances"]
    assert config.parameters["intra_op_thread_count"].string_value == str(chosen["threads"])


@pytestmark_linux
@pytest.mark.slow
def test_configs_that_cannot_load_are_failed_trials_not_fatal(digits_onnx, repo, tmp_path):
    from toolkit.tune.run import TuneConfig, tune

    # Round 1: sixty-four python stubs cannot start within the 3 s load limit (the server is
    # restarted); round 2: GPU instances on a machine without a GPU are refused at once.
    nothing = {k: () for k in ("dynamic_batching", "max_queue_delay_us", "threads")}
    nothing |= {k: () for k in ("max_batch_size", "preferred_batch_sizes", "inter_op_threads")}
    space = SearchSpace(variants=(), instances=(64,), kind=(InstanceKind.GPU,), **nothing)
    config = TuneConfig(
        [str(digits_onnx)], str(repo), "digits", concurrency=(1,), budget_minutes=2,
        window_seconds=0.2, load_timeout=3, dry_run=True, space=space,
    )  # fmt: skip
    report = tune(config)
    failed = [t for t in report.trials if not t.ok]
    assert [t.config.serving.instances for t in failed[:1]] == [64]
    assert "did not load within 3 s" in failed[0].error
    assert [t.config.serving.kind for t in failed[1:]] == ["gpu"] and failed[1].error
    assert report.server_restarts == 1
    assert report.selected.config == report.baseline.config and report.selected.ok


@pytestmark_linux
@pytest.mark.slow
def test_each_slot_serves_the_config_it_is_measured_as(digits_onnx, tmp_path):
    # The first config of a server used to be served as packaged (with batching) while
    # recorded as the config asked for: a comparison led by "batching off" measured batching.
    from toolkit.triton.client import TritonClient
    from toolkit.triton.server import find_tritonserver
    from toolkit.tune import inputs
    from toolkit.tune.session import TuningServer

    candidates = inputs.from_artifacts([digits_onnx])
    variant = candidates[0].variant
    binary = find_tritonserver()
    inputs.stage(candidates, tmp_path / "repo", binary)
    server = TuningServer(tmp_path / "repo", {variant: candidates[0]}, binary)
    off = TrialConfig(variant, ServingOptions(dynamic_batching=False, threads=1))
    on = TrialConfig(variant, ServingOptions(max_queue_delay_us=100))
    server.start(off)
    try:
        slots = server.serve([off, on], timeout=60)
        assert [error for _, error in slots] == ["", ""]
        with TritonClient(server.url) as client:
            first, second = (client.config(slot) for slot, _ in slots)
    finally:
        server.stop()
    assert not first.HasField("dynamic_batching")
    assert first.parameters["intra_op_thread_count"].string_value == "1"
    assert second.dynamic_batching.max_queue_delay_microseconds == 100


@pytestmark_linux
@pytest.mark.slow
def test_sigterm_mid_run_leaves_the_repository_and_no_server(digits_onnx, repo, tmp_path):
    before = snapshot_tree(repo)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch), PYTHONPATH=str(Path(__file__).parent.parent))
    cmd = [sys.executable, "-m", "toolkit", "tune", str(digits_onnx), "--repo", str(repo)]
    cmd += ["--name", "digits", "--budget-minutes", "5", *FAST]
    process = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in process.stderr:
            if line.startswith("trial "):  # the search is under way
                break
        assert tritonservers_under(scratch)
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1, rest
    assert "Error: tune was interrupted" in rest and "left as it was" in rest
    assert snapshot_tree(repo) == before
    assert tritonservers_under(scratch) == []
    assert list(scratch.glob("dlkit-tune-*")) == []  # the scratch repository is gone


@pytestmark_linux
@pytest.mark.slow
def test_bad_input_gives_one_clear_error_and_writes_nothing(dlkit, digits_onnx, repo, tmp_path):
    result = dlkit("tune", "--repo", repo, "--name", "nope", expect=1)
    assert "Error: no model 'nope' in" in result.output and "['digits']" in result.output
    (tmp_path / "empty").mkdir()
    result = dlkit("tune", "--repo", tmp_path / "empty", "--name", "digits", expect=1)
    assert "no model 'digits' in" in result.output and "no models" in result.output
    result = dlkit("tune", "--repo", tmp_path / "none", "--name", "digits", expect=1)
    assert "Error: no model repository at" in result.output
    assert "give the ARTIFACT" in dlkit("tune", "--repo", repo, expect=1).output
    from toolkit.triton.repository import package_artifact

    package_artifact(digits_onnx, repo, "native")  # for the NGC image's onnxruntime backend
    result = dlkit("tune", "--repo", repo, "--name", "native", expect=1)
    assert "this tritonserver has no onnxruntime backend to serve native" in result.output
    before = snapshot_tree(repo)
    result = dlkit(
        "tune", "--repo", repo, "--name", "digits", "--p99-ms", "0.001", "--budget-minutes",
        "0.05", *FAST, "--report", tmp_path / "report", expect=1,
    )  # fmt: skip
    assert "no configuration kept p99 within 0.001 ms at every level" in result.output
    assert "the best p99 seen was" in result.output and "nothing was written" in result.output
    assert snapshot_tree(repo) == before and not (tmp_path / "report").exists()


@pytestmark_linux
@pytest.mark.slow
def test_deploy_tune_reports_served_figures_beside_in_process_ones(digits_checkpoint, tmp_path):
    from toolkit.deploy import DeployConfig, deploy

    config = DeployConfig(
        checkpoint=str(digits_checkpoint), out=str(tmp_path / "run"), repo=str(tmp_path / "repo"),
        smoke_test=False, batch_sizes=(1, 4), bench_seconds=0.05, tune=True, tune_minutes=0.2,
        tune_concurrency=(1, 2), tune_window_seconds=0.2,
    )  # fmt: skip
    report = deploy(config)
    served = report.served
    assert [row["concurrency"] for row in served["levels"]] == [1, 2]
    # deploy's --objective (latency) picks the variant; the server is tuned for throughput, and
    # a tuned config never serves fewer images/s than the default (beyond the 5% margin).
    assert served["objective"] == "throughput"
    for row in served["levels"]:
        assert row["default"]["throughput"] > 0
        assert row["tuned"]["throughput"] >= 0.95 * row["default"]["throughput"]
    assert "tune" in report.stage_seconds
    text = (tmp_path / "run" / "report.md").read_text()
    assert "## Served on Triton (`dlkit tune`)" in text and "In process, the same artifact" in text
    assert "Chosen for throughput:" in text
    assert (tmp_path / "run" / "tune" / "tune.md").is_file()
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["served"]["levels"] == served["levels"]


@pytestmark_linux
@pytest.mark.slow
def test_load_generator_counts_failures_and_timeouts(digits_onnx, repo):
    from toolkit.bench.load import ClosedLoop, measure_level
    from toolkit.errors import DlkitError
    from toolkit.triton.client import TritonClient
    from toolkit.triton.repository import PackageOptions, package_artifact
    from toolkit.triton.sender import PreparedRequest
    from toolkit.triton.server import TritonServer

    # A model that holds each request 0.2 s in its queue cannot answer within a deadline of 1 us
    # (a fast one can: gRPC checks deadlines on a coarse clock).
    slow = ServingOptions(max_queue_delay_us=200_000)
    package_artifact(digits_onnx, repo, "slow", options=PackageOptions("python", serving=slow))
    batch = np.zeros((1, 1, 16, 16), np.float32)
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0) as server:
        for url in (server.grpc_url, f"http://{server.http_url}"):  # prepared, and infer()
            with TritonClient(url, retries=0) as client:
                level = measure_level(client, "digits", batch, 2, duration=0.5, warmup=0.1)
            assert level.requests > 0 and level.failures == 0 and level.client_cpu > 0
        with TritonClient(server.grpc_url) as client:
            served, held = client.model("digits"), client.model("slow")
        missing = dataclasses.replace(served, name="nope")
        cases = [
            (PreparedRequest(server.grpc_url, missing, batch, 5.0), False),  # unknown model
            (PreparedRequest(server.grpc_url, held, batch, 1e-6), True),  # no time to answer
        ]
        for request, times_out in cases:
            with pytest.raises(DlkitError, match="Triton inference failed"):
                request()
            with ClosedLoop(request, request.timeout, 1, 2) as loop:
                begin = loop.wait_until(loop.start)
                level = loop.level(begin, loop.wait_until(begin + 0.3), begin)
            request.close()
            assert level.requests == 0 and level.failures > 0
            assert (level.timeouts == level.failures) == times_out


@pytestmark_linux
@pytest.mark.slow
def test_the_runtime_is_one_more_axis(dlkit, digits_checkpoint, tmp_path):
    # The same model as ONNX and as OpenVINO IR: both served (the python backend runs each
    # with its own runtime) and measured side by side in the search's first round.
    from toolkit.variants.export import export_checkpoint

    results = export_checkpoint(digits_checkpoint, tmp_path, ("onnx", "openvino"))
    out = dlkit.json(
        "tune", *(r.path for r in results), "--dry-run", "--budget-minutes", "0.3", *FAST,
        "--report", tmp_path / "report",
    )  # fmt: skip
    measured = [t for t in out["trials"] if t["status"] == "measured"]
    assert {t["axis"] for t in measured} >= {"variant"}
    assert len({t["variant"] for t in measured}) == 2
    assert all(lv["failures"] == 0 for t in measured for lv in t["levels"])
