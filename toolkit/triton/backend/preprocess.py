"""Triton python-backend model: encoded image bytes (PNG, JPEG, ...) to the classifier's input.

Copied by `dlkit package --preprocess` as `<version>/model.py`. It imports dlkit's own
evaluation transform, so served images see exactly the pixels that `dlkit eval` sees; the Python
that Triton's stub runs needs dlkit installed (the Dockerfile does this).
"""

import io
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from toolkit.artifact import ArtifactInfo
from toolkit.data import build_transform, load_image
from toolkit.errors import DlkitError


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        info = ArtifactInfo.from_dict(json.loads(config["parameters"]["dlkit"]["string_value"]))
        self.channels = info.preprocessing.channels
        self.transform = build_transform(info.preprocessing)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def preprocess(self, data: bytes) -> np.ndarray:
        return self.transform(load_image(io.BytesIO(data), self.channels)).numpy()

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            try:
                batch = np.stack([self.preprocess(row.reshape(-1)[0]) for row in images])
            except DlkitError:
                # A corrupt image fails its own request, not the whole dynamic batch.
                message = "an image in the request is not a readable image file (PNG, JPEG, ...)"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))
                continue
            output = pb_utils.Tensor(self.output_name, batch.astype(np.float32))
            responses.append(pb_utils.InferenceResponse([output]))
        return responses
