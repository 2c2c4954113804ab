"""OpenVINO runner (CPU) on the parity-gated fp32 ONNX export.

The fp32 export (the same file the onnxruntime backend times, gated against PyTorch) is read by OpenVINO
and compiled for the CPU with the precision asked, pinned: fp32 with ``INFERENCE_PRECISION_HINT=f32``
(OpenVINO otherwise computes in bf16 by itself on CPUs with native bf16, openvino#28032), bf16 with
``INFERENCE_PRECISION_HINT=bf16``; ``PERFORMANCE_HINT=LATENCY`` and ``INFERENCE_NUM_THREADS`` = ``--threads``.
The precision the compiled model actually uses is read back (``compiled.get_property(
"INFERENCE_PRECISION_HINT")``) and recorded in the row's ``provider`` and note; a bf16 cell that compiled to
anything else is ``unsupported`` (nothing is timed under a precision it did not run in). A bf16 cell is gated
before it is timed as the torch bf16 cell is (:data:`asapbench.bench.runner_torch.GATED`,
``exporters.validate.judge_outputs``: its output on the cell's input against the fp32 torch model's; a
failure is a :class:`~asapbench.bench.backends.GateFailed` ``error`` row with the PSNR).

Compiled models are cached by OpenVINO itself (``CACHE_DIR``) under ``<cache dir>/openvino/<ONNX stem>.<sha256 of
the ONNX, 12 hex>/``: one folder per export, and OpenVINO keys its blobs inside it by the model, the compile
options and its own version, so a cached blob is never served for another file or setting.

openvino and the exporters are imported inside these functions only.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from asapbench.bench.backends import Backend, GateFailed, Runner, Unsupported
from asapbench.bench.runner_torch import GATED, _nums

#: asapbench precision -> OpenVINO INFERENCE_PRECISION_HINT
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
INSTALL_HINT = "pip install 'asapbench[openvino]'"


def openvino_missing() -> str | None:
    """Why OpenVINO cannot be used here (None when it is importable)."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"OpenVINO is not installed ({type(exc).__name__}); install it with: {INSTALL_HINT}"
    return None


def compile_config(precision: str, threads: int | None, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The CPU compile options of a cell (and of the GEMM peak measured in OpenVINO): precision pinned, latency
    hint, threads, and the compiled-model cache folder."""
    cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    if cache_dir is not None:
        cfg["CACHE_DIR"] = str(cache_dir)
    return cfg


def compile_onnx(onnx_path: str | os.PathLike, precision: str, threads: int | None,
                 cache_dir: str | os.PathLike | None = None) -> tuple[Any, str]:
    """``(compiled model, effective precision)``: the ONNX file compiled for the CPU by :func:`compile_config`,
    and the inference precision the compiled model reports (``"f32"``, ``"bf16"``, ...)."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", compile_config(precision, threads, cache_dir))
    return compiled, effective_precision(compiled)


def effective_precision(compiled: Any) -> str:
    """The inference precision a compiled model runs in, as OpenVINO spells it (``f32``, ``bf16``, ``f16``)."""
    p = compiled.get_property("INFERENCE_PRECISION_HINT")
    return p.get_type_name() if hasattr(p, "get_type_name") else str(p)


def model_cache_dir(cache_dir: str | os.PathLike, onnx_path: str | os.PathLike, onnx_sha256: str | None) -> Path:
    """``<cache dir>/openvino/<ONNX stem>.<sha256[:12]>``: the CACHE_DIR of one export's compiled models."""
    stem = Path(onnx_path).stem
    return Path(cache_dir) / "openvino" / (f"{stem}.{onnx_sha256[:12]}" if onnx_sha256 else stem)


class OpenVINORunner(Runner):
    """An OpenVINO compiled model on the CPU with one infer request (input set once for :meth:`run`)."""

    @classmethod
    def availability(cls, backend: Backend, device: str) -> str | None:
        return openvino_missing()

    def prepare(self) -> None:
        """The fp32 ONNX export (whatever the cell's precision: bf16 is OpenVINO's compile option) and, for a
        gated precision, the fp32 torch model's output on the cell's input."""
        from asapbench.bench.runner_ort import export_for

        self.say("exporting")
        self.exported = export_for(dataclasses.replace(self.cell, precision="fp32"))
        if self.cell.precision in GATED:
            import torch

            self.say("fp32 reference")
            with torch.inference_mode():
                self.ref = self.cell.model(self.cell.x).float().numpy()

    def _cache(self) -> Path | None:
        """The compiled-model cache folder (created), or None when the cache folder cannot be written."""
        d = model_cache_dir(self.cell.cache_dir, self.exported.onnx_path, self.exported.sidecar.get("onnx_sha256"))
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return d if os.access(d, os.W_OK) else None

    def open(self) -> None:
        import openvino as ov

        cell = self.cell
        self.say("compiling")
        cache = self._cache()
        self.compiled, eff = compile_onnx(self.exported.onnx_path, cell.precision, cell.threads, cache)
        self.effective = eff
        self.info = {"onnx": str(self.exported.onnx_path), "inference_precision": eff,
                     "cache_dir": str(cache) if cache else None}
        if eff != OV_PRECISION[cell.precision]:
            raise Unsupported(f"OpenVINO compiled the {cell.precision} cell with inference precision {eff} "
                              f"(asked {OV_PRECISION[cell.precision]}); not timed as {cell.precision}")
        self.request = self.compiled.create_infer_request()
        self.x_np = cell.x.numpy()
        self.request.set_input_tensor(ov.Tensor(self.x_np))
        self.provider = f"CPU ({eff})"
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS")) or cell.threads
        notes = [f"OpenVINO inference precision {eff} (read back from the compiled model)"]
        if cache is None:
            notes.append("compiled-model cache off (cache folder not writable)")
        self.note = "; ".join(notes)
        if cell.precision in GATED:
            self.gate()

    def gate(self) -> None:
        """Judge the compiled model's output on the cell's input against the fp32 torch model's (the torch bf16
        cell's gate); :class:`GateFailed` when it fails, else the row's note gets the numbers."""
        from exporters.validate import judge_outputs

        prec = self.cell.precision
        self.say(f"{prec} parity gate")
        got = self.run_e2e()
        rec = judge_outputs(self.ref, got, GATED[prec])
        self.info["gate"] = {k: rec[k] for k in ("passed", "psnr_db", "max_abs_err", "nonfinite", "criterion")}
        if not rec["passed"]:
            raise GateFailed(f"{prec} parity gate failed against fp32 torch on the same input: "
                             f"{'; '.join(rec['failures'])} ({_nums(rec)}); OpenVINO inference precision "
                             f"{self.effective}; not timed; use --precision fp32 for this model")
        gate = f"gate vs fp32 torch passed: {_nums(rec)}" + ("; reference output degenerate" if rec["degenerate"] else "")
        self.note = f"{self.note}; {gate}"

    def run(self) -> None:
        self.request.infer()

    def run_e2e(self) -> object:
        out = self.request.infer({0: self.cell.x.numpy()}, share_outputs=False)
        return out[0]

    def close(self) -> None:
        for name in ("request", "compiled", "x_np", "ref"):
            self.__dict__.pop(name, None)
