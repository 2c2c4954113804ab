"""Side-by-side CPU timing of ASAP-Net's pixelwise formulations and of bf16 (issue 11, items 1 and 3).

One process, one thread setting per run: torch eager reference vs torch eager fast vs onnxruntime
(fast export; also the reference export) for the whole model and for the pixelwise stream alone,
plus a 2048^3 fp32 torch.mm (the machine's GEMM rate) timed in the same rounds. On a CPU with native
bf16 (asapbench.bench.system.cpu_bf16_support) also: the whole model cast to bf16, ASAP-Net's mixed
variant (pixelwise stream in bf16, low-res stream in fp32; what `asapbench run --precision bf16` times
when the whole cast fails its gate), the pixelwise stream alone in bf16, and a bf16 torch.mm; each bf16
model's output is judged against fp32 by the gate `run` applies (PSNR >= 40 dB). Every round runs
each candidate once in turn (A, B, C, ... alternated), the report gives per-candidate medians.
Random weights come from asapbench.weights.realistic_model, the builder `run` uses (non-saturated output).

    PYTHONPATH=. python results/cpu-profile/bench_pixelwise.py --threads 2 --reps 5 --out results/cpu-profile/pixelwise-t2.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch


class _Pixelwise(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, hr, params):
        return self.m.pixelwise(hr, params)


def _onnx(module, args, names):

    module.eval()
    prog = torch.onnx.export(module, args, None, input_names=names, output_names=["y"], opset_version=20,
                             dynamo=True, optimize=True)
    proto = prog.model_proto
    return proto


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sizes", default="cityscapes:256x512,facades1024:1024x1024,facades2048:2048x2048")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from asapbench import create_generator
    from asapbench.bench import system
    from asapbench.counting import count_macs
    from asapbench.inputs import example_input
    from asapbench.weights import realistic_model
    from exporters.ort import make_session
    from exporters.validate import judge_outputs

    bf16, bf16_why = system.cpu_bf16_support()
    gemm_a, gemm_b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gemm_ab, gemm_bb = gemm_a.bfloat16(), gemm_b.bfloat16()
    out = {"threads": a.threads, "reps": a.reps, "torch": torch.__version__, "bf16": [bf16, bf16_why],
           "environment": system.snapshot(), "sizes": {}}
    import onnxruntime

    out["onnxruntime"] = onnxruntime.__version__
    for item in a.sizes.split(","):
        preset, res = item.split(":")
        h, w = (int(v) for v in res.split("x"))
        m = realistic_model("asapnet", h, w, preset, seed=0)
        ref = create_generator("asapnet", preset, pixelwise_impl="reference").eval()
        ref.load_state_dict(m.state_dict())
        x = example_input(m, 1, h, w, seed=1)
        macs = count_macs(m, h, w)
        with torch.no_grad():
            params = m.lowres(x)
            hr = x[:, :-1] if m.lr_instance else x
            y_fast, y_ref = m(x), ref(x)
            pw_fast = m.pixelwise(hr, params)
            pw_ref = ref.pixelwise(hr, params)
        rec = {"preset": preset, "resolution": [h, w], "macs": macs["macs"], "macs_streams": macs["streams"],
               "out_std": float(y_ref.std()), "max_abs_fast_vs_ref": float((y_fast - y_ref).abs().max()),
               "max_abs_pixelwise_fast_vs_ref": float((pw_fast - pw_ref).abs().max())}
        big = h * w >= 2048 * 2048
        cands = {}
        if not big:
            cands["model.torch.reference"] = lambda ref=ref, x=x: ref(x)
            cands["model.torch.fast"] = lambda m=m, x=x: m(x)
            cands["pixelwise.torch.reference"] = lambda ref=ref, hr=hr, params=params: ref.pixelwise(hr, params)
        cands["pixelwise.torch.fast"] = lambda m=m, hr=hr, params=params: m.pixelwise(hr, params)
        if bf16:
            whole = copy.deepcopy(m).to(torch.bfloat16)
            _, mixed = m.mixed_precision_variant(torch.bfloat16)
            xb, hb, pb = x.bfloat16(), hr.bfloat16(), params.bfloat16()
            gate = {}
            with torch.no_grad():
                if not big:
                    for name, y in (("model.torch.bf16-whole", whole(xb)), ("model.torch.bf16-mixed", mixed(x))):
                        r = judge_outputs(y_fast.numpy(), y.float().numpy(), "fp16")
                        gate[name] = {"psnr_db": round(r["psnr_db"], 2), "passed": r["passed"]}
                r = judge_outputs(pw_fast.numpy(), m.pixelwise(hb, pb).float().numpy(), "fp16")
                gate["pixelwise.torch.bf16"] = {"psnr_db": round(r["psnr_db"], 2), "passed": r["passed"]}
            rec["bf16_vs_fp32"] = gate
            if not big:
                cands["model.torch.bf16-whole"] = lambda whole=whole, xb=xb: whole(xb)
                cands["model.torch.bf16-mixed"] = lambda mixed=mixed, x=x: mixed(x)
            cands["pixelwise.torch.bf16"] = lambda m=m, hb=hb, pb=pb: m.pixelwise(hb, pb)
        xs, hs, ps = x.numpy(), hr.numpy(), params.numpy()
        with torch.no_grad():
            sessions = {}
            if not big:
                sessions["model.onnxruntime.fast"] = (make_session(_onnx(m, (x,), ["label"]), threads=a.threads), {"label": xs})
                sessions["model.onnxruntime.reference"] = (make_session(_onnx(ref, (x,), ["label"]), threads=a.threads), {"label": xs})
            sessions["pixelwise.onnxruntime.fast"] = (make_session(_onnx(_Pixelwise(m), (hr, params), ["hr", "params"]), threads=a.threads),
                                                     {"hr": hs, "params": ps})
            if not big:
                sessions["pixelwise.onnxruntime.reference"] = (
                    make_session(_onnx(_Pixelwise(ref), (hr, params), ["hr", "params"]), threads=a.threads), {"hr": hs, "params": ps})
        for k, (sess, feed) in sessions.items():
            got = sess.run(None, feed)[0]
            want = (y_ref if k.startswith("model") else pw_ref).numpy()
            rec[f"max_abs_{k}_vs_torch_ref"] = float(abs(got - want).max())
            cands[k] = lambda sess=sess, feed=feed: sess.run(None, feed)
        cands["gemm2048"] = lambda: torch.mm(gemm_a, gemm_b)
        if bf16:
            cands["gemm2048.bf16"] = lambda: torch.mm(gemm_ab, gemm_bb)
        times = {k: [] for k in cands}
        with torch.no_grad():
            for f in cands.values():  # warm-up
                f()
            for _ in range(a.reps):
                for k, f in cands.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        gemm_rate = 2 * 2048**3 / med["gemm2048"] / 1e9
        rec["gemm_gflops"] = round(gemm_rate, 2)
        rec["times_s"] = {k: [round(t, 4) for t in v] for k, v in times.items()}
        rec["median_s"] = {k: round(v, 4) for k, v in med.items()}
        pw_flops = 2 * macs["streams"]["pixelwise"]
        rec["pixelwise_gflops"] = {k: round(pw_flops / v / 1e9, 2) for k, v in med.items() if k.startswith("pixelwise")}
        if bf16:
            rec["gemm_bf16_gflops"] = round(2 * 2048**3 / med["gemm2048.bf16"] / 1e9, 2)
        rec["pixelwise_fraction_of_gemm"] = {  # each beside the GEMM rate of its own precision
            k: round(v / (rec["gemm_bf16_gflops"] if "bf16" in k else gemm_rate), 3)
            for k, v in rec["pixelwise_gflops"].items()}
        fp32_of = {"model.torch.bf16-whole": "model.torch.fast", "model.torch.bf16-mixed": "model.torch.fast",
                   "pixelwise.torch.bf16": "pixelwise.torch.fast"}
        rec["bf16_speedup_vs_torch_fp32"] = {k: round(med[v] / med[k], 2) for k, v in fp32_of.items() if k in med}
        for scope in ("model", "pixelwise"):
            r = med.get(f"{scope}.torch.reference")
            if r:
                rec[f"{scope}_speedup_vs_torch_reference"] = {
                    k: round(r / v, 2) for k, v in med.items() if k.startswith(scope) and "bf16" not in k}
        out["sizes"][f"{preset}:{h}x{w}"] = rec
        print(json.dumps(rec, indent=1), flush=True)
        if a.out:  # after every size, so a later failure keeps the earlier ones
            with open(a.out, "w") as f:
                json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
