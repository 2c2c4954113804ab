"""Loading and saving generator checkpoints by the official key names.

``load_generator(name, preset, path)`` reads an official ``.pth`` (or one written by
``asapbench train``) with ``torch.load(weights_only=True)``, strips ``module.`` prefixes
(DataParallel / DDP), drops the unused InstanceNorm statistics of PyTorch-0.3-era pix2pixHD files,
and loads strictly: missing, unexpected or mis-shaped keys are named in the error, together with
the registered model/preset the file does fit, if any. Without a preset, a file that fits no preset
is compared with the preset it fits best. Pickles that safe loading rejects, and weights with NaN
or Inf values, are refused with one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from asapbench.errors import UserError
from asapbench.fsutil import atomic_torch_save

_WRAPPERS = ("state_dict", "model", "netG", "generator", "G")


#: the file ``asapbench train`` (and the official repositories) write inside a run folder
GEN_FILE_NAME = "latest_net_G.pth"

#: said, in full, when ``torch.load(weights_only=True)`` refuses a file's pickle
HOSTILE = "refused: the file holds Python objects that safe loading rejects"
#: how torch's weights-only unpickler words a refused object (other unpickling errors mean a damaged file)
_REJECTED_OBJECTS = ("unsupported global", "not an allowed global", "can only create new object",
                     "can only build", "trying to call reduce", "only persistent_load of storage")


def _first_line(text: str, limit: int = 160) -> str:
    """The first line of ``text``, at most ``limit`` characters, cut at a word boundary (never mid-word)."""
    line = (str(text).strip().splitlines() or [""])[0].strip()
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:.")
    return cut + " ..."


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``latest_net_G.pth`` inside it when it is a folder (UserError if neither exists)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint file not found: {str(p)!r}; pass the path of an existing .pth file")
    if p.is_dir():
        inside = p / GEN_FILE_NAME
        if inside.is_file():
            return inside
        raise UserError(f"checkpoint path {str(p)!r} is a folder without a {GEN_FILE_NAME}; pass the path of "
                        "the generator .pth file itself")
    if not p.is_file():
        raise UserError(f"checkpoint path {str(p)!r} is not a file; pass the path of a .pth file")
    return p


def safe_torch_load(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` on the CPU, with torch's warnings kept off the terminal.

    A file whose pickle holds objects that safe loading rejects (legacy or zip format alike) raises
    UserError with :data:`HOSTILE` in full; any other failure raises UserError naming a damaged file.
    """
    import pickle
    import warnings
    import zipfile

    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if any(t in str(exc).lower() for t in _REJECTED_OBJECTS):
            raise UserError(f"cannot load {what} {str(p)!r}: {HOSTILE}; load only files from a trusted source, "
                            "or save the plain state dict of tensors (torch.save(model.state_dict(), path))") from None
        reason = _first_line(exc) or type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - a truncated zip, random bytes, an unreadable file, ...
        reason = _first_line(exc) or type(exc).__name__
    kind = "a zip archive" if zipfile.is_zipfile(p) else "not a zip archive (a legacy pickle or another format)"
    raise UserError(f"cannot read {what} {str(p)!r} as a PyTorch file ({kind}: {reason}); the file is corrupt "
                    "or not a PyTorch .pth: download or train it again") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict (UserError if missing or unreadable).

    A folder stands for the ``latest_net_G.pth`` inside it.
    """
    p = resolve_checkpoint_path(path)
    obj = safe_torch_load(p)
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            if key in obj and isinstance(obj[key], dict) and obj[key] and all(isinstance(v, torch.Tensor) for v in obj[key].values()):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {str(p)!r} does not hold a state dict of tensors; pass a generator .pth (e.g. latest_net_G.pth)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def non_finite(sd: dict[str, Any]) -> tuple[str, int, int, int] | None:
    """(first key, its NaN/Inf count, its size, number of such tensors) of the non-finite floating tensors, or None."""
    first, bad_tensors = None, 0
    for k, v in sd.items():
        if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) and v.device.type != "meta":
            n = int((~torch.isfinite(v)).sum())
            if n:
                bad_tensors += 1
                if first is None:
                    first = (k, n, v.numel())
    return None if first is None else (*first, bad_tensors)


def check_finite(sd: dict[str, Any], where: str) -> None:
    """UserError naming the first tensor with NaN/Inf values (and how many) in ``sd``, read from ``where``."""
    bad = non_finite(sd)
    if bad is not None:
        key, n, size, tensors = bad
        more = f" ({tensors} tensors in all)" if tensors > 1 else ""
        raise UserError(f"{where} holds non-finite weights: {key} has {n} NaN/Inf values of {size}{more}; "
                        "the training diverged or the file is damaged: use an earlier checkpoint")


def _drop_unused(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Drop InstanceNorm running statistics that old pix2pixHD checkpoints carry but never use."""
    mods = dict(model.named_modules())
    out = {}
    for k, v in sd.items():
        parent, _, leaf = k.rpartition(".")
        if leaf in ("running_mean", "running_var", "num_batches_tracked") and isinstance(
            mods.get(parent), torch.nn.InstanceNorm2d
        ) and k not in model.state_dict():
            continue
        out[k] = v
    return out


