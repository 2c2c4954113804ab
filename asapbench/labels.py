"""Label encoding, a leaf of the package (torch only): the label-map dtype, instance edges, the official
one-hot encoding and the fixed label palette. :mod:`asapbench.inputs` (making inputs) and
:mod:`asapbench.models.base` (the same encoding as graph ops) both import it; it imports neither.

The encoding follows the official code (docs/generators.md, "Input encoding"): one-hot of
the label map (channel c is 1.0 where label == c), an optional don't-care channel, then the
instance-edge channel. Edges: a pixel is 1.0 where its instance id differs from any existing
4-neighbour (both pixels of an unequal pair are marked; no diagonals, no wrap-around).
"""

from __future__ import annotations

import torch

#: dtype of the label-map input (TensorRT's native index type; ONNX Equal/Gather take it as is)
LABEL_DTYPE = torch.int32


def instance_edges(inst: torch.Tensor) -> torch.Tensor:
    """Instance-edge map of integer ids ``[N, 1, H, W]`` (or ``[H, W]``) as float 0/1, same shape."""
    squeeze = inst.dim() == 2
    t = inst.reshape(1, 1, *inst.shape) if squeeze else inst
    edge = torch.zeros(t.shape, dtype=torch.bool, device=t.device)
    dx = t[..., :, 1:] != t[..., :, :-1]
    dy = t[..., 1:, :] != t[..., :-1, :]
    edge[..., :, 1:] |= dx
    edge[..., :, :-1] |= dx
    edge[..., 1:, :] |= dy
    edge[..., :-1, :] |= dy
    out = edge.float()
    return out.reshape(inst.shape) if squeeze else out


def encode_labels(
    labels: torch.Tensor,
    label_nc: int,
    instances: torch.Tensor | None = None,
    contain_dontcare: bool = False,
) -> torch.Tensor:
    """Official generator input from an integer label map ``[N, 1, H, W]`` (and instance ids).

    Returns float32 ``[N, label_nc (+1 dontcare) (+1 edge), H, W]``.
    """
    if labels.dim() == 3:
        labels = labels.unsqueeze(1)
    n_cls = label_nc + (1 if contain_dontcare else 0)
    lab = labels.long()
    if int(lab.min()) < 0 or int(lab.max()) >= n_cls:
        raise ValueError(f"label ids must lie in [0, {n_cls - 1}], got [{int(lab.min())}, {int(lab.max())}]")
    onehot = torch.zeros(lab.shape[0], n_cls, *lab.shape[2:], dtype=torch.float32, device=lab.device)
    onehot.scatter_(1, lab, 1.0)
    if instances is None:
        return onehot
    if instances.dim() == 3:
        instances = instances.unsqueeze(1)
    return torch.cat([onehot, instance_edges(instances)], dim=1)


def label_palette(label_nc: int, seed: int = 12345) -> torch.Tensor:
    """A fixed RGB colour per label, float ``[label_nc, 3]`` in [-1, 1] (pix2pix-style label images)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(label_nc, 3, generator=g) * 2 - 1
