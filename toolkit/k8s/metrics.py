"""The autoscaling signal: Triton's average queue time per request, per pod.

Triton exports per-model counters on its metrics port; Prometheus scrapes them through the
ServiceMonitor (which adds `namespace` and `pod` labels), the Prometheus Adapter rule below
turns them into the per-pod custom metric `HPA_METRIC`, and the HorizontalPodAutoscaler reads
that name. Every name involved is defined here and nowhere else.

The rule sums both counters over all models of a pod before dividing, so the result is the
mean queue time of the pod's requests, weighted by traffic. (Triton's k8s-onprem example
averages per-model ratios, so idle models dilute it, divides by requests + 1, hard-codes the
`default` namespace, and takes a `delta` over one scrape interval.)
"""

from __future__ import annotations

QUEUE_SERIES = "nv_inference_queue_duration_us"  # counter: µs successful requests spent queued
REQUESTS_SERIES = "nv_inference_request_success"  # counter: successful requests (a batch is 1)
SERIES = (QUEUE_SERIES, REQUESTS_SERIES)
HPA_METRIC = "triton_queue_time_per_request_us"
WINDOW = "1m"
SCRAPE_INTERVAL = "15s"  # four samples per rate window


def _per_pod_rate(series: str) -> str:
    return f"sum by (<<.GroupBy>>) (rate({series}{{<<.LabelMatchers>>}}[{WINDOW}]))"


def adapter_rule() -> dict:
    """The Prometheus Adapter rule that produces `HPA_METRIC` for each Triton pod."""
    # A pod without traffic has 0 / 0; the floor (far below one request per window) makes it 0.
    query = f"{_per_pod_rate(QUEUE_SERIES)} / clamp_min({_per_pod_rate(REQUESTS_SERIES)}, 0.001)"
    return {
        "seriesQuery": f'{QUEUE_SERIES}{{namespace!="",pod!=""}}',
        "resources": {
            "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        },
        "name": {"matches": f"^{QUEUE_SERIES}$", "as": HPA_METRIC},
        "metricsQuery": query,
    }


def adapter_values() -> dict:
    """Helm values for the prometheus-community/prometheus-adapter chart with that rule."""
    return {"rules": {"custom": [adapter_rule()]}}


def hpa_metrics(target_queue_us: int, target_cpu: int) -> list[dict]:
    """HPA metrics: queue time per request (the signal), CPU utilisation (the fallback)."""
    return [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": HPA_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(target_queue_us)},
            },
        },
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": target_cpu},
            },
        },
    ]
