"""Where an OpenVINO decoder's step time goes: per-op-type kernel time (PERF_COUNT) against wall time.

    python benchmarks/openvino_profile.py PKG/decoder.xml ours
    /path/to/optimum-venv/bin/python benchmarks/openvino_profile.py OPTIMUM_DIR/openvino_model.xml optimum

Runs a 32-token prefill, then 30 one-token decode steps with 2 threads, and prints the executed
nodes' time by type per step and the steps per second (with profiling on). Works on our stateful
packages and on optimum-intel's stateful IR (both take input_ids, attention_mask, position_ids,
beam_idx). "ours" also sets the f32 inference and KV-cache precision our runtime uses.
"""
import sys, time, collections
import numpy as np
import openvino as ov

xml, kind = sys.argv[1], sys.argv[2]
core = ov.Core()
cfg = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2", "PERF_COUNT": "YES"}
if kind == "ours":
    cfg["INFERENCE_PRECISION_HINT"] = "f32"
    cfg["KV_CACHE_PRECISION"] = "f32"  # what our runtime sets (exact against FP32)
compiled = core.compile_model(xml, "CPU", cfg)
req = compiled.create_infer_request()
names = [p.get_any_name() for p in compiled.inputs]
P = 32
def feed(ids, total, pos):
    d = {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64)}
    if "position_ids" in names: d["position_ids"] = pos
    if "beam_idx" in names: d["beam_idx"] = np.zeros(1, np.int32)
    return d
req.reset_state()
req.infer(feed(np.full((1, P), 5, np.int64), P, np.arange(P)[None]))
totals = collections.Counter(); counts = collections.Counter()
steps = 30
t0 = time.perf_counter()
for i in range(steps):
    req.infer(feed(np.array([[7]]), P + i + 1, np.array([[P + i]])))
    for info in req.profiling_info:
        if info.status == info.Status.EXECUTED:
            totals[info.node_type] += info.real_time.total_seconds(); counts[info.node_type] += 1
dt = time.perf_counter() - t0
print(f"{kind}: {steps/dt:.1f} steps/s (with profiling on); per step by op type (ms):")
total = sum(totals.values())
for t, s in totals.most_common(12):
    print(f"  {t:28s} {1e3*s/steps:7.2f}  {100*s/total:5.1f}%  ({counts[t]//steps} nodes)")
print(f"  total                        {1e3*total/steps:7.2f}")
print("exec graph op types with 'Attention' or 'SDPA':", sorted({op.get_rt_info()['layerType'].astype(str) for op in compiled.get_runtime_model().get_ops() if 'ttention' in op.get_rt_info()['layerType'].astype(str) or 'SDPA' in op.get_rt_info()['layerType'].astype(str)}))
