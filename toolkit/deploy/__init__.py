"""`dlkit deploy`: from a checkpoint (or data) to the fastest verified Triton deployment.

pipeline.py   DeployConfig and `deploy`: the stages in order, timed, failures named
stages.py     export, quantize, accuracy, benchmark: each reusing the toolkit's own
serving.py    package (rehearsed on a copy) and the smoke test on a real server
selection.py  a variant's report row, and the selection rule
report.py     DeployReport: report.json, report.md, accuracy_latency.png
"""

from toolkit.deploy.pipeline import DeployConfig, deploy
from toolkit.deploy.report import DeployReport
from toolkit.deploy.selection import VariantReport, select_variant

__all__ = ["DeployConfig", "DeployReport", "VariantReport", "deploy", "select_variant"]
