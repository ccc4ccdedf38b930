"""Triton python-backend model: a dlkit classifier of any format.

Copied by `dlkit package --backend python` as `<version>/model.py` next to the artifact's files
and `runner.py`, which `dlkit package` writes from the format plugin's stub runner (ONNX
Runtime, TorchScript, OpenVINO, ...). Needs only numpy and that format's runtime in the Python
that Triton's stub runs, not dlkit itself.

Per request, the stub's Python work is most of what the server adds to the model itself, so
`execute` does as little as it can: a lone request (batching off, or a quiet moment) goes
straight from its input view to the runtime and back, with no concatenation or split; several
requests are copied once into a batch buffer kept between calls, and each response is a view
of the one output.
"""

import importlib.util
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Runs every request of a dynamic batch as one batch."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(folder, params["artifact_file"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.input_dtype = pb_utils.triton_string_to_numpy(config["input"][0]["data_type"])
        self.buffer = np.empty(0, self.input_dtype)  # grown to the largest batch seen
        gpu = args["model_instance_kind"] == "GPU"
        runner = _load_module(os.path.join(folder, "runner.py"))
        self.run = runner.make_runner(path, params, gpu, int(args["model_instance_device_id"]))

    def execute(self, requests):
        arrays = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        # NaN or ±inf in a request: refused with Triton's error, that request only (one sum
        # each: NaN and infinities survive it, and float64 cannot overflow on float32 input).
        finite = [bool(np.isfinite(a.sum(dtype=np.float64))) for a in arrays]
        if not all(finite):
            kept = [r for r, ok in zip(requests, finite, strict=True) if ok]
            answers = iter(self.execute(kept) if kept else [])
            return [next(answers) if ok else _refused() for ok in finite]
        if len(arrays) == 1:
            outputs = [self.run(np.asarray(arrays[0], dtype=self.input_dtype))]
        else:
            total = sum(len(a) for a in arrays)
            if len(self.buffer) < total:
                self.buffer = np.empty((total, *arrays[0].shape[1:]), self.input_dtype)
            batch = np.concatenate(arrays, out=self.buffer[:total])
            logits = self.run(batch)
            ends = np.cumsum([len(a) for a in arrays])
            outputs = [logits[end - len(a) : end] for a, end in zip(arrays, ends, strict=True)]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, out)]) for out in outputs
        ]


def _load_module(path):
    """The runner module beside this model.py (the stub does not put its folder on sys.path)."""
    spec = importlib.util.spec_from_file_location("dlkit_runner", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _refused():
    message = (
        "the input holds NaN or infinite values; send finite numbers (images through the "
        "model's preprocessing)"
    )
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)  # older stubs have no codes
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(error=error)
