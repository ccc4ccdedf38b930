"""Variants: one registry of names for bench and deploy, and the accuracy gate against the
fp32 baseline (confidence interval, McNemar's test, when the validation set is too small)."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.errors import DlkitError
from toolkit.variants.gate import (
    Z95,
    Gate,
    GateStatus,
    compare_with_baseline,
    mcnemar_worse_p,
    paired_drop_interval,
)
from toolkit.variants.registry import (
    default_variants,
    deploy_candidates,
    get_variant,
    resolve_variants,
    variants,
)


def answers(n: int, baseline_only: int, variant_only: int, both_wrong: int = 0):
    """Logits for n images where the baseline alone gets `baseline_only` right, the variant
    alone `variant_only`, and `both_wrong` are wrong for both."""
    labels = np.zeros(n, dtype=np.int64)
    right, wrong = np.eye(2)[0] * 5, np.eye(2)[1] * 5
    base = np.tile(right, (n, 1))
    variant = np.tile(right, (n, 1))
    i = 0
    for count, who in ((baseline_only, variant), (variant_only, base), (both_wrong, None)):
        for _ in range(count):
            for logits in (base, variant) if who is None else (who,):
                logits[i] = wrong
            i += 1
    return variant, base, labels


def test_a_drop_of_two_images_in_seventy_is_not_a_refusal():
    # The new user's case: 70 validation images, static int8 wrong on two more of them.
    c = compare_with_baseline(*answers(70, 2, 0), max_accuracy_drop=1.0)
    assert c.accuracy_drop_points == pytest.approx(2.857, abs=1e-3)
    assert c.passed and c.mcnemar_p == pytest.approx(0.25)
    assert c.drop_ci_points[0] < 0 < c.drop_ci_points[1]
    assert "not significant" in c.note and "cannot resolve a 1-point budget" in c.note
    assert "about " in c.note and " would" in c.note


def test_a_real_loss_over_budget_fails_with_its_interval():
    c = compare_with_baseline(*answers(400, 30, 2), max_accuracy_drop=1.0)
    assert not c.passed and c.gate.status == GateStatus.FAILED
    assert c.mcnemar_p < 0.001 and c.drop_ci_points[0] > 1.0
    assert str(c.gate).startswith("failed: loses 7.00 points (95% interval")
    assert c.note == ""  # 400 images resolve a 1-point budget here


def test_within_budget_passes_and_agreement_counts_both_ways():
    c = compare_with_baseline(*answers(100, 1, 1, both_wrong=3), max_accuracy_drop=1.0)
    assert c.passed and c.accuracy_drop_points == 0.0
    assert c.top1_agreement == pytest.approx(0.98)
    assert (c.baseline_only_right, c.variant_only_right) == (1, 1)


def test_no_disagreement_on_few_images_is_not_certainty():
    # The case: 36 validation images, the variant agrees on every one. The drop's
    # interval must still span what 36 images cannot rule out (Tango: ±z²/(n + z²)).
    c = compare_with_baseline(*answers(36, 0, 0), max_accuracy_drop=1.0)
    bound = 100 * Z95**2 / (36 + Z95**2)
    assert c.drop_ci_points == pytest.approx((-bound, bound))
    assert bound > 9 and c.passed and c.samples == 36
    more = compare_with_baseline(*answers(3600, 0, 0), max_accuracy_drop=1.0)
    assert more.drop_ci_points[1] < 0.2  # more images, a narrower interval
    one = compare_with_baseline(*answers(36, 1, 0), max_accuracy_drop=1.0)
    assert "36 validation images cannot resolve a 1-point budget" in one.note


def test_the_paired_interval_holds_its_estimate_and_its_bounds():
    for b, c, n in ((0, 0, 10), (3, 1, 50), (1, 7, 21), (30, 2, 400), (5, 0, 5), (0, 5, 5)):
        low, high = paired_drop_interval(b, c, n)
        assert -1 <= low <= (b - c) / n <= high <= 1 and high > low
        assert paired_drop_interval(c, b, n) == pytest.approx((-high, -low))  # mirror image
    assert paired_drop_interval(5, 0, 5)[1] == 1.0 and paired_drop_interval(0, 5, 5)[0] == -1.0


def test_mcnemar_exact_tail():
    assert mcnemar_worse_p(0, 0) == 1.0
    assert mcnemar_worse_p(3, 0) == pytest.approx(1 / 8)
    assert mcnemar_worse_p(0, 3) == 1.0
    assert mcnemar_worse_p(10, 0) == pytest.approx(1 / 1024)


def test_gates_read_back_from_their_text():
    for gate in (Gate.passed(), Gate.failed("loses 3.00 points: too many"), Gate()):
        assert Gate.parse(str(gate)) == gate
    assert str(Gate.failed("parity")) == "failed: parity"


def test_one_name_set_for_bench_and_deploy():
    known = variants()
    for device in ("cpu", "cuda"):
        assert set(default_variants(device)) <= set(known)
        assert set(deploy_candidates(device)) <= set(default_variants(device))
        assert all(known[n].servable for n in deploy_candidates(device))
    assert resolve_variants(["torchscript", "compile"], "cpu") == [
        "torchscript-fp32",
        "compile-fp32",
    ]
    assert get_variant("torchscript").name == "torchscript-fp32"
    assert get_variant("eager-amp-cl").precision_on("cuda") == "fp16"
    assert get_variant("eager-amp-cl").precision_on("cpu") == "bf16"
    with pytest.raises(DlkitError, match="unknown variant 'fast'"):
        get_variant("fast")


def test_fp16_weight_variants_run_on_cuda_only(make_model, tmp_path):
    from toolkit.variants.build import build_runner
    from toolkit.variants.source import Source
    from toolkit.variants.verified import VariantSkipped

    model, info = make_model("smallresnet", 3, 16, 4)
    source = Source.from_model(model, info, threads=1)
    known = variants()
    for name in ("eager-fp16-cl", "compile-fp16-cl", "onnx-fp16"):
        with pytest.raises(VariantSkipped, match="runs on CUDA"):
            build_runner(known[name], source, 1)
    for name in ("eager-fp16-cl", "compile-fp16-cl"):
        assert known[name].cast == "fp16" and known[name].channels_last
    assert known["eager-amp-cl"].cast is None and known["eager-amp-cl"].autocast


def test_a_cast_runner_feeds_its_own_precision(make_model):
    import torch

    from toolkit.artifacts.checkpoint import EagerRunner

    model, info = make_model("smallresnet", 3, 16, 4)
    batch = np.random.default_rng(0).standard_normal((2, 3, 16, 16), dtype=np.float32)
    reference = EagerRunner(model=model, info=info)(batch)
    runner = EagerRunner(model=make_model("smallresnet", 3, 16, 4)[0], info=info, cast="bf16")
    assert (
        runner.dtype == torch.bfloat16 and next(runner.model.parameters()).dtype == torch.bfloat16
    )
    out = runner(batch)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference, atol=0.1 * np.abs(reference).max())


@pytest.mark.slow
def test_pt2e_int8_runs_as_compiled_with_its_int8_kernels(make_model):
    # Compiled under no_grad, the runner's inference-mode calls recompiled without freezing
    # and ran fp32 convolutions: PT2E int8 at eager fp32's speed.
    import torch

    from toolkit.variants.build import build_runner
    from toolkit.variants.source import Source

    model, info = make_model("smallresnet", 1, 16, 4)
    runner = build_runner(get_variant("torch-int8-pt2e"), Source.from_model(model, info), 2)
    batch = np.random.default_rng(0).standard_normal((2, 1, 16, 16), dtype=np.float32)
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert runner(batch).shape == (2, 4)
