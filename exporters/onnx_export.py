"""Export a generator to ONNX (fp32 or fp16 with fp32 I/O), parity-gated, with a JSON sidecar.

``export_onnx(model, H, W, out_dir, precision=...)`` writes
``<model>-<preset>-<H>x<W>-<precision>[-dyn].onnx`` and ``<same stem>.json`` through torch's
current exporter (``torch.onnx.export(..., dynamo=True)``): input ``label`` ``[N, C, H, W]``,
output ``image`` ``[N, 3, H, W]``. The graph is checked with ``onnx.checker`` and compared with
the PyTorch fp32 model in onnxruntime (:mod:`exporters.validate`) before it is renamed to its final
name; a failed gate leaves no ONNX under the final name and writes the numbers to
``<stem>.parity-failed.json``. An existing file is reused only when its sidecar records the same
model, preset, configuration, resolution, batch, precision, dynamic shapes, opset, weights
(sha256 of the state dict), seed and torch/onnx/onnxscript versions, and the file's sha256
still matches the sidecar.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import io
import json
import logging
import math
import os
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from asapbench.errors import UserError, require
from asapbench.fsutil import default_file_mode, atomic_write_json, ensure_writable_dir, sha256_file

#: opset of the exported graphs (>= 17 for the InstanceNormalization/Pad forms TensorRT 10 parses)
DEFAULT_OPSET = 20
#: bump when the exported graph or the sidecar changes meaning: invalidates every cached export
EXPORT_FORMAT = 1
INPUT_NAME = "label"
OUTPUT_NAME = "image"
PRECISIONS = ("fp32", "fp16")
#: dynamic exports accept H and W up to this many pixels and batches up to MAX_DYNAMIC_BATCH
MAX_DYNAMIC_SIDE = 4096
MAX_DYNAMIC_BATCH = 64

Progress = Callable[[str], None]


@dataclass
class ExportResult:
    """Where an export went and what its sidecar says."""

    onnx_path: Path
    sidecar_path: Path
    sidecar: dict
    reused: bool

    @property
    def parity(self) -> dict | None:
        """The parity record (None when exported with ``check=False``)."""
        return self.sidecar.get("parity")


# --------------------------------------------------------------------------------------------
# Names, hashes, versions
# --------------------------------------------------------------------------------------------
def model_label(model) -> str:
    """``<model>-<preset>`` plus ``+<key><value>`` for every option that differs from the preset."""
    name = getattr(model, "model_name", type(model).__name__)
    preset = getattr(model, "preset", None) or "custom"
    base = {}
    try:
        from asapbench.registry import get_preset

        base = dict(get_preset(name, preset).kwargs)
    except UserError:
        pass
    config = getattr(model, "config", {}) or {}
    diffs = [(k, v) for k, v in sorted(config.items()) if k in base and base[k] != v or k not in base]
    if not diffs:
        return f"{name}-{preset}"
    simple = all(isinstance(v, (int, float, bool, str)) and len(str(v)) <= 12 for _, v in diffs) and len(diffs) <= 3
    if simple:
        suffix = "".join(f"+{k.replace('_', '')}{v}" for k, v in diffs)
    else:
        suffix = "+cfg" + hashlib.sha256(json.dumps(diffs, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{name}-{preset}{suffix}"


def onnx_stem(model, height: int, width: int, precision: str, dynamic: bool = False, batch: int = 1) -> str:
    """File stem ``<model>-<preset>-<H>x<W>-<precision>[-b<N>][-dyn]``."""
    stem = f"{model_label(model)}-{height}x{width}-{precision}"
    if batch != 1:
        stem += f"-b{batch}"
    if dynamic:
        stem += "-dyn"
    return stem


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the state dict (keys, dtypes, shapes and bytes, in key order)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def versions() -> dict[str, str | None]:
    """Versions of the packages an export depends on (None where not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "asapbench"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    if out["asapbench"] is None:
        import asapbench

        out["asapbench"] = asapbench.__version__
    onnx = require("onnx", why="to export ONNX")
    out["onnx"] = onnx.__version__
    return out


def load_sidecar(path: str | Path) -> dict | None:
    """The JSON sidecar at ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _checkpoint_info(checkpoint: str | Path | None, seed: int) -> dict[str, Any]:
    if checkpoint is None:
        return {"checkpoint": f"random init, seed {seed}", "checkpoint_sha256": None}
    p = Path(checkpoint).resolve()
    if not p.is_file():
        return {"checkpoint": str(p), "checkpoint_sha256": None}
    st = p.stat()
    return {"checkpoint": str(p), "checkpoint_sha256": _file_sha256(str(p), st.st_size, st.st_mtime_ns)}


def dynamic_ranges(model) -> dict[str, list[int]]:
    """Allowed [min, max] of batch, H and W for a dynamic export (multiples of the model's size rule)."""
    mh, mw = model.size_multiple()
    nh, nw = model.min_size()
    return {
        "batch": [1, MAX_DYNAMIC_BATCH],
        "height": [mh * math.ceil(nh / mh), mh * (MAX_DYNAMIC_SIDE // mh)],
        "width": [mw * math.ceil(nw / mw), mw * (MAX_DYNAMIC_SIDE // mw)],
        "height_multiple": [mh],
        "width_multiple": [mw],
    }


def export_key(
    model, height: int, width: int, precision: str, dynamic: bool, batch: int, opset: int, seed: int, weights: str
) -> dict[str, Any]:
    """Everything an exported file depends on; a cached file is reused only when all of it matches."""
    v = versions()
    from exporters.fp16 import DEFAULT_MAX_ABS

    return {
        "format": EXPORT_FORMAT,
        "model": getattr(model, "model_name", type(model).__name__),
        "preset": getattr(model, "preset", None),
        "config": json.loads(json.dumps(getattr(model, "config", {}) or {}, sort_keys=True, default=str)),
        "resolution": [height, width],
        "batch": batch,
        "precision": precision,
        "dynamic": dynamic,
        "dynamic_ranges": dynamic_ranges(model) if dynamic else None,
        "opset": opset,
        "weights_sha256": weights,
        "seed": seed,
        "fp16_max_abs": DEFAULT_MAX_ABS if precision == "fp16" else None,
        "torch": v["torch"],
        "onnx": v["onnx"],
        "onnxscript": v["onnxscript"],
    }


def verify_onnx_file(path: str | Path) -> Any:
    """Load and check an ONNX file; a missing, truncated or invalid file raises UserError."""
    onnx = require("onnx", why="to read ONNX files")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"ONNX file not found: {str(p)!r}; export it first with `asapbench export`")
    try:
        onnx.checker.check_model(str(p))
        return onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # DecodeError, ValidationError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(
            f"{str(p)!r} is not a valid ONNX model ({first}); delete it and export again with `asapbench export`"
        ) from None


# --------------------------------------------------------------------------------------------
# torch -> ONNX
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints, FutureWarnings and 'torchvision not installed' logs."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    buf = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _dynamic_spec(model, x: torch.Tensor) -> tuple:
    from torch.export import Dim

    r = dynamic_ranges(model)
    mh, mw = r["height_multiple"][0], r["width_multiple"][0]
    h = Dim("h", min=r["height"][0] // mh, max=r["height"][1] // mh)
    w = Dim("w", min=r["width"][0] // mw, max=r["width"][1] // mw)
    return ({0: Dim("batch", min=1, max=MAX_DYNAMIC_BATCH), 2: h * mh if mh > 1 else h, 3: w * mw if mw > 1 else w},)


def _dynamic_trace_input(model, height: int, width: int, seed: int) -> torch.Tensor:
    """A batch-2 input with at least two size multiples per side (torch.export specialises 0/1 sizes)."""
    from asapbench.inputs import example_input

    mh, mw = model.size_multiple()
    h = height if height // mh >= 2 else 2 * mh * math.ceil(height / (2 * mh))
    w = width if width // mw >= 2 else 2 * mw * math.ceil(width / (2 * mw))
    return example_input(model, 2, h, w, seed=seed)


def torch_to_onnx(model: torch.nn.Module, x: torch.Tensor, opset: int = DEFAULT_OPSET, dynamic: bool = False):
    """Export ``model`` traced at ``x`` with ``torch.onnx.export(dynamo=True)``; returns the ModelProto."""
    require("onnxscript", why="by torch.onnx.export(dynamo=True)")
    ds = _dynamic_spec(model, x) if dynamic else None
    name = getattr(model, "model_name", type(model).__name__)
    try:
        with _quiet():
            prog = torch.onnx.export(
                model,
                (x,),
                None,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=ds,
                optimize=True,
            )
    except Exception as exc:
        if not dynamic:
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(
            f"{name} cannot be exported with dynamic batch/height/width ({type(exc).__name__}: {first}); "
            "export fixed resolutions instead (drop --dynamic, one --res per size)"
        ) from None
    proto = prog.model_proto
    if dynamic:
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        static = [i for i in (0, 2, 3) if dims[i].HasField("dim_value")]
        if static:
            raise UserError(
                f"{name}: the exporter fixed input dimension(s) {static} of a --dynamic export; "
                "export fixed resolutions instead (drop --dynamic)"
            )
        odims = proto.graph.output[0].type.tensor_type.shape.dim
        baked = [f"{['N', 'C', 'H', 'W'][i]}={odims[i].dim_value}" for i in (0, 2, 3) if odims[i].HasField("dim_value")]
        if baked:
            raise UserError(
                f"{name} cannot be exported with dynamic height/width: its forward turns the input size into "
                f"Python numbers, so the graph always returns {', '.join(baked)} whatever the input; "
                "export fixed resolutions instead (drop --dynamic, one --res per size)"
            )
    return proto


def _io_signature(proto) -> dict[str, Any]:
    def desc(vi):
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        from onnx import helper

        return {"name": vi.name, "shape": dims, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"input": desc(proto.graph.input[0]), "output": desc(proto.graph.output[0])}


def _save_tmp(proto, out_dir: Path, final_name: str) -> Path:
    import onnx

    if proto.ByteSize() >= 2**31 - 1:
        raise UserError(
            f"{final_name}: the model is larger than 2 GB, the limit of a single-file ONNX; export a smaller preset"
        )
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{final_name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, default_file_mode())  # mkstemp's 0600 would make the final file private
        onnx.save_model(proto, tmp)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def export_onnx(
    model: torch.nn.Module,
    height: int,
    width: int,
    out_dir: str | Path,
    precision: str = "fp32",
    dynamic: bool = False,
    batch: int = 1,
    opset: int | None = None,
    check: bool = True,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    reuse: bool = True,
    progress: Progress | None = None,
    check_sizes: Sequence[tuple[int, int]] = (),
) -> ExportResult:
    """Export a built generator to ONNX at H x W; parity-check it; write the file and its sidecar.

    Args:
        model: a generator from :func:`asapbench.create_generator` / ``load_generator`` (it is put in
            inference mode with ``prepare_for_inference()``, which folds spectral norm).
        height, width: the (traced) input size; must satisfy the model's size rule.
        out_dir: folder for ``<stem>.onnx`` and ``<stem>.json`` (created; must be writable).
        precision: ``"fp32"`` or ``"fp16"`` (fp16 compute, fp32 input/output; see :mod:`exporters.fp16`).
        dynamic: symbolic batch, height and width (multiples of ``model.size_multiple()``).
        batch: the static batch size (the traced/optimal batch when ``dynamic``).
        opset: ONNX opset (default :data:`DEFAULT_OPSET`).
        check: run the parity gate (:mod:`exporters.validate`); a failure raises ``ParityError``.
        checkpoint: the file the weights came from (None: random init with ``seed``).
        seed: the seed of random weights and of the parity inputs.
        reuse: return an existing export whose sidecar matches everything (see module docstring).
        progress: called with a short description at each stage.
        check_sizes: further (H, W) the parity gate runs a dynamic export at (besides H x W and a
            neighbouring size with batch 2).
    """
    from exporters import validate

    require("onnx", why="to export ONNX")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if batch < 1:
        raise UserError(f"batch must be >= 1, got {batch}")
    opset = int(opset or DEFAULT_OPSET)
    if opset < 17:
        raise UserError(f"opset {opset} is too old; use 17 or newer (default {DEFAULT_OPSET})")
    step = progress or (lambda s: None)
    model.prepare_for_inference()
    model.check_input_size(int(height), int(width))
    out = ensure_writable_dir(out_dir, "export folder")
    stem = onnx_stem(model, height, width, precision, dynamic, batch)
    onnx_path, sidecar_path = out / f"{stem}.onnx", out / f"{stem}.json"
    what = f"{stem}.onnx"

    step("hashing weights")
    weights = weights_sha256(model)
    key = export_key(model, height, width, precision, dynamic, batch, opset, seed, weights)

    def parity_inputs() -> list[tuple[str, torch.Tensor]]:
        count = 2 if batch * height * width <= validate.LARGE_INPUT_PIXELS else 1
        inputs = validate.parity_inputs(model, height, width, batch=batch, seed=seed, count=count)
        if dynamic:  # other sizes and batches exercise the symbolic dimensions
            h2, w2 = _other_size(model, height, width)
            b2 = 2 if batch == 1 else 1
            inputs.append(validate.parity_inputs(model, h2, w2, batch=b2, seed=seed + 1, count=1)[0])
            for h3, w3 in dict.fromkeys(tuple(s) for s in check_sizes):
                if (h3, w3) != (height, width):
                    model.check_input_size(int(h3), int(w3))
                    inputs.append(validate.parity_inputs(model, h3, w3, batch=1, seed=seed + 2, count=1)[0])
        return inputs

    # ---- reuse ----------------------------------------------------------------------------
    if reuse and onnx_path.is_file():
        old = load_sidecar(sidecar_path)
        if old and old.get("key") == key and old.get("onnx_sha256") == sha256_file(onnx_path):
            par = old.get("parity") or {}
            checked = {tuple(x["shape"][2:]) for x in par.get("samples", [])}
            unchecked = dynamic and any(tuple(hw) not in checked for hw in check_sizes)
            if check and (not par.get("passed") or unchecked):
                step("parity check of the existing file")
                parity = validate.check_parity(onnx_path, model, parity_inputs(), precision, progress=step)
                old["parity"] = parity
                if not parity["passed"]:
                    atomic_write_json(out / f"{stem}.parity-failed.json", old)
                    validate.raise_if_failed(parity, what)
                atomic_write_json(sidecar_path, old)
            return ExportResult(onnx_path, sidecar_path, old, reused=True)

    # ---- export ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    step("torch.onnx.export (dynamo)")
    if dynamic:
        x = _dynamic_trace_input(model, height, width, seed)
    else:
        from asapbench.inputs import example_input

        x = example_input(model, batch, height, width, seed=seed)
    proto = torch_to_onnx(model, x, opset=opset, dynamic=dynamic)
    export_s = time.perf_counter() - t0
    fp16_report = None
    inputs = None
    if precision == "fp16":
        from exporters.fp16 import activation_ranges, convert_to_fp16

        step("fp16: activation ranges")
        inputs = parity_inputs()
        ranges = activation_ranges(proto, [{INPUT_NAME: t.numpy()} for _, t in inputs])
        step("fp16: converting the graph")
        proto, fp16_report = convert_to_fp16(proto, ranges)
        fp16_report["calibration_inputs"] = [d for d, _ in inputs]
    convert_s = time.perf_counter() - t0 - export_s
    import onnx

    md = {"asapbench.model": key["model"], "asapbench.preset": str(key["preset"]), "asapbench.precision": precision,
          "asapbench.resolution": f"{height}x{width}", "asapbench.weights_sha256": weights}
    for k, v in md.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    proto.doc_string = f"asapbench export of {stem}"
    io_sig = _io_signature(proto)
    tmp = _save_tmp(proto, out, f"{stem}.onnx")
    del proto
    try:
        step("onnx.checker")
        onnx.checker.check_model(str(tmp), full_check=True)
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
        sidecar: dict[str, Any] = {
            "file": onnx_path.name,
            "model": key["model"],
            "preset": key["preset"],
            "config": key["config"],
            "resolution": [height, width],
            "batch": batch,
            "precision": precision,
            "io_dtype": "float32",
            "dynamic": dynamic,
            "dynamic_ranges": key["dynamic_ranges"],
            "opset": opset,
            **io_sig,
            "onnx_sha256": digest,
            "onnx_bytes": size,
            **_checkpoint_info(checkpoint, seed),
            "weights_sha256": weights,
            "weights_note": getattr(model, "weights_note", None),
            "seed": seed,
            "versions": versions(),
            "exporter": "torch.onnx.export(dynamo=True)",
            "export_seconds": round(export_s, 3),
            "fp16_convert_seconds": round(convert_s, 3) if precision == "fp16" else None,
            "fp16": fp16_report,
            "parity": None,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "key": key,
        }
        if check:
            step("parity check in onnxruntime")
            parity = validate.check_parity(tmp, model, inputs or parity_inputs(), precision, progress=step)
            sidecar["parity"] = parity
            if not parity["passed"]:
                atomic_write_json(out / f"{stem}.parity-failed.json", sidecar)
                validate.raise_if_failed(parity, what)
        sidecar["total_seconds"] = round(time.perf_counter() - t0, 3)
        os.replace(tmp, onnx_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    failed = out / f"{stem}.parity-failed.json"
    if failed.exists():
        failed.unlink()
    atomic_write_json(sidecar_path, sidecar)
    return ExportResult(onnx_path, sidecar_path, sidecar, reused=False)


def _other_size(model, height: int, width: int) -> tuple[int, int]:
    """A second valid size for checking a dynamic export (one size step away in each direction)."""
    mh, mw = model.size_multiple()
    nh, nw = model.min_size()
    h2 = height - mh if height - mh >= nh else height + mh
    w2 = width + mw
    return h2, w2
