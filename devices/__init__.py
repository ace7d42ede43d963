"""Device profiles, host detection and the benchmark harness (``edge_sdk.devices``).

Layering rule: nothing here imports torch, transformers, diffusers or nncf. The harness runs
packages through ``edge_sdk.runtimes`` and measures them.
"""