def state_dict_mismatch(
    expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, mis-shaped) between two ``{key: shape}`` maps."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    misshaped = [f"{k} {list(got[k])} (model: {list(expected[k])})" for k in expected if k in got and tuple(got[k]) != tuple(expected[k])]
    # old-format spectral norm (explicit `.weight`, no `.weight_v`) is converted by torch's load hook
    missing = [k for k in missing if not (k.endswith(".weight_v") and k[: -len("_v")] in got)]
    unexpected = [k for k in unexpected if not (k.endswith(".weight") and k + "_v" in expected)]
    return missing, unexpected, misshaped


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def matching_presets(shapes: dict[str, tuple[int, ...]], include_tiny: bool = True) -> list[str]:
    """``model:preset`` names whose state dict has exactly these keys and shapes (meta-built, no weights)."""
    from asapbench.registry import create_generator, get_spec, model_names

    found = []
    for name in model_names(include_tiny):
        for preset in get_spec(name).presets:
            with torch.device("meta"):
                m = create_generator(name, preset)
            if not any(state_dict_mismatch(_shapes(m.state_dict()), shapes)):
                found.append(f"{name}:{preset}")
    return found


def _run_config(path: Path, name: str) -> tuple[str | None, dict[str, Any]]:
    """Preset and overrides recorded by `asapbench train` in run.json beside the checkpoint."""
    meta = path.parent / "run.json"
    if not meta.is_file():
        return None, {}
    from asapbench.fsutil import read_json

    try:
        info = read_json(meta, "run.json")
    except UserError:  # unreadable, not JSON, or nested too deeply: no recorded configuration
        return None, {}
    if not isinstance(info, dict) or info.get("model") != name:
        return None, {}
    return info.get("preset"), dict(info.get("overrides") or {})


def _mismatches(name: str, preset: str, shapes: dict[str, tuple[int, ...]], **overrides: Any):
    """(missing, unexpected, mis-shaped) of ``shapes`` against ``name``/``preset`` (meta-built, no weights)."""
    from asapbench.registry import create_generator

    with torch.device("meta"):
        m = create_generator(name, preset, **overrides)
    kept = _drop_unused({k: torch.empty(s, device="meta") for k, s in shapes.items()}, m)
    return state_dict_mismatch(_shapes(m.state_dict()), _shapes(kept))


def best_fit_preset(name: str, shapes: dict[str, tuple[int, ...]]) -> tuple[str, int]:
    """(preset of ``name`` with the fewest missing, unexpected and mis-shaped tensors, that number).

    Ties go to the model's default preset, then to the registry's order.
    """
    from asapbench.registry import get_spec

    spec = get_spec(name)
    order = [spec.default_preset, *[p for p in spec.presets if p != spec.default_preset]]
    scored = []
    for preset in order:
        try:
            n = sum(len(x) for x in _mismatches(name, preset, shapes))
        except Exception:  # noqa: BLE001 - a preset that cannot be built does not fit
            continue
        scored.append((n, preset))
    if not scored:
        return spec.default_preset, -1
    n, preset = min(scored, key=lambda t: t[0])  # min keeps the first of equals: the default preset
    return preset, n


def _recorded_owner(path: Path, shapes: dict[str, tuple[int, ...]]) -> tuple[str, str] | None:
    """(model, preset) that the run.json beside ``path`` records, when the file's tensors fit that configuration."""
    from asapbench.fsutil import read_json

    try:
        info = read_json(path.parent / "run.json", "run.json")
        model, preset = info["model"], info["preset"]
        if not isinstance(model, str) or not isinstance(preset, str):
            return None
        if any(_mismatches(model, preset, shapes, **dict(info.get("overrides") or {}))):
            return None
    except Exception:  # noqa: BLE001 - no run.json, an unreadable one, or one of an unknown model: no owner
        return None
    return model, preset


