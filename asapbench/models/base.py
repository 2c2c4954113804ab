"""The interface every generator in asapbench implements.

A generator is a ``torch.nn.Module`` whose ``forward(x)`` takes the official input tensor
``[N, input_nc, H, W]`` and returns one ``[N, 3, H, W]`` tensor in [-1, 1]. Sizes are computed
from the input on every call; nothing is cached per batch.

Label-map input (``set_input_mode("labels")``, ``--input labels``): ``forward`` takes the integer label
map instead, int32 ``[N, 1, H, W]`` (ids in [0, classes)), or ``[N, 2, H, W]`` with the instance-id map as
channel 1 where the model's input has the instance-edge channel, and computes the official input inside
the graph (:meth:`Generator.encode_label_input`, equal to :func:`asapbench.labels.encode_labels`). The
mode adds no parameters or buffers: the state dict and checkpoints are those of the one-hot model.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from asapbench.errors import UserError
from asapbench.labels import label_palette

#: what ``forward`` takes: the official float input ("onehot") or the integer label map ("labels")
INPUT_MODES = ("onehot", "labels")
#: classes assumed for a model without ``label_nc`` (pix2pix), as :func:`asapbench.inputs.example_input`
DEFAULT_LABEL_NC = 19


def edge_map(inst: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Instance edges of integer ids ``[N, 1, H, W]`` as 0/1 of ``dtype``, written with graph ops only
    (slices, comparisons, constant pads, max): the same map as :func:`asapbench.labels.instance_edges`."""
    dx = (inst[..., :, 1:] != inst[..., :, :-1]).to(dtype)
    dy = (inst[..., 1:, :] != inst[..., :-1, :]).to(dtype)
    ex = torch.maximum(F.pad(dx, (1, 0, 0, 0)), F.pad(dx, (0, 1, 0, 0)))
    ey = torch.maximum(F.pad(dy, (0, 0, 1, 0)), F.pad(dy, (0, 0, 0, 1)))
    return torch.maximum(ex, ey)


