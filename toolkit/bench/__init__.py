"""`dlkit bench`: latency and throughput of model variants that an expert would trust.

    harness.py      warm-up, measurement windows until they agree, percentiles, CUDA events
    environment.py  the machine a figure was measured on; peak memory
    variants.py     the variant registry: one small builder per variant
    run.py          the sweep over variants and batch sizes, skip reasons, speed-ups
    report.py       terminal table, JSON, Markdown and PNG

Only `variants.py` is imported by the CLI at start-up, and it imports nothing heavy.
"""