def checkpoint_owner(path: Path, shapes: dict[str, tuple[int, ...]]) -> tuple[str, str, str] | None:
    """(model, preset, how it was found) of the generator a checkpoint holds, or None if nothing comes close.

    In order: the configuration ``asapbench train`` recorded in the run.json beside the file (when the
    file's tensors fit it), a registered preset whose state dict the file fits exactly, else the preset
    of any registered model with the fewest missing, unexpected and mis-shaped tensors.
    """
    from asapbench.registry import model_names

    owner = _recorded_owner(path, shapes)
    if owner is not None:
        return (*owner, "its run.json")
    fits = matching_presets(shapes, include_tiny=True)
    if fits:
        model, preset = fits[0].split(":", 1)
        return model, preset, "its tensors fit that preset exactly"
    scored = []
    for name in model_names(True):
        preset, n = best_fit_preset(name, shapes)
        if n >= 0:
            scored.append((n, name, preset))
    if not scored:
        return None
    n, name, preset = min(scored, key=lambda t: t[0])
    return name, preset, f"the closest registered preset: {n} tensor(s) differ"


def load_generator(
    name: str, preset: str | None = None, path: str | os.PathLike | None = None, strict: bool = True, **overrides: Any
):
    """Build ``name``/``preset`` and load the checkpoint at ``path`` into it; returns the model in eval mode.

    ``path`` may be a run folder (its ``latest_net_G.pth`` is read). The ``run.json`` that
    ``asapbench train`` writes beside its checkpoints supplies the preset (when ``preset`` is None)
    and the overrides the run needed (when the preset is the recorded one). Otherwise
    ``preset=None`` picks the preset of ``name`` whose shapes fit the file, else the one it fits
    best (fewest mismatching tensors), whose mismatches the error then names. Weights with NaN or
    Inf values are refused (UserError naming the first such tensor).
    """
    from asapbench.registry import create_generator, get_spec

    if path is None:
        raise UserError("load_generator needs a checkpoint path")
    p = resolve_checkpoint_path(path)
    spec = get_spec(name)
    sd = read_state_dict(p)
    check_finite(sd, f"checkpoint {str(p)!r}")
    recorded_preset, recorded = _run_config(p, name)
    if preset is None or preset == recorded_preset:  # the configuration `asapbench train` recorded
        preset = preset or recorded_preset
        overrides = {**recorded, **overrides}
    closest = None
    if preset is None:
        fits = [m.split(":", 1)[1] for m in matching_presets(_shapes(sd), include_tiny=True) if m.split(":", 1)[0] == name]
        if fits:
            preset = spec.default_preset if spec.default_preset in fits else fits[0]
        else:
            preset, closest = best_fit_preset(name, _shapes(sd))
    model = create_generator(name, preset, **overrides)
    sd = _drop_unused(sd, model)
    missing, unexpected, misshaped = state_dict_mismatch(_shapes(model.state_dict()), _shapes(sd))
    if strict and (missing or unexpected or misshaped):
        owner = checkpoint_owner(p, _shapes(sd))
        if owner is not None and (owner[0], owner[1]) != (name, model.preset):  # another model's (or preset's) file
            raise UserError(f"checkpoint {str(p)!r} holds a generator of {owner[0]}:{owner[1]} ({owner[2]}), not "
                            f"of {name}:{model.preset}; load it as model {owner[0]} with preset {owner[1]}")
        fits = matching_presets(_shapes(sd))
        shown = 8 if closest is not None else 3
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:shown])}{more}")
        hint = (
            f"the file fits {', '.join(fits)}: pass that --model/--preset"
            if fits
            else "check that --model/--preset match the checkpoint (see `asapbench models`)"
        )
        what = (f"{name}:{model.preset}, the preset it fits best (no --preset given; {closest} tensor(s) differ)"
                if closest is not None else f"{name}:{model.preset}")
        raise UserError(f"checkpoint {str(p)!r} does not fit {what}: {'; '.join(parts)}; {hint}")
    model.load_state_dict(sd, strict=strict)
    model.checkpoint_path = str(p)
    return model.eval()


def save_generator(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Save the generator's plain state dict (official key format) atomically."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_torch_save(sd, path)
