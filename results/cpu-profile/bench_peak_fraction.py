"""ASAP-Net's pixelwise stream against the machine's measured fp32 GEMM peak, per backend (issue 17, item 5).

    PYTHONPATH=. python results/cpu-profile/bench_peak_fraction.py [--presets facades1024,facades2048]
        [--rounds 5] [--threads 2] [--out results/cpu-profile/peak-fraction-t2.json]

One process, alternated rounds (asapbench.bench.alternate): each round runs, in turn, the pixelwise stream alone
(the tiles' MLPs on the low-res stream's parameters, the same inputs for all) in PyTorch eager (the fast path, and
the fused kernel of pixelwise_impl="fused": asapbench.models.fused_kernel, built for this machine), in onnxruntime and in OpenVINO on its ONNX export as asapbench exports it now (tiles in groups of about
GRAPH_CHUNK_PIXELS pixels, one chain per group) and on the export of one product per layer over all tiles (the
earlier graph: the groups' effect, side by side), then the peak GEMM of each library exactly as `asapbench run`
measures it (asapbench.bench.profile: a 2048^3 torch.mm, onnxruntime MatMul, OpenVINO MatMul; fp32).

Reported per candidate: median and minimum ms, GFLOP/s (2 x the pixelwise MACs of asapbench.counting / median
time), the fraction of its own library's peak (median of that GEMM's timed runs in the same rounds) and of the
machine's peak (the highest of the three). Outputs are checked against PyTorch's reference formulation first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _p in (ROOT, Path(__file__).resolve().parent):  # the package; bench_pixelwise.py's export helpers
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="facades1024,facades2048")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=1, help="timed runs per candidate per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--table", default=None, metavar="JSON", help="only print the markdown table of a saved result")
    a = ap.parse_args(argv)
    if a.table:
        print(table(json.loads(Path(a.table).read_text())))
        return 0

    import copy
    import tempfile

    import numpy as np
    import torch

    import asapbench.models.asapnet as A
    from bench_pixelwise import _onnx, _Pixelwise
    from asapbench.bench.alternate import alternate
    from asapbench.bench.profile import GEMM_LIBRARY, _gemm_fn
    from asapbench.bench.runner_openvino import compile_onnx
    from asapbench.bench.system import snapshot
    from asapbench.counting import count_macs
    from asapbench.inputs import example_input
    from asapbench.registry import get_preset
    from asapbench.weights import realistic_model
    from exporters.ort import make_session

    torch.set_num_threads(a.threads)
    from asapbench.models import fused_kernel

    out = {"fused_kernel_vector_floats": fused_kernel.load().asapbench_pixelwise_vector_width(),
           "environment": snapshot(["python", "results/cpu-profile/bench_peak_fraction.py", *(argv or sys.argv[1:])]),
           "threads": a.threads, "rounds": a.rounds, "iters": a.iters, "graph_chunk_pixels": A.GRAPH_CHUNK_PIXELS,
           "presets": {}}
    tmp = tempfile.TemporaryDirectory(prefix="asapbench-peak-")
    for preset in a.presets.split(","):
        h, w = get_preset("asapnet", preset).resolution
        m = realistic_model("asapnet", h, w, preset, 0).eval()
        x = example_input(m, 1, h, w, seed=1)
        with torch.inference_mode():
            params = m.lowres(x)
        hr = x[:, :-1] if m.lr_instance else x
        pw_macs = count_macs(m, h, w)["streams"]["pixelwise"]
        with torch.inference_mode():
            ref = m.pixelwise_reference(hr, params).numpy()
        feeds = {"hr": hr.numpy(), "params": params.numpy()}
        files = {}
        for graph, chunk in (("grouped", A.GRAPH_CHUNK_PIXELS), ("one-product", 1 << 40)):
            old = A.GRAPH_CHUNK_PIXELS
            A.GRAPH_CHUNK_PIXELS = chunk
            try:
                with torch.no_grad():
                    proto = _onnx(_Pixelwise(m), (hr, params), ["hr", "params"])
            finally:
                A.GRAPH_CHUNK_PIXELS = old
            path = Path(tmp.name) / f"{preset}-{graph}.onnx"
            path.write_bytes(proto.SerializeToString())
            files[graph] = (path, len(proto.graph.node))
        cands, libs, diffs = {}, {}, {}
        with torch.inference_mode():
            got = m.pixelwise(hr, params).numpy()
        diffs["torch"] = float(np.abs(got - ref).max())
        cands["torch"] = lambda m=m, hr=hr, params=params: m.pixelwise(hr, params)
        libs["torch"] = "torch"
        fused = copy.copy(m)  # the same modules and weights, the fused formulation
        fused.pixelwise_impl = "fused"
        with torch.inference_mode():
            diffs["torch fused"] = float(np.abs(fused.pixelwise(hr, params).numpy() - ref).max())
        cands["torch fused"] = lambda fused=fused, hr=hr, params=params: fused.pixelwise(hr, params)
        libs["torch fused"] = "torch"
        for graph, (path, _n) in files.items():
            sess = make_session(str(path), threads=a.threads)
            feed = dict(zip([i.name for i in sess.get_inputs()], (feeds["hr"], feeds["params"])))
            diffs[f"onnxruntime {graph}"] = float(np.abs(sess.run(None, feed)[0] - ref).max())
            cands[f"onnxruntime {graph}"] = lambda sess=sess, feed=feed: sess.run(None, feed)
            libs[f"onnxruntime {graph}"] = "onnxruntime"
            compiled, eff = compile_onnx(path, "fp32", a.threads)
            req = compiled.create_infer_request()
            ovfeed = {0: feeds["hr"], 1: feeds["params"]}
            diffs[f"openvino {graph}"] = float(np.abs(req.infer(ovfeed)[0] - ref).max())
            cands[f"openvino {graph}"] = lambda req=req, ovfeed=ovfeed: req.infer(ovfeed)
            libs[f"openvino {graph}"] = "openvino"
        closers = []
        for lib in ("torch", "onnxruntime", "openvino"):
            fn, op, close = _gemm_fn(lib, "fp32", 2048, a.threads)
            cands[f"peak {lib}"] = fn
            if callable(close):
                closers.append(close)
        with torch.inference_mode():
            times = alternate(list(cands.items()), a.rounds, warmup=1, iters=a.iters)
        for c in closers:
            c()
        med = {k: statistics.median([t for r in v for t in r]) for k, v in times.items()}
        low = {k: min(t for r in v for t in r) for k, v in times.items()}
        peak = {lib: 2 * 2048**3 / (med[f"peak {lib}"] / 1e3) / 1e9 for lib in ("torch", "onnxruntime", "openvino")}
        machine = max(peak.values())
        rows = []
        for k in cands:
            if k.startswith("peak"):
                continue
            gf = 2 * pw_macs / (med[k] / 1e3) / 1e9
            rows.append({"candidate": k, "median_ms": med[k], "min_ms": low[k], "gflops": gf,
                         "library": GEMM_LIBRARY[libs[k]], "fraction_of_library_peak": gf / peak[libs[k]],
                         "fraction_of_machine_peak": gf / machine, "max_abs_vs_reference": diffs[k]})
        rec = {"resolution": [h, w], "pixelwise_macs": pw_macs, "onnx_nodes": {g: n for g, (_, n) in files.items()},
               "peak_gflops": peak, "machine_peak_gflops": machine, "rows": rows,
               "times_ms": {k: v for k, v in times.items()}}
        out["presets"][preset] = rec
        print(f"{preset} {h}x{w}: peaks " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()) + " GFLOP/s")
        for r in rows:
            print(f"  {r['candidate']:<26} {r['median_ms']:8.1f} ms  {r['gflops']:6.1f} GFLOP/s  "
                  f"{100 * r['fraction_of_library_peak']:5.1f}% of its library's peak, "
                  f"{100 * r['fraction_of_machine_peak']:5.1f}% of the machine's  (max |diff| {r['max_abs_vs_reference']:.1e})",
                  flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps(out, indent=1))
    tmp.cleanup()
    return 0


def table(doc: dict) -> str:
    """The markdown table of a saved result (README tables are printed by this, never typed)."""
    env = doc["environment"]
    lines = [f"`{env.get('command', '').removeprefix('asapbench ')}` on {env.get('cpu_model', '?')}, {doc['threads']} threads, {doc['rounds']} alternated rounds x {doc['iters']} "
             f"run(s), asapbench git {env.get('git_sha', '?')}, {env.get('timestamp', '')}", "",
             "| preset | candidate | median ms | min ms | GFLOP/s | % of its library's peak | % of the machine's peak | peak GFLOP/s (torch / onnxruntime / OpenVINO) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for preset, rec in doc["presets"].items():
        pk = rec["peak_gflops"]
        peaks = f"{pk['torch']:.0f} / {pk['onnxruntime']:.0f} / {pk['openvino']:.0f}"
        for r in rec["rows"]:
            lines.append(f"| {preset} {rec['resolution'][0]}x{rec['resolution'][1]} | {r['candidate']} | {r['median_ms']:.0f} | "
                         f"{r['min_ms']:.0f} | {r['gflops']:.1f} | {100 * r['fraction_of_library_peak']:.0f}% | "
                         f"{100 * r['fraction_of_machine_peak']:.0f}% | {peaks} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
