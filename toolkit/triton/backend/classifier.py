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
