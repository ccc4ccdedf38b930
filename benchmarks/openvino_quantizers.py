"""Does NNCF earn its place? OpenVINO int8 from NNCF's post-training quantization of the fp32
IR against OpenVINO on the static int8 QDQ file dlkit calibrates with ONNX Runtime (the
`openvino-int8` variant), on the same calibration inputs, in one run:

- accuracy on the digits (the model given by --checkpoint): each against eager fp32's answers
  on the validation split (top-1 agreement) and the labels;
- speed on ResNet-18 (random weights), batch 1, one thread, calls alternated between the two.

NNCF is not a dlkit dependency: `pip install nncf` first.

    python benchmarks/openvino_quantizers.py --checkpoint runs/digits/best.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from cpu_runtimes import resnet18_source  # the script beside this one

from toolkit.cpu import cpu_info
from toolkit.variants.registry import get_variant
from toolkit.variants.source import Source
from toolkit.variants.verified import verified_artifact

RESULTS = Path(__file__).parent / "results"
CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1}


def quantizers(source: Source, calibration: np.ndarray) -> dict:
    """Both int8 models of `source`, compiled for one thread."""
    import nncf

    core = ov.Core()
    fp32 = core.read_model(str(verified_artifact(get_variant("openvino-fp32"), source).path))
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    by_nncf = nncf.quantize(fp32, dataset, subset_size=len(calibration))
    qdq = str(verified_artifact(get_variant("openvino-int8"), source).path)
    return {
        "nncf": core.compile_model(by_nncf, "CPU", CONFIG),
        "ort-qdq": core.compile_model(qdq, "CPU", CONFIG),
    }


def accuracy(checkpoint: Path) -> dict:
    source = Source.from_checkpoint(checkpoint, threads=1)
    models = quantizers(source, source.calibration())
    reference, labels = source.reference_answers()
    images = np.stack([x.numpy() for x, _ in source.validation()])
    out = {"eager_fp32_accuracy": float((reference == labels).mean()), "images": len(labels)}
    for name, compiled in models.items():
        answers = np.concatenate([compiled(images[i : i + 1])[0] for i in range(len(images))])
        predicted = answers.argmax(1)
        out[name] = {
            "accuracy": float((predicted == labels).mean()),
            "top1_agreement": float((predicted == reference).mean()),
        }
    return out


def speed(rounds: int = 60) -> dict:
    torch.set_num_threads(1)
    source = resnet18_source()
    calibration = source.calibration()[:64]
    requests = {k: m.create_infer_request() for k, m in quantizers(source, calibration).items()}
    batch = calibration[:1]
    times: dict[str, list[float]] = {k: [] for k in requests}
    for _ in range(rounds):
        for name, request in requests.items():
            start = time.perf_counter()
            request.infer({0: batch})
            times[name].append(time.perf_counter() - start)
    return {k: float(np.median(v[rounds // 10 :]) * 1000) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    model, flags = cpu_info()
    results = {
        "command": "python benchmarks/openvino_quantizers.py " + " ".join(sys.argv[1:]),
        "cpu": model,
        "flags": sorted(f for f in flags if f.startswith(("avx", "amx"))),
        "digits": accuracy(args.checkpoint),
        "resnet18_p50_ms_one_thread": speed(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "openvino_quantizers.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
