"""Constants of the Triton dlkit serves with, import-light (the CLI reads them for --help)."""

# Triton 2.51: the pip-installed server dlkit tests against, and the NGC image release that
# ships it (the Dockerfile's TRITON_VERSION).
TRITON_RELEASE = "24.10"
DEFAULT_QUEUE_DELAY_US = 2000
