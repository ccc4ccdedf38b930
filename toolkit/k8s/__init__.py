"""Kubernetes hand-over of a Triton model repository (`dlkit k8s`).

`options` checks what was asked for, `repository` what the pod will serve, `store` where it
finds the models, `metrics` the autoscaling signal, `manifests` builds the resources as plain
dicts, `readme` explains them, and `writer` writes the folder whole.
"""

from toolkit.k8s.options import K8sOptions
from toolkit.k8s.writer import K8sResult, write_k8s

__all__ = ["K8sOptions", "K8sResult", "write_k8s"]
