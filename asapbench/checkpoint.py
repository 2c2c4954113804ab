"""Loading and saving generator checkpoints by the official key names.

``load_generator(name, preset, path)`` reads an official ``.pth`` (or one written by
``asapbench train``) with ``torch.load(weights_only=True)``, strips ``module.`` prefixes
(DataParallel / DDP), drops the unused InstanceNorm statistics of PyTorch-0.3-era pix2pixHD files,
and loads strictly: missing, unexpected or mis-shaped keys are named in the error, together with
the registered model/preset the file does fit, if any.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from asapbench.errors import UserError
from asapbench.fsutil import atomic_torch_save

_WRAPPERS = ("state_dict", "model", "netG", "generator", "G")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict (UserError if missing or unreadable)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint file not found: {str(p)!r}; pass the path of an existing .pth file")
    if not p.is_file():
        raise UserError(f"checkpoint path {str(p)!r} is not a file; pass the path of a .pth file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated pickle, a non-tensor pickle, ...
        import zipfile

        if not zipfile.is_zipfile(p):
            msg = "not a PyTorch zip archive"
        else:
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(
            f"cannot read checkpoint {str(p)!r} as a PyTorch state dict ({msg[:160]}); "
            "the file is corrupt or not a generator .pth: re-download or re-train it"
        ) from None
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            if key in obj and isinstance(obj[key], dict) and obj[key] and all(isinstance(v, torch.Tensor) for v in obj[key].values()):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {str(p)!r} does not hold a state dict of tensors; pass a generator .pth (e.g. latest_net_G.pth)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


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
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None, {}
    if info.get("model") != name:
        return None, {}
    return info.get("preset"), dict(info.get("overrides") or {})


def load_generator(
    name: str, preset: str | None = None, path: str | os.PathLike | None = None, strict: bool = True, **overrides: Any
):
    """Build ``name``/``preset`` and load the checkpoint at ``path`` into it; returns the model in eval mode.

    The ``run.json`` that ``asapbench train`` writes beside its checkpoints supplies the preset (when
    ``preset`` is None) and the overrides the run needed (when the preset is the recorded one).
    Otherwise ``preset=None`` picks the preset of ``name`` whose shapes fit the file, else the default.
    """
    from asapbench.registry import create_generator, get_spec

    if path is None:
        raise UserError("load_generator needs a checkpoint path")
    p = Path(path)
    spec = get_spec(name)
    sd = read_state_dict(p)
    recorded_preset, recorded = _run_config(p, name)
    if preset is None or preset == recorded_preset:  # the configuration `asapbench train` recorded
        preset = preset or recorded_preset
        overrides = {**recorded, **overrides}
    if preset is None:
        fits = [m.split(":", 1)[1] for m in matching_presets(_shapes(sd), include_tiny=True) if m.split(":", 1)[0] == name]
        preset = spec.default_preset if (not fits or spec.default_preset in fits) else fits[0]
    model = create_generator(name, preset, **overrides)
    sd = _drop_unused(sd, model)
    missing, unexpected, misshaped = state_dict_mismatch(_shapes(model.state_dict()), _shapes(sd))
    if strict and (missing or unexpected or misshaped):
        fits = matching_presets(_shapes(sd))
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
        hint = (
            f"the file fits {', '.join(fits)}: pass that --model/--preset"
            if fits
            else "check that --model/--preset match the checkpoint (see `asapbench models`)"
        )
        raise UserError(f"checkpoint {str(p)!r} does not fit {name}:{model.preset}: {'; '.join(parts)}; {hint}")
    model.load_state_dict(sd, strict=strict)
    model.checkpoint_path = str(p)
    return model.eval()


def save_generator(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Save the generator's plain state dict (official key format) atomically."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_torch_save(sd, path)
