"""Triton python-backend model: encoded image bytes (PNG, JPEG, ...) to the classifier's input.

Copied by `dlkit package --preprocess` as `<version>/model.py`. It imports dlkit's own
evaluation transform, so served images see exactly the pixels that `dlkit eval` sees; the Python
that Triton's stub runs needs dlkit installed (the Dockerfile does this).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from toolkit.artifacts.metadata import parse_info
from toolkit.data import build_transform, load_image
from toolkit.errors import DlkitError


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        info = parse_info(config["parameters"]["dlkit"]["string_value"], config["name"])
        self.channels = info.preprocessing.channels
        self.transform = build_transform(info.preprocessing)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def preprocess(self, data: bytes, index: int) -> np.ndarray:
        image = load_image(bytes(data), self.channels, name=f"image {index} of the request")
        return self.transform(image).numpy()

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            try:
                rows = [self.preprocess(row.reshape(-1)[0], i) for i, row in enumerate(images)]
            except DlkitError as exc:
                # A bad image fails its own request, not the whole dynamic batch, and says
                # which image it was (dlkit's message, not a Python trace).
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            output = pb_utils.Tensor(self.output_name, np.stack(rows).astype(np.float32))
            responses.append(pb_utils.InferenceResponse([output]))
        return responses
