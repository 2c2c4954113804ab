"""The bf16 parity gate of `asapbench run` on ASAP-Net with random and with trained weights (issue 17, item 5).

    PYTHONPATH=. python results/bf16-gate/gate_bf16.py --checkpoint RUN_FOLDER_OR_PTH --labels DIR \
        [--res 256x512] [--count 4] [--out results/bf16-gate]

For each weight set -- the realistic random weights `asapbench run` times (asapbench.weights.realistic_model,
seed 0) and the trained generator of --checkpoint (an `asapbench train` run folder or .pth) -- and each input
(the first --count label maps of --labels, e.g. Cityscapes *_labelIds.png with their *_instanceIds.png, then
the project's synthetic label maps), it runs the fp32 model and each bf16 form the torch runner tries, in its
order (asapbench.bench.runner_torch.cast_candidates: the whole model and input cast to bfloat16, then ASAP-Net's
mixed variant: pixelwise stream in bf16, low-res stream in fp32), and judges the bf16 output against the fp32
one with the gate `run` applies (exporters.validate.judge_outputs, fp16 criteria: PSNR >= 40 dB, no NaN/Inf).

This measures accuracy only, so it runs on any CPU (PyTorch computes bfloat16 without native bf16 instructions,
slowly); whether bf16 is *timed* is `asapbench run`'s business (CPUs with AVX-512 BF16 or AMX). Writes gate.json
(every judgement, the environment, the checkpoint's step and sha256) and gate.md.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEEP = ("passed", "psnr_db", "max_abs_err", "nonfinite")


def judge_model(model, inputs: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Every bf16 form of ``model`` judged on every input: [{input, form, passed, psnr_db, ...}]."""
    import torch

    from asapbench.bench.runner_torch import GATED, cast_candidates
    from exporters.validate import judge_outputs

    out = []
    with torch.inference_mode():
        refs = [model(x).float().numpy() for _, x in inputs]
    for make in cast_candidates(model, "bf16"):
        made = make()
        if made is None:
            continue
        what, m, in_dtype = made
        m.eval()
        for (desc, x), ref in zip(inputs, refs):
            with torch.inference_mode():
                got = m(x.to(in_dtype)).float().numpy()
            rec = judge_outputs(ref, got, GATED["bf16"])
            out.append({"input": desc, "form": what, **{k: rec[k] for k in KEEP}, "fp32_output_std": float(ref.std())})
        del m
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="an `asapbench train` run folder or generator .pth (asapnet)")
    ap.add_argument("--labels", help="folder of label maps (e.g. Cityscapes *_labelIds.png)")
    ap.add_argument("--res", default="256x512")
    ap.add_argument("--count", type=int, default=4, help="real label maps to judge on (then 2 synthetic ones)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--render", default=None, metavar="JSON", help="only write gate.md again from a saved gate.json")
    a = ap.parse_args(argv)
    if a.render:
        import json

        from asapbench.fsutil import atomic_write_text

        doc = json.loads(Path(a.render).read_text())
        atomic_write_text(Path(a.render).with_name("gate.md"), markdown(doc))
        return 0
    if not a.checkpoint or not a.labels:
        ap.error("--checkpoint and --labels are required (or --render JSON)")

    import torch

    from asapbench.bench.system import snapshot
    from asapbench.checkpoint import load_generator, resolve_checkpoint_path
    from asapbench.fsutil import atomic_write_json, atomic_write_text, ensure_writable_dir
    from asapbench.inputs import example_input, input_from_label_maps, label_map_files
    from asapbench.resolution import parse_resolution
    from asapbench.weights import realistic_model

    torch.set_num_threads(a.threads)
    h, w = parse_resolution(a.res)
    out = ensure_writable_dir(a.out, "--out folder")
    ckpt = resolve_checkpoint_path(a.checkpoint)
    trained = load_generator("asapnet", None, str(ckpt)).prepare_for_inference().eval()
    random_ = realistic_model("asapnet", h, w, trained.preset, 0).eval()
    n_files = len(label_map_files(a.labels))
    results: dict[str, Any] = {}
    for name, model in (("random", random_), ("trained", trained)):
        inputs = [input_from_label_maps(model, a.labels, 1, h, w, index=i) for i in range(min(a.count, n_files))]
        inputs += [(f"synthetic label map (asapbench.inputs.random_label_map, seed {s})", example_input(model, 1, h, w, seed=s))
                   for s in (1000, 2000)]
        print(f"{name}: judging {len(inputs)} inputs", file=sys.stderr)
        results[name] = judge_model(model, inputs)
    step = None
    run_json = ckpt.parent / "run.json"
    state_file = ckpt.parent / "train_state.pt"
    if state_file.exists():
        try:
            from asapbench.checkpoint import safe_torch_load

            step = int(safe_torch_load(state_file, "training state").get("step"))
        except Exception:  # noqa: BLE001 - the step is context only
            step = None
    env = snapshot(["python", "results/bf16-gate/gate_bf16.py", *(argv if argv is not None else sys.argv[1:])])
    doc = {"environment": env, "resolution": [h, w], "preset": trained.preset,
           "checkpoint": {"file": ckpt.name, "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(), "step": step,
                          "run_json": run_json.read_text() if run_json.exists() else None},
           "results": results}
    atomic_write_json(out / "gate.json", doc)
    atomic_write_text(out / "gate.md", markdown(doc))
    print(markdown(doc))
    return 0


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    command = env.get("command", "").removeprefix("asapbench ")  # the environment snapshot names the CLI
    lines = [f"# bf16 gate of ASAP-Net ({doc['preset']}, {doc['resolution'][0]}x{doc['resolution'][1]}): random vs trained weights",
             "",
             f"`{command}` on {env.get('cpu_model', '?')}; torch {env.get('torch_version', '?')}; asapbench git "
             f"{env.get('git_sha', '?')}; {env.get('timestamp', '')}. Trained weights: `{doc['checkpoint']['file']}` (step "
             f"{doc['checkpoint']['step']}, sha256 {doc['checkpoint']['sha256'][:12]}). The gate: PSNR of the bf16 output "
             "against the fp32 output >= 40 dB, no NaN/Inf (what `asapbench run --precision bf16` requires before it times a form).",
             "", "| weights | bf16 form | inputs | passed | PSNR dB (min / median) | max abs err |", "|---|---|---|---|---|---|"]
    for name, recs in doc["results"].items():
        forms = list(dict.fromkeys(r["form"] for r in recs))
        for f in forms:
            rs = [r for r in recs if r["form"] == f]
            ps = [r["psnr_db"] for r in rs]
            lines.append(f"| {name} | {f} | {len(rs)} | {sum(r['passed'] for r in rs)}/{len(rs)} | {min(ps):.1f} / "
                         f"{statistics.median(ps):.1f} | {max(r['max_abs_err'] for r in rs):.3g} |")
    lines += ["", "Per input:", ""]
    for name, recs in doc["results"].items():
        for r in recs:
            lines.append(f"- {name}, {r['form']}, {r['input']}: PSNR {r['psnr_db']:.2f} dB, "
                         f"{'passes' if r['passed'] else 'fails'} (fp32 output std {r['fp32_output_std']:.2f})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
