"""Export a generator to ONNX (fp32 or fp16 with fp32 I/O), parity-gated, with a JSON sidecar.

``export_onnx(model, H, W, out_dir, precision=...)`` writes
``<model>-<preset>-<H>x<W>-<precision>[-labels][-dyn].onnx`` and ``<same stem>.json`` through torch's
current exporter (``torch.onnx.export(..., dynamo=True)``): input ``label`` ``[N, C, H, W]`` (float32
one-hot; with ``--input labels`` the int32 label map ``[N, 1|2, H, W]``, encoded inside the graph),
output ``image`` ``[N, 3, H, W]``. The graph is checked with ``onnx.checker`` and compared with
the PyTorch fp32 model in onnxruntime (:mod:`exporters.validate`) before it is renamed to its final
name; a failed gate leaves no ONNX under the final name and writes the numbers to
``<stem>.parity-failed.json``. An existing file is reused only when its sidecar records the same
model, preset, configuration, resolution, batch, precision, dynamic shapes, opset, weights
(sha256 of the state dict), seed and torch/onnx/onnxscript versions, and the file's sha256
still matches the sidecar -- and the file itself still holds this model: no external data, the model's
weights among its initialisers (:func:`weights_in_graph`, as many as when it was exported) and, with the gate on, one parity sample
against PyTorch (:func:`_reuse`). Anything else is exported again and replaced.
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
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asapbench.errors import UserError, require
from asapbench.fsutil import (
    DiskFull,
    atomic_write_json,
    default_file_mode,
    ensure_writable_dir,
    free_bytes,
    is_out_of_space,
    sha256_file,
)

#: opset of the exported graphs (>= 17 for the InstanceNormalization/Pad forms TensorRT 10 parses)
DEFAULT_OPSET = 20
#: bump when the exported graph or the sidecar changes meaning: invalidates every cached export
EXPORT_FORMAT = 2  # 2: ASAP-Net's pixelwise stream exported in its fast formulation
INPUT_NAME = "label"
OUTPUT_NAME = "image"
PRECISIONS = ("fp32", "fp16")
#: dynamic exports accept H and W up to this many pixels and batches up to MAX_DYNAMIC_BATCH
MAX_DYNAMIC_SIDE = 4096
MAX_DYNAMIC_BATCH = 64
#: bytes set aside for the sidecar when checking the space an export needs
SIDECAR_BYTES = 64 * 2**10

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
    name = model.model_name or type(model).__name__
    preset = model.preset or "custom"
    base = {}
    try:
        from asapbench.registry import get_preset

        base = dict(get_preset(name, preset).kwargs)
    except UserError:
        pass
    config = model.config or {}
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
    """File stem ``<model>-<preset>-<H>x<W>-<precision>[-labels][-b<N>][-dyn]`` (``-labels``: the label-map input)."""
    stem = f"{model_label(model)}-{height}x{width}-{precision}"
    if getattr(model, "input_mode", "onehot") != "onehot":
        stem += f"-{model.input_mode}"
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
    from asapbench.versions import export_versions

    return export_versions()


def load_sidecar(path: str | Path) -> dict | None:
    """The JSON sidecar at ``path``, or None when it is missing, unreadable, not a regular file, too large,
    not JSON or not a JSON object (:func:`exporters.cache.read_json`)."""
    from exporters.cache import read_json

    side, _why = read_json(path)
    return side if isinstance(side, dict) else None


def _tensors(graph):
    """Every TensorProto of ``graph`` (initialisers, sparse ones, node attributes, sub-graphs)."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)


