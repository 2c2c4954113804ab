"""Generator inputs: realistic label maps, label maps read from files, and each model's input made from
them with the official encoding (:mod:`asapbench.labels`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from asapbench.labels import LABEL_DTYPE, encode_labels, label_palette


def random_label_map(
    batch: int, height: int, width: int, label_nc: int, seed: int = 0, blobs: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Realistic synthetic label and instance maps: random blobs of classes (a Voronoi partition).

    Returns (labels, instances), both int64 ``[N, 1, H, W]``. Deterministic for a given seed.
    """
    g = torch.Generator().manual_seed(seed)
    n = blobs or max(4, min(48, (height * width) // 4096 + 4))
    ys = torch.arange(height, dtype=torch.float32).view(height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, width)
    labels, insts = [], []
    for _ in range(batch):
        cy = torch.rand(n, generator=g) * height
        cx = torch.rand(n, generator=g) * width
        # anisotropic distances give irregular, non-convex-looking regions
        sy = 0.5 + torch.rand(n, generator=g)
        sx = 0.5 + torch.rand(n, generator=g)
        d = ((ys.unsqueeze(0) - cy.view(n, 1, 1)) * sy.view(n, 1, 1)) ** 2 + (
            (xs.unsqueeze(0) - cx.view(n, 1, 1)) * sx.view(n, 1, 1)
        ) ** 2
        owner = d.argmin(0)  # [H, W] blob index
        cls = torch.randint(0, label_nc, (n,), generator=g)
        labels.append(cls[owner])
        insts.append(cls[owner] * 1000 + owner)
    return torch.stack(labels).unsqueeze(1), torch.stack(insts).unsqueeze(1)


def labels_to_image(labels: torch.Tensor, label_nc: int) -> torch.Tensor:
    """Render an integer label map ``[N, 1, H, W]`` as an RGB image in [-1, 1] (pix2pix input)."""
    pal = label_palette(label_nc).to(labels.device)
    return pal[labels.squeeze(1).long()].permute(0, 3, 1, 2).contiguous()


def label_input(model, labels: torch.Tensor, instances: torch.Tensor | None = None) -> torch.Tensor:
    """The label-map input of ``model`` in ``--input labels`` mode: int32 ``[N, 1, H, W]`` label ids, or
    ``[N, 2, H, W]`` (channel 1: instance ids, the labels themselves when there are none) for a model
    whose input has the instance-edge channel (``model.label_input_nc``)."""
    if labels.dim() == 3:
        labels = labels.unsqueeze(1)
    if model.label_input_nc == 1:
        return labels.to(LABEL_DTYPE).contiguous()
    inst = labels if instances is None else (instances.unsqueeze(1) if instances.dim() == 3 else instances)
    return torch.cat([labels, inst], dim=1).to(LABEL_DTYPE)


def example_input(model, batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A realistic input tensor for ``model`` (any asapbench generator) at H x W, on the CPU: float32 (the
    official input), or the int32 label map (:func:`label_input`) when ``model.input_mode == "labels"``."""
    label_nc = model.label_nc or 19
    labels, inst = random_label_map(batch, height, width, label_nc, seed=seed)
    if getattr(model, "input_mode", "onehot") == "labels":
        return label_input(model, labels, inst)
    if model.input_kind == "image":
        return labels_to_image(labels, label_nc)
    return encode_labels(
        labels, label_nc, inst if model.instance_edge else None, contain_dontcare=model.contain_dontcare
    )


# ----------------------------------------------------------------------------------------------
# label maps from files
# ----------------------------------------------------------------------------------------------
#: file-name suffixes of a Cityscapes label / instance pair; any other PNG in a folder is a label map alone
_LABEL_SUFFIX, _INST_SUFFIX = "_labelIds.png", "_instanceIds.png"


def label_map_files(folder: str | Path) -> list[tuple[Path, Path | None]]:
    """(label map, instance map or None) pairs in ``folder``, sorted by name.

    Cityscapes pairs (``*_labelIds.png`` with ``*_instanceIds.png`` beside it or in a sibling
    ``*_inst`` folder) are matched; any other single-channel PNG counts as a label map without
    instances. A folder with none raises UserError naming what was looked for.
    """
    from asapbench.errors import UserError
    from asapbench.images import is_regular_file

    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"label-map folder {str(root)!r} does not exist or is not a folder; pass a folder of label PNGs")
    pairs: list[tuple[Path, Path | None]] = []
    for p in sorted(root.glob("*.png")):
        if p.name.endswith(_INST_SUFFIX) or not is_regular_file(p):  # skip FIFOs, folders, devices named *.png
            continue
        inst = None
        if p.name.endswith(_LABEL_SUFFIX):
            name = p.name[: -len(_LABEL_SUFFIX)] + _INST_SUFFIX
            for cand in (root / name, root.parent / root.name.replace("label", "inst") / name):
                if cand.is_file():
                    inst = cand
                    break
        pairs.append((p, inst))
    if not pairs:
        raise UserError(f"no label maps (*.png) in {str(root)!r}; pass a folder of label PNGs, e.g. Cityscapes *_labelIds.png")
    return pairs


def check_label_map_files(folder: str | Path) -> list[tuple[Path, Path | None]]:
    """:func:`label_map_files` of ``folder``, each file's header read (not decoded): a file that is not an
    image, or one too large to decode safely, raises UserError before any work is done."""
    from asapbench.images import open_user_image

    pairs = label_map_files(folder)
    for lab, inst in pairs:
        for f in (lab, inst):
            if f is not None:
                open_user_image(f, "label map", "pass a PNG of integer label ids", load=False)
    return pairs


def read_label_map(path: str | Path, height: int, width: int) -> torch.Tensor:
    """An integer map (labels or instance ids) from a PNG, nearest-resized to H x W, int64 ``[1, 1, H, W]``."""
    import numpy as np
    from PIL import Image

    from asapbench.errors import UserError
    from asapbench.images import open_user_image

    img = open_user_image(path, "label map", "pass a PNG of integer label ids")
    arr = np.array(img.resize((width, height), Image.NEAREST))
    if arr.ndim != 2:
        raise UserError(f"label map {str(path)!r} has {arr.shape[-1]} channels; a label map has one (integer ids)")
    return torch.from_numpy(arr.astype(np.int64)).view(1, 1, height, width)


def input_from_label_maps(model, folder: str | Path, batch: int, height: int, width: int,
                          index: int = 0) -> tuple[str, torch.Tensor]:
    """(description, float32 input ``[batch, input_nc, H, W]``) from ``batch`` label maps of ``folder``
    (the int32 label map of :func:`label_input` when ``model.input_mode == "labels"``).

    Label ids outside the model's classes raise UserError (a folder of another dataset's maps).
    """
    from asapbench.errors import UserError

    files = label_map_files(folder)
    picked = [files[(index + b) % len(files)] for b in range(batch)]
    labs = torch.cat([read_label_map(lab, height, width) for lab, _ in picked])
    label_nc = model.label_nc or int(labs.max()) + 1
    n_cls = label_nc + (1 if model.contain_dontcare else 0)
    if getattr(model, "input_mode", "onehot") == "labels":
        n_cls = model.label_classes  # the in-graph encoding has a fixed number of classes (pix2pix: its palette)
    if int(labs.max()) >= n_cls or int(labs.min()) < 0:
        raise UserError(f"label maps in {str(folder)!r} hold ids up to {int(labs.max())}, but {model.model_name or 'the model'} "
                        f"takes {n_cls} classes; pass label maps of the dataset the model was configured for")
    if all(lab.name.endswith(_LABEL_SUFFIX) for lab, _ in picked):  # Cityscapes naming
        names = ", ".join(lab.name[: -len(_LABEL_SUFFIX)].replace("_gtFine", "") for lab, _ in picked)
        desc = f"Cityscapes {names} (label ids, nearest-resized to {height}x{width})"
    else:
        desc = f"label maps {', '.join(lab.name for lab, _ in picked)} (nearest-resized to {height}x{width})"
    if model.input_kind == "image":
        if getattr(model, "input_mode", "onehot") == "labels":
            return desc, label_input(model, labs)
        return desc, labels_to_image(labs, label_nc)
    insts = None
    if model.instance_edge:
        insts = torch.cat([read_label_map(inst, height, width) if inst is not None else read_label_map(lab, height, width)
                           for lab, inst in picked])
    if getattr(model, "input_mode", "onehot") == "labels":
        return desc, label_input(model, labs, insts)
    return desc, encode_labels(labs, label_nc, insts, contain_dontcare=model.contain_dontcare)
