"""`asapbench profile`: time per stage, MACs per stage and GFLOP/s beside the machine's GEMM peak in the backend's library.

The logic lives in :mod:`asapbench.bench.profile`; this is the Typer shell (rich table on stdout,
``--json PATH`` for the full result). onnxruntime is imported only when ``--backend onnxruntime``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from asapbench.commands.export import INPUT_HELP, LOWRES_HELP, PIXELWISE_HELP


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile_cmd(
        model: Annotated[str, typer.Option("--model", "-m", metavar="NAME", help="Registered model (see `asapbench models --tiny`).")],
        res: Annotated[str, typer.Option("--res", "-r", metavar="RES", help="Resolution HxW or N (NxN).")],
        backend: Annotated[str, typer.Option("--backend", "-b", metavar="NAME", help="torch or onnxruntime (CPU).")] = "torch",
        precision: Annotated[str, typer.Option("--precision", "-p", metavar="NAME", help="fp32, or bf16 (--backend torch, on CPUs with AVX-512 BF16 or AMX): model and input in bfloat16, the GEMM rate measured in bf16, and the output compared with fp32 (PSNR).")] = "fp32",
        cast: Annotated[str, typer.Option("--cast", metavar="KIND", help="With --precision bf16: auto (what `asapbench run` times: the whole model cast, or, when that fails the parity gate, the model's mixed variant: ASAP-Net's pixelwise stream in bf16, low-res stream in fp32), whole or mixed (that one, whatever the gate says).")] = "auto",
        input: Annotated[str, typer.Option("--input", metavar="KIND", help=INPUT_HELP)] = "onehot",
        lowres_conv: Annotated[str | None, typer.Option("--lowres-conv", metavar="FORM", help=LOWRES_HELP)] = None,
        pixelwise: Annotated[str | None, typer.Option("--pixelwise", metavar="IMPL", help=PIXELWISE_HELP)] = None,
        preset: Annotated[str | None, typer.Option("--preset", metavar="NAME", help="Preset (default: configured for --res as `asapbench run` does).")] = None,
        threads: Annotated[int | None, typer.Option("--threads", metavar="N", help="CPU threads for torch and onnxruntime (default: torch's).")] = None,
        iters: Annotated[int, typer.Option("--iters", "-n", metavar="N", help="Timed rounds (medians are reported).")] = 3,
        warmup: Annotated[int, typer.Option("--warmup", metavar="N", help="Untimed rounds first.")] = 1,
        gemm_size: Annotated[int, typer.Option("--gemm-size", metavar="N", help="N of the N x N x N GEMM that measures the peak, in the backend's own library (torch.mm; an onnxruntime MatMul).")] = 2048,
        seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed for weights and the synthetic label map.")] = 0,
        json_path: Annotated[Path | None, typer.Option("--json", metavar="FILE", help="Also write the full result as JSON to this file.")] = None,
    ) -> None:
        """Per-stage time, MACs and GFLOP/s of one model on one backend (ASAP-Net: input encoding, low-res, pixelwise)."""
        from rich.console import Console

        from asapbench.bench.profile import render_table, run_profile

        result = run_profile(model, res, backend=backend, precision=precision, preset=preset, threads=threads,
                             iters=iters, warmup=warmup, seed=seed, gemm_size=gemm_size, cast=cast, input=input,
                             lowres_conv=lowres_conv, pixelwise=pixelwise)
        Console().print(render_table(result))
        if json_path is not None:
            from asapbench.fsutil import atomic_write_json, ensure_writable_dir

            ensure_writable_dir(json_path.parent if str(json_path.parent) else ".", "--json folder")
            atomic_write_json(json_path, result)
            typer.echo(f"wrote {json_path}")
