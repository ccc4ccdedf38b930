"""Triton python-backend model: a dlkit ONNX or TorchScript classifier.

Copied by `dlkit package --backend python` as `<version>/model.py` next to `model.onnx` or
`model.pt`. Needs only numpy and onnxruntime (ONNX) or torch (TorchScript) in the Python that
Triton's stub runs, not dlkit itself.

Per request, the stub's Python work is most of what the server adds to the model itself, so
`execute` does as little as it can: a lone request (batching off, or a quiet moment) goes
straight from its input view to the runtime and back, with no concatenation or split; several
requests are copied once into a batch buffer kept between calls, and each response is a view
of the one output.
"""

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
        intra = int(params.get("intra_op_thread_count", "0"))
        inter = int(params.get("inter_op_thread_count", "0"))
        gpu = args["model_instance_kind"] == "GPU"
        if params["artifact_format"] == "onnx":
            self.run = _onnx_runner(path, intra, inter, gpu, args["model_instance_device_id"])
        else:
            self.run = _torchscript_runner(
                path, intra, inter, gpu, args["model_instance_device_id"]
            )

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


def _refused():
    message = (
        "the input holds NaN or infinite values; send finite numbers (images through the "
        "model's preprocessing)"
    )
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)  # older stubs have no codes
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(error=error)


def _onnx_runner(path, intra, inter, gpu, device_id):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = inter
    providers = ["CPUExecutionProvider"]
    if gpu:
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(device_id)}))
    session = ort.InferenceSession(path, options, providers=providers)
    feed = session.get_inputs()[0].name

    def run(batch):
        return np.asarray(session.run(None, {feed: batch})[0], dtype=np.float32)

    return run


def _torchscript_runner(path, intra, inter, gpu, device_id):
    import torch

    if intra:
        torch.set_num_threads(intra)
    if inter:
        torch.set_num_interop_threads(inter)
    device = f"cuda:{device_id}" if gpu else "cpu"
    module = torch.jit.load(path, map_location=device).eval()

    def run(batch):
        if not batch.flags.writeable:  # a view of Triton's shared memory: torch wants its own
            batch = batch.copy()
        with torch.inference_mode():
            return module(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    return run
