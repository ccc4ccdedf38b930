"""The Triton release dlkit targets and its defaults, in one place (import-light: no
tritonclient here, so the CLI can show them in --help).

The Dockerfile's `ARG TRITON_VERSION` and the Kubernetes manifests use the release; a test
checks both, and that the pip-installed server the tests run is this release's Triton.
"""

from __future__ import annotations

TRITON_RELEASE = "24.10"  # NGC container release (yy.mm)
TRITON_SERVER_VERSION = "2.51.0"  # the Triton Inference Server that release ships
TRITON_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3"
# Dynamic batching without waiting: a wait only pays when requests come faster than the model
# runs (benchmarks/results/serving.md: at concurrency 1 a 2,000 µs delay served 0.27x the
# images/s of no delay; at concurrency 16 no delay was as fast).
DEFAULT_QUEUE_DELAY_US = 0
