"""Markdown tables from pixelwise-t*.json, profile-*.json and run-*/bench.json (prints to stdout)."""

from __future__ import annotations

import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _f(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def pixelwise_tables() -> None:
    for path in sorted(glob.glob(os.path.join(HERE, "pixelwise-t*.json"))):
        d = _load(path)
        print(f"\n### {os.path.basename(path)}: {d['threads']} thread(s), medians of {d['reps']} alternated rounds\n")
        print("| size | candidate | median ms | pixelwise GFLOP/s | % of GEMM (own precision) | x vs torch reference (fp32) "
              "| x vs torch fast fp32 (bf16) |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for key, r in d["sizes"].items():
            for c, sec in r["median_s"].items():
                if c.startswith("gemm2048"):
                    gf = r["gemm_bf16_gflops"] if c.endswith("bf16") else r["gemm_gflops"]
                    print(f"| {key} | torch.mm 2048^3 {'bf16' if c.endswith('bf16') else 'fp32'} | {sec * 1e3:.0f} | "
                          f"{gf:.1f} | 100 | | |")
                    continue
                gf = r["pixelwise_gflops"].get(c)
                frac = r["pixelwise_fraction_of_gemm"].get(c)
                scope = c.split(".")[0]
                x = r.get(f"{scope}_speedup_vs_torch_reference", {}).get(c)
                xb = r.get("bf16_speedup_vs_torch_fp32", {}).get(c)
                print(f"| {key} | {c} | {sec * 1e3:.0f} | {_f(gf, '.1f')} | {_f(frac and 100 * frac, '.0f')} | "
                      f"{_f(x, '.2f')} | {_f(xb, '.2f')} |")
        print("\nmax abs differences (fp32), and bf16 outputs against fp32 (the gate: PSNR >= 40 dB):")
        for key, r in d["sizes"].items():
            diffs = {k[8:]: f"{v:.2e}" for k, v in r.items() if k.startswith("max_abs")}
            print(f"- {key} (output std {r['out_std']:.2f}): {diffs}")
            for c, g in r.get("bf16_vs_fp32", {}).items():
                print(f"  - {c}: PSNR {g['psnr_db']:.1f} dB ({'passes' if g['passed'] else 'fails'})")


def profile_tables() -> None:
    for path in sorted(glob.glob(os.path.join(HERE, "profile-*.json"))):
        d = _load(path)
        h, w = d["resolution"]
        title = (f"{d['model']} ({d['preset']}) {h}x{w}, {d['backend']} {d['precision']}, input {d.get('input', 'onehot')}, "
                 f"{d['threads']} threads; GEMM {d['precision']} {d['gemm']['gflops']:.1f} GFLOP/s")
        if "gemm_fp32" in d:
            title += f", fp32 {d['gemm_fp32']['gflops']:.1f}"
        print(f"\n### {os.path.basename(path)}: {title}\n")
        par = d.get(f"{d['precision']}_vs_fp32")
        if par:
            print(f"{d['precision']}: {par['policy']}; PSNR vs fp32 {par['psnr_db']:.1f} dB "
                  f"({'passes' if par['passed'] else 'fails'} the gate)"
                  + "".join(f"; also judged: {t['policy']}, {t['psnr_db']:.1f} dB" for t in par.get("tried", [])
                            if t["policy"] != par["policy"]) + "\n")
        print("| stage | in | ms | % of model | GMACs | GFLOP/s | % of GEMM |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for s in d["stages"]:
            print(f"| {s['stage']} | {s.get('precision') or ''} | {s['ms']:.1f} | {_f(s['share'] and 100 * s['share'], '.1f')} | "
                  f"{_f(s['macs'] and s['macs'] / 1e9, '.2f')} | {_f(s['gflops'], '.1f')} | "
                  f"{_f(s['fraction_of_gemm'] and 100 * s['fraction_of_gemm'], '.0f')} |")
        print(f"| whole model | | {d['whole_ms']:.1f} | 100 | {d['whole_macs'] / 1e9:.2f} | {d['whole_gflops']:.1f} | |")


def run_tables() -> None:
    for path in sorted(glob.glob(os.path.join(HERE, "run-*", "bench.json"))):
        d = _load(path)
        print(f"\n### {os.path.relpath(path, HERE)}\n")
        print("| model | res | backend | precision | input | status | ms (median) | CoV | end-to-end ms (median) "
              "| e2e / device | input MiB | note |")
        print("|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|")
        for r in d["rows"]:
            ratio = r["e2e_ms_median"] / r["ms_median"] if r.get("e2e_ms_median") and r.get("ms_median") else None
            note = (r.get("note") or "").replace("|", "/")
            print(f"| {r['model']} ({r['preset']}) | {r['height']}x{r['width']} | {r['backend']} | {r['precision']} | "
                  f"{r['input']} | {r['status']} | {_f(r.get('ms_median'), '.1f')} | {_f(r.get('cov') and 100 * r['cov'], '.1f')}% | "
                  f"{_f(r.get('e2e_ms_median'), '.1f')} | {_f(ratio, '.3f')} | "
                  f"{_f(r.get('input_bytes') and r['input_bytes'] / 2**20, '.1f')} | {note[:160]} |")


def main() -> None:
    pixelwise_tables()
    profile_tables()
    run_tables()


if __name__ == "__main__":
    main()
