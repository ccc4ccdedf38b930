"""`dlkit bench`: statistics, stability windows, the sweep, bad input and the report writers."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
import torch

from toolkit.bench.environment import PeakMemory, describe_environment
from toolkit.bench.harness import (
    MeasureConfig,
    Measurement,
    compare_with_torch_timer,
    harness_overhead_ms,
    latency_stats,
    measure,
    measure_interleaved,
    relative_spread,
    wall_clock_step,
)
from toolkit.bench.report import format_markdown, format_table, write_report
from toolkit.bench.results import BenchReport, BenchRow, Skip, rank
from toolkit.bench.run import run_benchmark
from toolkit.errors import DlkitError
from toolkit.variants.export import export_model

TINY = ["--model", "smallresnet", "--image-size", "16", "--num-classes", "4"]
QUICK = ["--warmup", "1", "--iters", "5", "--max-time", "0.5"]


def fake_step(durations_ms):
    """A step that 'takes' the given times (ms), so stability logic is tested deterministically."""
    values = iter(durations_ms)
    return lambda: next(values) / 1e3


# -------------------------------------------------------------------------------- statistics


def test_latency_stats_are_percentiles_of_milliseconds():
    stats = latency_stats([t / 1e3 for t in range(1, 101)])  # 1 … 100 ms
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p90"] == pytest.approx(90.1)
    assert stats["p95"] == pytest.approx(95.05)
    assert stats["p99"] == pytest.approx(99.01)
    assert stats["mean"] == pytest.approx(50.5)
    assert stats["std"] == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert stats["min"] == pytest.approx(1.0)
    assert latency_stats([0.002])["std"] == 0.0


def test_relative_spread():
    assert relative_spread([10.0, 10.0, 10.0]) == 0.0
    assert relative_spread([9.0, 10.0, 11.0]) == pytest.approx(0.2)


# ------------------------------------------------------------------------- stability windows


def test_measurement_stops_when_windows_agree_and_drops_the_slow_start():
    # warm-up 2, then windows of 4: two slow, drifting windows, then steady 5 ms.
    times = [99, 99] + [20] * 4 + [12] * 4 + [5.0, 5.1, 4.9, 5.0] * 10
    m = measure(fake_step(times), MeasureConfig(warmup=2, iters=4, windows=3, tolerance=0.05))
    assert m.stable and m.windows == 5 and m.iterations == 12
    assert m.latency_ms["p50"] == pytest.approx(5.0)
    assert m.latency_ms["min"] == pytest.approx(4.9)
    assert m.window_medians_ms == pytest.approx([5.0, 5.0, 5.0])
    assert m.spread == 0.0
    assert m.throughput(8) == pytest.approx(8 / 0.005)


def test_measurement_that_never_settles_is_reported_unstable_at_the_time_cap():
    # Window medians alternate 1 ms / 2 ms forever: they never agree within 5%.
    times = itertools.cycle([1.0] * 4 + [2.0] * 4)
    config = MeasureConfig(warmup=0, iters=4, windows=3, tolerance=0.05, max_time=0.1)
    m = measure(fake_step(times), config)
    assert not m.stable
    assert m.measured_s >= 0.1
    assert m.windows >= 16  # 12 ms per pair of windows until 100 ms were measured
    assert m.spread >= 0.5  # (2 - 1) / median of the last three window medians
    assert m.to_dict()["stable"] is False


def test_time_based_windows_have_a_minimum_length():
    # 10 ms per step, windows of at least 0.045 s and 5 iterations: 5 steps each.
    m = measure(fake_step(itertools.repeat(10.0)), MeasureConfig(warmup=0, min_time=0.045))
    assert m.stable and m.windows == 3 and m.iterations == 15
    m = measure(fake_step(itertools.repeat(10.0)), MeasureConfig(warmup=0, min_time=0.095))
    assert m.iterations == 30


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"windows": 1}, "windows"),
        ({"tolerance": 0}, "tolerance"),
        ({"iters": 0}, "iters"),
        ({"warmup": -1}, "warmup"),
        ({"max_time": 0}, "max-time"),
    ],
)
def test_measure_config_rejects_nonsense(options, message):
    with pytest.raises(DlkitError, match=message):
        MeasureConfig(**options)


def test_wall_clock_step_times_the_call_between_synchronizations():
    calls, inside = [], {}

    def run() -> None:
        calls.append("run")
        inside["start"] = time.perf_counter()
        time.sleep(0.002)
        inside["end"] = time.perf_counter()

    step = wall_clock_step(run, synchronize=lambda: calls.append("sync"))
    outside = time.perf_counter()
    took = step()
    outside = time.perf_counter() - outside
    # The figure covers the whole call and nothing outside the step.
    assert inside["end"] - inside["start"] <= took <= outside
    assert calls == ["sync", "run", "sync"]


def test_the_load_generator_counts_and_names_every_failure():
    """A request that raises something other than DlkitError (a bug, a library's own error)
    is a failure like any other: counted, named, and the thread goes on sending."""
    from toolkit.bench.load import ClosedLoop

    calls = itertools.count()

    def send() -> None:
        n = next(calls)
        time.sleep(0.001)
        if n % 3 == 1:
            raise ValueError(f"cannot decode answer {n}")
        if n % 3 == 2:
            raise DlkitError("Triton inference failed: model not ready")

    with ClosedLoop(send, 5.0, 1, 2) as loop:
        begin = loop.wait_until(loop.start)
        level = loop.level(begin, loop.wait_until(begin + 0.3), begin)
    assert level.requests > 10 and level.failures >= 2 * level.requests - 4
    assert level.errors["Triton inference failed: model not ready"] > 5
    assert any(k.startswith("ValueError: cannot decode answer") for k in level.errors)
    # Every failure is in `errors`: the five commonest reasons, then the rest together.
    assert sum(level.errors.values()) == level.failures and len(level.errors) == 6
    assert level.errors["other reasons"] > 0
    assert all(t.is_alive() is False for t in loop.threads)
    assert level.to_dict()["errors"] == level.errors


def test_harness_costs_under_one_percent_of_a_1ms_operation():
    # Robust on a loaded machine: load only makes the operation slower, and the harness's own
    # cost is the p50 of thousands of timed no-op calls. The direct p50-vs-Timer agreement
    # within 5% is measured by benchmarks/cpu_variants.py, on a quiet machine.
    from torch.utils.benchmark import Timer

    a, b = torch.randn(352, 352), torch.randn(352, 352)
    op_ms = Timer("a @ b", globals={"a": a, "b": b}).blocked_autorange(min_run_time=0.2).median
    assert harness_overhead_ms() < 0.01 * op_ms * 1e3


def test_comparison_with_torch_timer_reports_both_figures():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    result = compare_with_torch_timer(lambda: a @ b, rounds=3, min_run_time=0.05)
    assert set(result) == {"harness_p50_ms", "timer_median_ms", "ratio", "harness_overhead_ms"}
    assert 0.2 < result["ratio"] < 5  # a sanity bound only; noise decides the rest here


# ---------------------------------------------------------------------- memory, environment


def test_peak_memory_on_cpu_is_what_the_block_added_when_the_kernel_allows_it():
    with PeakMemory("cpu") as big:
        block = np.ones(200 * 1024**2 // 8)  # 200 MiB, touched
        del block
    assert big.bytes >= 190 * 1024**2  # pages already resident at the start do not count
    with PeakMemory("cpu") as small:
        np.ones(1000).sum()
    env = describe_environment("cpu")
    if "VmHWM" in env["peak_memory"]:
        assert small.bytes < 10 * 1024**2  # the high-water mark was reset between blocks


def test_environment_block_names_cpu_instruction_sets_and_versions():
    env = describe_environment("cpu", 2)
    assert env["device"] == "cpu" and env["gpu"] is None
    assert env["cpu"]["model"] and env["cpu"]["torch_threads"] >= 1
    assert env["cpu"]["onnxruntime_threads"] == 2
    assert isinstance(env["cpu"]["instruction_sets"], list)
    assert env["versions"]["torch"] == str(torch.__version__)
    assert env["versions"]["onnxruntime"]
    json.dumps(env)


# -------------------------------------------------------------------------- ranking, reports


def fake_report(device="cpu"):
    """A report built from made-up measurements: writers are tested without timing anything."""

    def row(variant, batch_size, p50, spread=0.01):
        m = Measurement(
            latency_ms={
                "p50": p50,
                "p90": p50 * 1.1,
                "p95": p50 * 1.2,
                "p99": p50 * 1.5,
                "mean": p50,
                "std": p50 / 10,
                "min": p50 * 0.9,
            },
            iterations=30,
            windows=4,
            window_medians_ms=[p50, p50, p50],
            spread=spread,
            stable=(variant, batch_size) != ("compile", 1),
            measured_s=1.0,
        )
        return BenchRow.from_measurement(variant, device, batch_size, m, 300 * 1024**2)

    rows = [
        row("eager-fp32", 1, 20.0),
        row("onnx-fp32", 1, 10.0),
        row("compile", 1, 16.0),
        row("eager-fp32", 32, 400.0),
        row("onnx-fp32", 32, 250.0),
        row("compile", 32, 200.0),
        row("onnx-int8", 32, 208.0, spread=0.06),  # 4% slower than compile, 6% noise: a tie
        row("torchscript", 32, 390.0, spread=0.03),  # 2.5% faster than eager: within noise
    ]
    rank(rows)
    return BenchReport(
        environment=describe_environment(device),
        settings={
            "model": "resnet18",
            "device": device,
            "batch_sizes": [1, 32],
            "variants": ["eager-fp32", "onnx-fp32", "compile", "onnx-int8", "torchscript"],
            "threads": 1,
            "ranked_by": "p50 latency",
            "warmup": 5,
            "iters": None,
            "min_time": 0.5,
            "min_window_iters": 5,
            "windows": 3,
            "tolerance": 0.05,
            "max_time": 30.0,
        },
        results=rows,
        skipped=[Skip("torchscript-fp32", 32, "fixed batch of 1")],
    )


def test_rank_marks_the_fastest_and_the_speedup_against_eager_fp32():
    rows = fake_report().results
    fastest = {(r.batch_size, r.variant) for r in rows if r.fastest}
    assert fastest == {(1, "onnx-fp32"), (32, "compile")}
    speedups = {(r.batch_size, r.variant): r.speedup_vs_eager_fp32 for r in rows}
    assert speedups[(1, "eager-fp32")] == 1.0
    assert speedups[(1, "onnx-fp32")] == pytest.approx(2.0)
    assert speedups[(32, "compile")] == pytest.approx(2.0)
    stable = {(r.batch_size, r.variant): r.speedup_stable for r in rows}
    assert stable[(1, "compile")] is False and stable[(1, "onnx-fp32")] is True
    no_baseline = [r for r in rows if r.variant != "eager-fp32"]
    rank(no_baseline)
    assert all(r.speedup_vs_eager_fp32 is None for r in no_baseline)


def test_rows_within_the_measured_noise_of_the_fastest_are_ties():
    rows = {(r.batch_size, r.variant): r for r in fake_report().results}
    assert rows[(32, "compile")].fastest and not rows[(32, "compile")].tied_with_fastest
    assert rows[(32, "onnx-int8")].tied_with_fastest and not rows[(32, "onnx-int8")].fastest
    assert not rows[(32, "onnx-fp32")].tied_with_fastest  # 25% slower, 1% noise
    assert rows[(32, "torchscript")].speedup_within_noise
    assert not rows[(32, "onnx-fp32")].speedup_within_noise
    assert not rows[(32, "eager-fp32")].speedup_within_noise  # the baseline itself
    batch32 = format_table(fake_report()).split("batch 32\n")[1].split("\n\n")[0].splitlines()
    marks = {line.split()[1]: line.split()[0] for line in batch32 if line[0] in "*="}
    assert marks == {"compile": "*", "onnx-int8": "="}
    assert next(line for line in batch32 if "torchscript" in line).endswith("1.03x (tie)")
    assert "by one figure: p50 latency" in format_table(fake_report())


def test_table_ranks_fastest_first_and_marks_it():
    text = format_table(fake_report())
    batch1 = text.split("batch 1\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[1] if line[0] in "*!" else line.split()[0] for line in batch1] == [
        "variant",
        "onnx-fp32",
        "compile",
        "eager-fp32",
    ]
    assert batch1[1].startswith("*") and "2.00x" in batch1[1]
    assert batch1[2].startswith("!")  # compile did not stabilise
    assert batch1[2].endswith("1.25x!")  # so its speed-up is not to be trusted either
    assert "1.00x" in batch1[3]
    assert "skipped torchscript-fp32 (batch 32): fixed batch of 1" in text
    cpu = fake_report().environment["cpu"]
    assert (
        f"({cpu['architecture']}): {', '.join(cpu['instruction_sets']) or 'none detected'}" in text
    )


def test_write_report_writes_json_markdown_and_png(tmp_path):
    report = fake_report()
    paths = write_report(report, tmp_path / "out", stem="cpu_variants")
    assert [p.name for p in paths] == ["cpu_variants.json", "cpu_variants.md", "cpu_variants.png"]
    assert json.loads(paths[0].read_text()) == json.loads(json.dumps(report.to_dict()))
    markdown = paths[1].read_text()
    assert markdown == format_markdown(report)
    assert "## Batch size 32" in markdown
    assert "| * | compile | 200.000 |" in markdown
    assert "`onnx-fp32`: ONNX Runtime fp32" in markdown
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)


# ------------------------------------------------------------------------- the sweep, the CLI


@pytest.fixture(scope="module")
def static_onnx(tmp_path_factory, make_model):
    """A smallresnet ONNX file exported with a fixed batch of 2."""
    folder = tmp_path_factory.mktemp("bench")
    model, info = make_model("smallresnet", 3, 16, 4)
    (result,) = export_model(model, info, folder, "static", ("onnx",), static_batch=2)
    return result.path


def test_bench_json_and_report_from_a_model_name(dlkit, tmp_path):
    args = [*TINY, "--batch-sizes", "1,2", *QUICK, "--recheck", "--report", tmp_path]
    variants = "eager-fp32,eager-amp-cl,torchscript,onnx-fp32,nonsense"  # an old alias too
    report = dlkit.json("bench", *args, "--variants", variants)
    assert set(report) == {"environment", "settings", "results", "skipped", "consistency"}
    rows = report["results"]
    names = ["eager-fp32", "eager-amp-cl", "torchscript-fp32", "onnx-fp32"]
    assert [(r["variant"], r["batch_size"]) for r in rows] == [
        (v, b) for b in (1, 2) for v in names
    ]
    assert report["settings"]["interleaved"] and report["settings"]["threads"] >= 1
    for r in rows:
        assert set(r["latency_ms"]) == {"p50", "p90", "p95", "p99", "mean", "std", "min"}
        assert r["latency_ms"]["min"] <= r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert r["throughput"] > 0 and r["peak_memory_bytes"] >= 0 and r["device"] == "cpu"
        assert r["stability"]["iterations"] >= 10
    assert sum(r["fastest"] for r in rows) == 2
    assert [s["variant"] for s in report["skipped"]] == ["nonsense"]
    assert "unknown variant" in report["skipped"][0]["reason"]
    assert [(c["variant"], c["batch_size"]) for c in report["consistency"]] == [
        ("eager-fp32", 1),
        ("eager-fp32", 2),
    ]
    assert report["environment"]["cpu"]["instruction_sets"] is not None
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["results"][0]["variant"] == "eager-fp32"
    assert (tmp_path / "bench.md").is_file() and (tmp_path / "bench.png").is_file()


def test_bench_artifacts_skip_what_they_cannot_take(dlkit, tmp_path, static_onnx):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08not really onnx")
    report = dlkit.json("bench", static_onnx, broken, "--batch-sizes", "1,2", *QUICK)
    assert [(r["variant"], r["batch_size"]) for r in report["results"]] == [("static.onnx", 2)]
    assert report["results"][0]["speedup_vs_eager_fp32"] is None  # no eager fp32 to compare
    reasons = {(s["variant"], s["batch_size"]): s["reason"] for s in report["skipped"]}
    assert "fixed batch of 2" in reasons[("static.onnx", 1)]
    assert reasons[("broken.onnx", None)].startswith("cannot load")


def test_bench_exits_non_zero_when_nothing_can_run(dlkit, tmp_path, static_onnx):
    result = dlkit("bench", static_onnx, "--batch-sizes", "1", *QUICK, expect=1)
    last = result.output.splitlines()[-1]
    assert last.startswith("Error: nothing could be benchmarked: static.onnx (batch 1): ")
    assert last.endswith("fixed batch of 2")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*TINY, "--device", "cuda"], "CUDA is not available"),
        ([], "either ARTIFACT paths or --model"),
        ([*TINY, "--iters", "5", "--min-time", "1"], "either --iters or --min-time"),
    ],
)
def test_bad_settings_are_one_line_errors(dlkit, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = dlkit("bench", *args, expect=1)
    assert result.output.startswith("Error: ") and message in result.output
    assert len(result.output.splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--windows", "1"],
        ["--threads", "0"],
        ["--tolerance", "nan"],
        ["--max-time", "inf"],
        ["--min-time", "-1"],
        ["--duration", "0"],
    ],
)
def test_numeric_options_are_checked_where_they_are_parsed(dlkit, args):
    result = dlkit("bench", *TINY, *args, expect=2)
    assert "Invalid value" in result.output and args[0] in result.output


def test_variants_need_a_model_to_build_from(dlkit, static_onnx):
    result = dlkit("bench", static_onnx, "--variants", "compile", expect=1)
    assert "--variants builds variants from --model or a checkpoint" in result.output


def test_bad_batch_sizes_are_rejected_by_the_cli(dlkit):
    result = dlkit("bench", *TINY, "--batch-sizes", "1,x", expect=2)
    assert "comma-separated integers" in result.output


def test_plain_output_is_the_table(dlkit):
    result = dlkit("bench", *TINY, "--variants", "eager-fp32", "--batch-sizes", "1", *QUICK)
    lines = result.stdout.splitlines()
    assert "batch 1" in lines
    assert any(line.startswith("*") and "eager-fp32" in line and "1.00x" in line for line in lines)


@pytest.mark.slow
def test_compiled_variants_run_from_a_checkpoint(tmp_path, make_checkpoint):
    make_checkpoint(tmp_path / "m.pt", "smallresnet", 3, 16, 4)
    report = run_benchmark(
        [tmp_path / "m.pt"],
        variants=["compile", "compile-amp-cl"],
        batch_sizes=[2, 3],
        config=MeasureConfig(warmup=1, iters=5, max_time=0.5),
    )
    rows = [(r.variant, r.batch_size) for r in report.results]
    assert rows == [(v, b) for b in (2, 3) for v in ("compile-fp32", "compile-amp-cl")]
    assert report.skipped == []


@pytest.mark.cuda
def test_cuda_rows_report_end_to_end_and_device_only_timings():
    report = run_benchmark(
        model="smallresnet",
        image_size=32,
        num_classes=4,
        variants=["eager-fp32", "eager-amp-cl", "torchscript", "compile"],
        device="cuda",
        batch_sizes=[1, 8],
        config=MeasureConfig(warmup=3, iters=20, max_time=2),
    )
    assert report.environment["gpu"]["name"]
    assert report.skipped == []
    for r in report.results:
        assert r.to_dict()["includes_host_copies"] is True
        assert r.device_latency_ms["p50"] > 0 and r.peak_memory_bytes > 0


def test_onnx_variants_on_cuda_without_a_cuda_provider_skip_before_exporting(tmp_path, make_model):
    from toolkit.variants.build import build_runner
    from toolkit.variants.registry import variants
    from toolkit.variants.source import Source
    from toolkit.variants.store import ArtifactStore
    from toolkit.variants.verified import VariantSkipped

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model, info = make_model("smallresnet", 3, 16, 4)
    source = Source.from_model(model, info, device="cuda", store=ArtifactStore(tmp_path))
    for name, why in (("onnx-fp32", "no CUDA provider"), ("onnx-fp16", "no CUDA provider")):
        with pytest.raises(VariantSkipped, match=why):
            build_runner(variants()[name], source, 1)
    with pytest.raises(VariantSkipped, match="runs on cpu"):
        build_runner(variants()["onnx-int8-static"], source, 1)
    assert list(tmp_path.iterdir()) == []  # nothing was exported or quantized


def test_goals_say_by_how_much_they_were_missed():
    report = fake_report()
    report.goals = [
        {"goal": "fast", "value": 5.0, "target": 4.5, "passed": True, "why": ""},
        {"goal": "faster", "value": 1.8, "target": 2.0, "passed": False, "why": ""},
        {"goal": "measured", "value": None, "target": 2.0, "passed": False, "why": "no rows"},
    ]
    lines = format_table(report).splitlines()[-3:]
    assert lines == [
        "goal: fast: 5.00x (target 4.5x), met",
        "goal: faster: 1.80x (target 2x), NOT met: 10% short",
        "goal: measured: not measured (no rows)",
    ]


def test_device_only_call_uses_the_runners_model_autocast_and_layout(static_onnx, make_model):
    # On CUDA this call is timed with CUDA events; here it runs on the CPU tensors it prepares.
    from toolkit.artifacts.checkpoint import EagerRunner
    from toolkit.artifacts.onnx import OnnxRunner
    from toolkit.bench.run import _device_call

    model, info = make_model("smallresnet", 3, 16, 4)
    batch = np.random.default_rng(0).standard_normal((2, 3, 16, 16), dtype=np.float32)
    runner = EagerRunner(model=model, info=info, channels_last=True)
    call = _device_call(runner, batch)
    out = call()
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)
    np.testing.assert_allclose(out.numpy(), runner(batch), atol=1e-5)
    assert _device_call(OnnxRunner(static_onnx), batch) is None


def test_interleaved_windows_take_turns_until_every_step_settles():
    calls = []

    def step(name, times):
        values = iter(times)

        def run():
            calls.append(name)
            return next(values) / 1e3

        return run

    steady = step("a", itertools.repeat(10.0))
    settling = step("b", itertools.chain([50.0] * 4, itertools.repeat(20.0)))
    config = MeasureConfig(warmup=1, iters=2, windows=3, tolerance=0.05)
    result = measure_interleaved({"a": steady, "b": settling}, config)
    measured = calls[2:]  # after one warm-up call each
    assert measured == ["a", "a", "b", "b"] * 5  # windows alternate, in every round
    assert result["a"].stable and result["a"].windows == 5  # measured on beside b
    assert result["b"].stable and result["b"].windows == 5
    assert result["b"].latency_ms["p50"] == pytest.approx(20.0)


def test_interleaved_steps_are_compared_over_the_same_rounds():
    # The machine is twice as busy for the first 12 calls. Two identical steps: "a" agrees
    # with itself at once (three busy windows), "b" has one stray window and agrees only once
    # the load has passed. Compared over different moments they would read 20 ms and 10 ms,
    # both "stable"; compared over the same rounds they read the same.
    count = itertools.count()

    def step(stray_window: int | None):
        made = itertools.count()

        def run():
            load = 2.0 if next(count) < 12 else 1.0
            stray = 1.3 if stray_window is not None and next(made) // 2 == stray_window else 1.0
            return 10.0 * load * stray / 1e3

        return run

    config = MeasureConfig(warmup=0, iters=2, windows=3, tolerance=0.05)
    result = measure_interleaved({"a": step(None), "b": step(1)}, config)
    assert result["a"].stable and result["b"].stable
    assert result["a"].latency_ms["p50"] == pytest.approx(10.0)
    assert result["b"].latency_ms["p50"] == pytest.approx(10.0)
    assert result["a"].windows == result["b"].windows == 6


def test_interleaved_measurement_is_bounded_by_one_budget_for_all_steps():
    # Three steps whose windows never agree (1 ms and 2 ms in turn): the budget is shared.
    steps = {name: fake_step(itertools.cycle([1.0] * 4 + [2.0] * 4)) for name in "abc"}
    config = MeasureConfig(warmup=0, iters=4, windows=3, tolerance=0.05, max_time=0.2)
    result = measure_interleaved(steps, config)
    spent = sum(m.measured_s for m in result.values())
    one_round = 3 * 4 * 2.0 / 1e3
    assert 0.2 <= spent < 0.2 + one_round
    assert len({m.windows for m in result.values()}) == 1  # every step in every round
    assert not any(m.stable for m in result.values())
