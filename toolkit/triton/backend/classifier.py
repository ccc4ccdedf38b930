"""Triton python-backend model: a dlkit ONNX or TorchScript classifier.

Copied by `dlkit package --backend python` as `<version>/model.py` next to `model.onnx` or
`model.pt`. Needs only numpy and onnxruntime (ONNX) or torch (TorchScript) in the Python that
Triton's stub runs, not dlkit itself.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Runs every request of a dynamic batch as one concatenated batch."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(folder, params["artifact_file"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.input_dtype = pb_utils.triton_string_to_numpy(config["input"][0]["data_type"])
        intra = int(params.get("intra_op_thread_count", "0"))
        inter = int(params.get("inter_op_thread_count", "0"))
        gpu = args["model_instance_kind"] == "GPU"
        if params["artifact_format"] == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = intra
            options.inter_op_num_threads = inter
            providers = ["CPUExecutionProvider"]
            if gpu:
                device = {"device_id": int(args["model_instance_device_id"])}
                providers.insert(0, ("CUDAExecutionProvider", device))
            session = ort.InferenceSession(path, options, providers=providers)
            feed = session.get_inputs()[0].name
            self.run = lambda batch: session.run(None, {feed: batch})[0]
        else:
            import torch

            if intra:
                torch.set_num_threads(intra)
            if inter:
                torch.set_num_interop_threads(inter)
            device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
            module = torch.jit.load(path, map_location=device).eval()

            def run(batch):
                with torch.inference_mode():
                    return module(torch.from_numpy(batch).to(device)).float().cpu().numpy()

            self.run = run

    def execute(self, requests):
        batches = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        sizes = np.cumsum([len(b) for b in batches])[:-1]
        batch = np.ascontiguousarray(np.concatenate(batches), dtype=self.input_dtype)
        outputs = np.split(np.asarray(self.run(batch), dtype=np.float32), sizes)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, o)]) for o in outputs]
