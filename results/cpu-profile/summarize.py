"""Markdown tables from pixelwise-t*.json and profile-*.json (prints to stdout)."""

from __future__ import annotations

import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def main() -> None:
    for path in sorted(glob.glob(os.path.join(HERE, "pixelwise-t*.json"))):
        d = _load(path)
        print(f"\n### {os.path.basename(path)}: {d['threads']} thread(s), medians of {d['reps']} alternated rounds\n")
        print("| size | candidate | median ms | GFLOP/s (pixelwise MACs) | % of GEMM | x vs torch reference |")
        print("|---|---|---:|---:|---:|---:|")
        for key, r in d["sizes"].items():
            gemm = r["gemm_gflops"]
            for c, sec in r["median_s"].items():
                if c == "gemm2048":
                    print(f"| {key} | torch.mm 2048^3 | {sec * 1e3:.0f} | {gemm:.1f} | 100 | |")
                    continue
                gf = r["pixelwise_gflops"].get(c)
                scope = c.split(".")[0]
                x = r.get(f"{scope}_speedup_vs_torch_reference", {}).get(c)
                print(f"| {key} | {c} | {sec * 1e3:.0f} | {'' if gf is None else f'{gf:.1f}'} | "
                      f"{'' if gf is None else f'{100 * gf / gemm:.0f}'} | {'' if x is None else f'{x:.2f}'} |")
        print("\nmax abs differences (fp32):")
        for key, r in d["sizes"].items():
            diffs = {k[8:]: f"{v:.2e}" for k, v in r.items() if k.startswith("max_abs")}
            print(f"- {key} (output std {r['out_std']:.2f}): {diffs}")
    for path in sorted(glob.glob(os.path.join(HERE, "profile-*.json"))):
        d = _load(path)
        print(f"\n### {os.path.basename(path)}: GEMM {d['gemm']['gflops']:.1f} GFLOP/s\n")
        print("| stage | ms | % of model | GMACs | GFLOP/s | % of GEMM |")
        print("|---|---:|---:|---:|---:|---:|")
        for s in d["stages"]:
            f = lambda v, spec: "" if v is None else format(v, spec)
            print(f"| {s['stage']} | {s['ms']:.1f} | {f(s['share'] and 100 * s['share'], '.1f')} | "
                  f"{f(s['macs'] and s['macs'] / 1e9, '.2f')} | {f(s['gflops'], '.1f')} | "
                  f"{f(s['fraction_of_gemm'] and 100 * s['fraction_of_gemm'], '.0f')} |")
        print(f"| whole model | {d['whole_ms']:.1f} | 100 | {d['whole_macs'] / 1e9:.2f} | {d['whole_gflops']:.1f} | "
              f"{100 * d['whole_gflops'] / d['gemm']['gflops']:.0f} |")


if __name__ == "__main__":
    main()
