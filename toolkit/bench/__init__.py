"""`dlkit bench`: latency and throughput of model variants that an expert would trust.

    harness.py      warm-up, measurement windows until they agree, percentiles, CUDA events
    environment.py  the machine a figure was measured on; peak memory
    run.py          the sweep over variants and batch sizes, skip reasons, speed-ups
    results.py      typed rows and the report they make
    report.py       terminal table, JSON, Markdown and PNG
    load.py         closed-loop load on a served model (`bench --url`, `dlkit tune`)

The variants themselves (what each is, how it is built) live in `toolkit.variants`. The CLI
imports none of these modules at start-up.
"""
