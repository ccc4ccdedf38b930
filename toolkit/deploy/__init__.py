"""`dlkit deploy`: from a checkpoint (or data) to the fastest verified Triton deployment.

Every variant the device suits is built, verified (parity, accuracy budget), benchmarked and
listed in the report with the gate that stopped it, if any; the fastest that passed is packaged
with the fp32 ONNX as a fallback and smoke-tested on a real tritonserver.
"""

from toolkit.deploy.pipeline import DeployConfig, deploy
from toolkit.deploy.selection import VariantReport, select_variant

__all__ = ["DeployConfig", "VariantReport", "deploy", "select_variant"]