class Generator(nn.Module):
    """Base class: input description plus the resolution rule of the architecture.

    The registry (:func:`asapbench.registry.create_generator`) fills in what was built
    (``model_name``, ``preset``, ``config``, ``overrides``); :func:`asapbench.checkpoint.load_generator`
    adds ``checkpoint_path``; :func:`asapbench.weights.spread_for_resolution` adds ``weights_note``.
    """

    #: registry name, e.g. "asapnet" ("" for a generator built outside the registry)
    model_name: str = ""
    #: preset name the generator was built from (None outside the registry)
    preset: str | None = None
    #: the constructor keyword arguments (preset values with the overrides applied)
    config: Mapping[str, Any] = MappingProxyType({})
    #: the keyword arguments given on top of the preset (e.g. {"scale": 32} for ASAP-Net at 512x1024)
    overrides: Mapping[str, Any] = MappingProxyType({})
    #: the file the weights were loaded from (None: random weights)
    checkpoint_path: str | None = None
    #: how random weights were made realistic (None for trained weights)
    weights_note: str | None = None

    #: channels of the input tensor (one-hot labels [+ dontcare] [+ instance edge], or 3 for RGB)
    input_nc: int
    #: number of semantic labels one-hot encoded in the input (None for pix2pix's RGB input)
    label_nc: int | None = None
    #: whether the last input channel is the instance-edge map
    instance_edge: bool = False
    #: whether the one-hot block has an extra don't-care channel (index label_nc)
    contain_dontcare: bool = False
    #: "labels" (one-hot + edge) or "image" (pix2pix: an RGB rendering of the label map in [-1, 1])
    input_kind: str = "labels"
    #: what forward takes: "onehot" (the official float input above) or "labels" (the integer label map,
    #: encoded inside the graph); set with :meth:`set_input_mode`
    input_mode: str = "onehot"

    @property
    def graph_variant(self) -> str:
        """What, beyond the configuration, changes the exported graph (keys cached exports); "" if nothing.

        The model's own parts (:meth:`graph_variant_parts`), then ``input=labels`` in label-map mode (the
        one-hot mode adds nothing, so one-hot keys are those of before the mode existed)."""
        parts = list(self.graph_variant_parts())
        if self.input_mode != "onehot":
            parts.append(f"input={self.input_mode}")
        return ",".join(parts)

    def graph_variant_parts(self) -> list[str]:
        """Implementation choices of the model that change its exported graph (``key=value``)."""
        return []

    def mixed_precision_variant(self, dtype: torch.dtype) -> tuple[str, Generator] | None:
        """A copy that runs only part of the model in the reduced ``dtype``, with what it does in words, for
        when casting the whole model fails the parity gate; None (the default): the model has none.
        The torch runner and ``asapbench profile`` try the whole-model cast first, then this."""
        return None

    # label-map input --------------------------------------------------------------------------
    def set_input_mode(self, mode: str) -> Generator:
        """``"onehot"`` (default) or ``"labels"``: what :meth:`forward` takes (module docstring); returns self."""
        if mode not in INPUT_MODES:
            raise UserError(f"unknown input {mode!r}; choose one of: {', '.join(INPUT_MODES)}")
        self.input_mode = mode
        return self

    @property
    def label_classes(self) -> int:
        """Label ids the model takes: label_nc (+1 don't-care); pix2pix's palette has DEFAULT_LABEL_NC."""
        return (self.label_nc or DEFAULT_LABEL_NC) + (1 if self.contain_dontcare else 0)

    @property
    def label_input_nc(self) -> int:
        """Channels of the label-map input: 1 (label ids), 2 with the instance ids the edge channel needs."""
        return 2 if (self.instance_edge and self.input_kind != "image") else 1

    def float_dtype(self) -> torch.dtype:
        """The dtype of the first floating parameter (float32 when there is none): what the model computes in."""
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def check_label_input(self, x: torch.Tensor) -> None:
        """Raise UserError unless ``x`` is an integer label map ``[N, label_input_nc, H, W]`` of a valid size."""
        name = self.model_name or type(self).__name__
        want = "label ids" + (" and instance ids" if self.label_input_nc == 2 else "")
        if x.dim() != 4 or x.shape[1] != self.label_input_nc or x.is_floating_point() or x.is_complex():
            raise UserError(
                f"{name} with --input labels expects an integer map [N, {self.label_input_nc}, H, W] ({want}), got "
                f"{str(x.dtype).replace('torch.', '')} {list(x.shape)}; build it with "
                "asapbench.inputs.label_input (or use --input onehot for the one-hot tensor)")
        self.check_input_size(int(x.shape[2]), int(x.shape[3]))

    def encode_label_input(self, x: torch.Tensor) -> torch.Tensor:
        """The official input ``[N, input_nc, H, W]`` from the label map ``x`` (graph ops only).

        One-hot: ``labels == c`` per class c (an ``Equal`` against a constant ``[1, C, 1, 1]`` range);
        edges: :func:`edge_map` of channel 1; pix2pix: the label palette row of each pixel (``Gather``).
        Ids outside [0, label_classes) give an all-zero one-hot (pix2pix: an indexing error); the CLI
        checks label maps it reads before feeding them.
        """
        dtype = self.float_dtype()
        lab = x[:, :1]
        if self.input_kind == "image":
            pal = label_palette(self.label_nc or DEFAULT_LABEL_NC).to(device=x.device, dtype=dtype)
            return F.embedding(lab[:, 0], pal).permute(0, 3, 1, 2).contiguous()
        ids = torch.arange(self.label_classes, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        onehot = (lab == ids).to(dtype)
        if self.input_nc == self.label_classes:
            return onehot
        return torch.cat([onehot, edge_map(x[:, 1:2], dtype)], dim=1)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the official input: encoded in the graph in label mode, unchanged otherwise."""
        if self.input_mode != "labels":
            return x
        self.check_label_input(x)
        return self.encode_label_input(x)

    def size_multiple(self) -> tuple[int, int]:
        """(mh, mw): H and W must be positive multiples of these."""
        raise NotImplementedError

    def min_size(self) -> tuple[int, int]:
        """Smallest (H, W) the architecture takes."""
        return self.size_multiple()

    def check_input_size(self, height: int, width: int) -> None:
        """Raise UserError if the architecture cannot take an H x W input."""
        mh, mw = self.size_multiple()
        nh, nw = self.min_size()
        if height < nh or width < nw or height % mh or width % mw:
            name = self.model_name or type(self).__name__
            raise UserError(
                f"{name} cannot take a {height}x{width} input: height must be a multiple of {mh} "
                f"(at least {nh}) and width a multiple of {mw} (at least {nw}); "
                f"choose e.g. {max(nh, (height // mh) * mh or mh)}x{max(nw, (width // mw) * mw or mw)}"
            )

    def prepare_for_inference(self) -> Generator:
        """Fold training-only reparametrisations (e.g. spectral norm) for deployment; returns self."""
        return self.eval()
