"""Side-by-side CPU timing of ASAP-Net's low-res convs: direct vs Winograd (issue 17, item 5).

One process: per preset, the low-res stream alone and the whole model, each with ``lowres_conv`` direct and
Winograd (F(2x2,3x3); ``--forms`` adds ``winograd4``, F(4x4,3x3)), in torch eager fp32
(``torch.inference_mode``) and in onnxruntime fp32 (CPU provider, ORT_ENABLE_ALL, ``--threads`` intra-op
threads) on a ``torch.onnx.export(dynamo=True)`` graph of each form. Every round runs every candidate
once in turn (alternated; the order rotates each round); the report gives per-candidate median, minimum and
CoV, and per scope x backend the per-round ratios direct / form (> 1: the form is faster). Weights: the
realistic random weights ``asapbench run`` times (:func:`asapbench.weights.realistic_model`). Outputs of
each form are compared with the direct form (max |diff|, torch) and each onnxruntime graph with torch.

    PYTHONPATH=. python results/cpu-profile/bench_winograd.py --threads 2 --rounds 7 \\
        [--presets cityscapes:256x512,facades1024:1024x1024] [--backends torch,onnxruntime] \\
        [--forms winograd] [--out results/cpu-profile/winograd-t2.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch


class _LowRes(torch.nn.Module):
    """The low-res stream of a generator on its own input (after the tent pre-downsampling)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m.lowres_stream(x)


def _session(module, x, threads):
    import onnxruntime as ort

    module.eval()
    with torch.no_grad():
        prog = torch.onnx.export(module, (x,), None, input_names=["x"], output_names=["y"], opset_version=20,
                                 dynamo=True, optimize=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(prog.model_proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _stats(v):
    med = statistics.median(v)
    cov = statistics.pstdev(v) / statistics.mean(v) if len(v) > 1 else 0.0
    return {"median_s": round(med, 4), "min_s": round(min(v), 4), "cov": round(cov, 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--presets", default="cityscapes:256x512,facades1024:1024x1024")
    ap.add_argument("--backends", default="torch,onnxruntime")
    ap.add_argument("--scopes", default="lowres,model")
    ap.add_argument("--forms", default="winograd", help="forms timed against direct (winograd, winograd4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from asapbench.bench import system
    from asapbench.counting import count_macs
    from asapbench.inputs import example_input
    from asapbench.models.asapnet import tent_downsample
    from asapbench.weights import realistic_model

    backends = a.backends.split(",")
    scopes = a.scopes.split(",")
    forms = ["direct"] + [f for f in a.forms.split(",") if f and f != "direct"]
    out = {"threads": a.threads, "rounds": a.rounds, "torch": torch.__version__, "forms": forms,
           "environment": system.snapshot(), "presets": {}}
    if "onnxruntime" in backends:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    for item in a.presets.split(","):
        preset, res = item.split(":")
        h, w = (int(v) for v in res.split("x"))
        base = realistic_model("asapnet", h, w, preset, a.seed).set_input_mode("onehot")
        models = {}
        for f in forms:
            m = copy.deepcopy(base)
            m.lowres_conv = f
            models[f] = m.prepare_for_inference()
        del base
        x = example_input(models["direct"], 1, h, w, seed=a.seed + 1)
        lr_x = x if models["direct"].pre_factor == 1 else tent_downsample(x, models["direct"].pre_factor)
        inputs = {"lowres": lr_x, "model": x}
        macs = count_macs(models["direct"], h, w)
        rec = {"preset": preset, "resolution": [h, w], "macs_direct": macs["macs"], "macs_streams": macs["streams"],
               "max_abs_vs_direct": {}, "max_abs_onnxruntime_vs_torch": {}}
        cands = {}
        with torch.inference_mode():
            ref = {s: (models["direct"].lowres_stream(lr_x) if s == "lowres" else models["direct"](x)) for s in scopes}
            for f, m in models.items():
                for s in scopes:
                    mod = m.lowres_stream if s == "lowres" else m
                    y = mod(inputs[s])
                    if f != "direct":
                        rec["max_abs_vs_direct"][f"{s}.{f}"] = float((y - ref[s]).abs().max())
                    if "torch" in backends:
                        cands[f"{s}.torch.{f}"] = lambda mod=mod, xi=inputs[s]: mod(xi)
        if "onnxruntime" in backends:
            for f, m in models.items():
                for s in scopes:
                    sess = _session(_LowRes(m) if s == "lowres" else m, inputs[s], a.threads)
                    feed = {"x": inputs[s].numpy()}
                    with torch.inference_mode():
                        want = (m.lowres_stream(inputs[s]) if s == "lowres" else m(inputs[s])).numpy()
                    rec["max_abs_onnxruntime_vs_torch"][f"{s}.{f}"] = float(abs(sess.run(None, feed)[0] - want).max())
                    cands[f"{s}.onnxruntime.{f}"] = lambda sess=sess, feed=feed: sess.run(None, feed)
        names = list(cands)
        times = {k: [] for k in names}
        with torch.inference_mode():
            for f in cands.values():  # warm-up
                f()
            for r in range(a.rounds):
                order = names[r % len(names):] + names[: r % len(names)]
                for k in order:
                    t0 = time.perf_counter()
                    cands[k]()
                    times[k].append(time.perf_counter() - t0)
        rec["times_s"] = {k: [round(t, 4) for t in v] for k, v in times.items()}
        rec["stats"] = {k: _stats(v) for k, v in times.items()}
        ratios = {}
        for k in names:
            s, b, f = k.split(".")
            if f == "direct":
                continue
            per = [d / t for d, t in zip(times[f"{s}.{b}.direct"], times[k], strict=True)]
            ratios[f"{s}.{b}.direct/{f}"] = {"per_round": [round(v, 3) for v in per],
                                             "median": round(statistics.median(per), 3),
                                             "min_ratio": round(min(times[f"{s}.{b}.direct"]) / min(times[k]), 3)}
        rec["speedup"] = ratios
        out["presets"][f"{preset}:{h}x{w}"] = rec
        print(json.dumps({k: rec[k] for k in ("preset", "stats", "speedup", "max_abs_vs_direct",
                                              "max_abs_onnxruntime_vs_torch")}, indent=1), flush=True)
        if a.out:  # after every preset, so a later failure keeps the earlier ones
            with open(a.out, "w") as fh:
                json.dump(out, fh, indent=1)
        del models, cands


if __name__ == "__main__":
    main()