def external_data(proto) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor of ``proto`` whose data lives in another file."""
    from onnx import TensorProto

    out = []
    for t in _tensors(proto.graph):
        if t.data_location == TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            out.append((t.name, loc))
    return out


def external_data_problem(proto, folder: str | Path) -> str | None:
    """Why the external data of ``proto`` (a file in ``folder``) may not be read: a location that is
    absolute, leaves the folder (``..``, a link) or is not a regular file. None when all is inside."""
    base = os.path.realpath(folder)
    for name, loc in external_data(proto):
        target = os.path.realpath(os.path.join(base, loc))
        if not loc or os.path.isabs(loc) or os.path.commonpath([base, target]) != base:
            return f"tensor {name!r} points to external data {loc!r} outside the file's folder"
        if not os.path.isfile(target):
            return f"tensor {name!r} points to external data {loc!r}, which is not a file"
    return None


def weights_in_graph(proto, model: torch.nn.Module) -> float:
    """Share of ``model``'s state-dict elements that ``proto`` carries verbatim: an initialiser of the same
    name and shape whose values equal the tensor (cast to the initialiser's dtype, e.g. fp16)."""
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    total = carried = 0
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            continue
        total += v.numel()
        init = inits.get(k)
        if init is None or tuple(init.dims) != tuple(v.shape):
            continue
        a = numpy_helper.to_array(init)
        if a.dtype.kind == "f" and np.array_equal(a, v.detach().cpu().float().numpy().astype(a.dtype)):
            carried += v.numel()
    return carried / total if total else 1.0


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
        "model": model.model_name or type(model).__name__,
        "preset": model.preset,
        "config": json.loads(json.dumps(dict(model.config), sort_keys=True, default=str)),
        "graph_variant": model.graph_variant,
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
        proto = onnx.load(str(p), load_external_data=False)
        problem = external_data_problem(proto, p.parent)
        if problem:
            raise UserError(f"{str(p)!r} is refused: {problem}; delete it and export again with `asapbench export`")
        onnx.checker.check_model(str(p))
        return proto
    except UserError:
        raise
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
    name = model.model_name or type(model).__name__
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
    label_dir: str | Path | None = None,
    option: str | None = None,
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
        label_dir: a folder of label-map PNGs whose first map(s) the parity gate uses besides the
            synthetic label maps (:func:`asapbench.inputs.input_from_label_maps`).
        option: the command-line option that names ``out_dir`` (``--out``, ``--cache-dir``), named by
            the errors about it (an unwritable folder, a full disk).

    Writing into a sub-folder of a marked cache holds the cache's shared lock
    (:class:`exporters.cache.CacheLock`), so that ``asapbench cache --clear`` cannot delete a file in progress.
    """
    opset = _check_arguments(precision, batch, opset)
    step = progress or (lambda s: None)
    model.prepare_for_inference()
    model.check_input_size(int(height), int(width))
    out = Path(out_dir)
    stem = onnx_stem(model, height, width, precision, dynamic, batch)
    job = _Job(model, height, width, precision, dynamic, batch, seed, tuple(check_sizes), label_dir,
               out / f"{stem}.onnx", out / f"{stem}.json", step, what=f"{option} folder" if option else "export folder")
    step("hashing weights")
    job.weights = weights_sha256(model)
    job.key = export_key(model, height, width, precision, dynamic, batch, opset, seed, job.weights)
    from exporters.cache import entry_lock

    with entry_lock(out):
        if reuse:  # a valid export is reused from a read-only folder too: the write test comes after
            existing = _reuse(job, check)
            if existing is not None:
                return existing
        ensure_writable_dir(out, job.what)
        t0 = time.perf_counter()
        proto, timings, fp16_report = _trace_and_convert(job, opset)
        return _check_and_publish(job, proto, opset, timings, fp16_report, checkpoint, check, t0)


@dataclass
class _Job:
    """One export: the model, its size and options, where it goes, and its key once hashed."""

    model: torch.nn.Module
    height: int
    width: int
    precision: str
    dynamic: bool
    batch: int
    seed: int
    check_sizes: tuple
    label_dir: str | Path | None
    onnx_path: Path
    sidecar_path: Path
    step: Progress
    what: str = "export folder"  # the folder in messages: "--out folder", "--cache-dir folder"
    weights: str = ""
    key: dict | None = None
    inputs: list | None = None  # parity inputs, once made

    @property
    def stem(self) -> str:
        return self.onnx_path.stem

    @property
    def failed_path(self) -> Path:
        return self.onnx_path.with_name(f"{self.stem}.parity-failed.json")

    def parity_inputs(self) -> list[tuple[str, torch.Tensor]]:
        """The gate's inputs: realistic label maps at H x W (two below LARGE_INPUT_PIXELS), and for a
        dynamic export a neighbouring size with another batch plus every ``check_sizes`` entry."""
        from exporters import validate

        if self.inputs is not None:
            return self.inputs
        m, h, w = self.model, self.height, self.width
        count = 2 if self.batch * h * w <= validate.LARGE_INPUT_PIXELS else 1
        inputs = validate.parity_inputs(m, h, w, batch=self.batch, seed=self.seed, count=count, label_dir=self.label_dir)
        if self.dynamic:  # other sizes and batches exercise the symbolic dimensions
            h2, w2 = _other_size(m, h, w)
            b2 = 2 if self.batch == 1 else 1
            inputs.append(validate.parity_inputs(m, h2, w2, batch=b2, seed=self.seed + 1, count=1)[0])
            for h3, w3 in dict.fromkeys(tuple(s) for s in self.check_sizes):
                if (h3, w3) != (h, w):
                    m.check_input_size(int(h3), int(w3))
                    inputs.append(validate.parity_inputs(m, h3, w3, batch=1, seed=self.seed + 2, count=1)[0])
        self.inputs = inputs
        return inputs

    def gate(self, path: Path, record: dict[str, Any]) -> dict[str, Any]:
        """Run the parity gate on ``path``; a failure writes ``record`` to the failure report and raises."""
        from exporters import validate

        parity = validate.check_parity(path, self.model, self.parity_inputs(), self.precision, progress=self.step)
        record["parity"] = parity
        if not parity["passed"]:
            try:
                atomic_write_json(self.failed_path, record)
            except (OSError, UserError):  # a read-only folder: the numbers are in the error itself
                pass
            validate.raise_if_failed(parity, f"{self.stem}.onnx")
        return parity


def _check_arguments(precision: str, batch: int, opset: int | None) -> int:
    """Validate the options; returns the opset to use."""
    require("onnx", why="to export ONNX")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if batch < 1:
        raise UserError(f"batch must be >= 1, got {batch}")
    opset = int(opset or DEFAULT_OPSET)
    if opset < 17:
        raise UserError(f"opset {opset} is too old; use 17 or newer (default {DEFAULT_OPSET})")
    return opset


def _reuse(job: _Job, check: bool) -> ExportResult | None:
    """The existing export when its sidecar is sound, its key and file hash match, and the file still holds
    this model (:func:`_holds_model`); gated first if it never was. None: export again (replacing it)."""
    from exporters.cache import onnx_sidecar_problem, read_json

    if not job.onnx_path.is_file():
        return None
    old, why = read_json(job.sidecar_path)
    problem = why or onnx_sidecar_problem(old)
    if problem:
        job.step(f"cached export not reused: its sidecar is {problem}")
        return None
    if not (old["key"] == job.key and old["onnx_sha256"] == sha256_file(job.onnx_path)):
        return None
    problem = _holds_model(job, old)
    if problem:
        job.step(f"cached export not reused: {problem}; exporting again")
        return None
    par = old.get("parity") or {}
    checked = {tuple(x["shape"][2:]) for x in par.get("samples", [])}
    unchecked = job.dynamic and any(tuple(hw) not in checked for hw in job.check_sizes)
    if check and par.get("passed") and not unchecked:
        from exporters import validate

        job.step("parity sample of the cached file")
        sample = validate.check_parity(job.onnx_path, job.model, job.parity_inputs()[:1], job.precision,
                                       progress=job.step)
        if not sample["passed"]:
            job.step(f"cached export not reused: its parity sample failed ({'; '.join(sample['failures'])}); exporting again")
            return None
        old["reuse_check"] = {k: sample.get(k) for k in ("max_abs_err", "psnr_db", "seconds")}
    elif check and (not par.get("passed") or unchecked):
        job.step("parity check of the existing file")
        job.gate(job.onnx_path, old)
        try:
            atomic_write_json(job.sidecar_path, old)
        except (OSError, UserError):  # a read-only cache: the file passed; its sidecar keeps the old record
            old["parity_note"] = "gated now; the sidecar could not be updated (read-only folder)"
    return ExportResult(job.onnx_path, job.sidecar_path, old, reused=True)


def _holds_model(job: _Job, side: dict) -> str | None:
    """Why the cached file at ``job.onnx_path`` is not this model's export (None when it may be):
    external data, another ``asapbench.weights_sha256`` in its metadata, or fewer of the model's weights
    among its initialisers than the export carried (the sidecar's ``weights_in_graph``; none at all is
    never enough). The exporter folds some weights into others (BatchNorm into convolutions: pix2pix-tiny
    carries 15% verbatim, spade-tiny 63%, ASAP-Net 99%, pix2pixHD 100%), so the share is the model's own."""
    import onnx

    try:
        proto = onnx.load(str(job.onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - a corrupt file is exported again
        return f"it does not load ({type(exc).__name__})"
    ext = external_data(proto)
    if ext:  # our exports are single files: external data anywhere means another file took its place
        return external_data_problem(proto, job.onnx_path.parent) or f"tensor {ext[0][0]!r} has external data"
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("asapbench.weights_sha256") != job.weights:
        return "its metadata names other weights"
    share = weights_in_graph(proto, job.model)
    recorded = side.get("weights_in_graph")
    need = recorded if isinstance(recorded, (int, float)) and not isinstance(recorded, bool) else 0.0
    if share <= 0 or share < need - 1e-6:
        return f"its initialisers carry {share:.1%} of the model's weights (exported: {need:.1%})"
    return None


def _trace_and_convert(job: _Job, opset: int) -> tuple[Any, dict[str, float], dict | None]:
    """torch -> ONNX (and fp32 -> fp16 for fp16); returns (proto, seconds per stage, fp16 report)."""
    t0 = time.perf_counter()
    job.step("torch.onnx.export (dynamo)")
    if job.dynamic:
        x = _dynamic_trace_input(job.model, job.height, job.width, job.seed)
    else:
        from asapbench.inputs import example_input

        x = example_input(job.model, job.batch, job.height, job.width, seed=job.seed)
    proto = torch_to_onnx(job.model, x, opset=opset, dynamic=job.dynamic)
    export_s = time.perf_counter() - t0
    fp16_report = None
    if job.precision == "fp16":
        from exporters.fp16 import activation_ranges, convert_to_fp16

        job.step("fp16: activation ranges")
        inputs = job.parity_inputs()
        ranges = activation_ranges(proto, [{INPUT_NAME: t.numpy()} for _, t in inputs])
        job.step("fp16: converting the graph")
        proto, fp16_report = convert_to_fp16(proto, ranges)
        fp16_report["calibration_inputs"] = [d for d, _ in inputs]
    return proto, {"export": export_s, "convert": time.perf_counter() - t0 - export_s}, fp16_report


def _sidecar(job: _Job, opset: int, io_sig: dict, digest: str, size: int, timings: dict[str, float],
             fp16_report: dict | None, checkpoint: str | Path | None) -> dict[str, Any]:
    key = job.key or {}
    return {
        "file": job.onnx_path.name,
        "model": key["model"],
        "preset": key["preset"],
        "config": key["config"],
        "resolution": [job.height, job.width],
        "batch": job.batch,
        "precision": job.precision,
        "io_dtype": "float32",
        "input_kind": getattr(job.model, "input_mode", "onehot"),  # onehot | labels (graph_variant in the key too)
        "dynamic": job.dynamic,
        "dynamic_ranges": key["dynamic_ranges"],
        "opset": opset,
        **io_sig,
        "onnx_sha256": digest,
        "onnx_bytes": size,
        **_checkpoint_info(checkpoint, job.seed),
        "weights_sha256": job.weights,
        "weights_in_graph": None,  # share of the state dict carried verbatim (set before the file is saved)
        "weights_note": job.model.weights_note,
        "seed": job.seed,
        "versions": versions(),
        "exporter": "torch.onnx.export(dynamo=True)",
        "export_seconds": round(timings["export"], 3),
        "fp16_convert_seconds": round(timings["convert"], 3) if job.precision == "fp16" else None,
        "fp16": fp16_report,
        "parity": None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "key": key,
    }


def _check_and_publish(job: _Job, proto, opset: int, timings: dict[str, float], fp16_report: dict | None,
                       checkpoint: str | Path | None, check: bool, t0: float) -> ExportResult:
    """Save to a temporary name, run onnx.checker and the parity gate, then rename and write the sidecar."""
    import onnx

    key = job.key or {}
    md = {"asapbench.model": key["model"], "asapbench.preset": str(key["preset"]), "asapbench.precision": job.precision,
          "asapbench.resolution": f"{job.height}x{job.width}", "asapbench.weights_sha256": job.weights}
    for k, v in md.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    proto.doc_string = f"asapbench export of {job.stem}"
    io_sig = _io_signature(proto)
    carried = round(weights_in_graph(proto, job.model), 6)
    out = job.onnx_path.parent
    needed = proto.ByteSize() + SIDECAR_BYTES  # the real size of the file, and its sidecar
    free = free_bytes(out)
    if free is not None and free < needed:
        raise DiskFull(out, needed, job.what)
    try:
        tmp = _save_tmp(proto, out, job.onnx_path.name)
    except (OSError, RuntimeError) as exc:
        if is_out_of_space(exc, out, needed):
            raise DiskFull(out, needed, job.what) from None
        raise
    del proto
    try:
        job.step("onnx.checker")
        onnx.checker.check_model(str(tmp), full_check=True)
        sidecar = _sidecar(job, opset, io_sig, sha256_file(tmp), tmp.stat().st_size, timings, fp16_report, checkpoint)
        sidecar["weights_in_graph"] = carried
        if check:
            job.step("parity check in onnxruntime")
            job.gate(tmp, sidecar)
        sidecar["total_seconds"] = round(time.perf_counter() - t0, 3)
        os.replace(tmp, job.onnx_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if job.failed_path.exists():
        job.failed_path.unlink()
    try:
        atomic_write_json(job.sidecar_path, sidecar)
    except OSError as exc:  # the file is in place; without its sidecar it is exported again next time
        if is_out_of_space(exc):
            raise DiskFull(out, SIDECAR_BYTES, job.what) from None
        raise
    return ExportResult(job.onnx_path, job.sidecar_path, sidecar, reused=False)


def _other_size(model, height: int, width: int) -> tuple[int, int]:
    """A second valid size for checking a dynamic export (one size step away in each direction)."""
    mh, mw = model.size_multiple()
    nh, nw = model.min_size()
    h2 = height - mh if height - mh >= nh else height + mh
    w2 = width + mw
    return h2, w2
