"""The interface every generator in asapbench implements.

A generator is a ``torch.nn.Module`` whose ``forward(x)`` takes the official input tensor
``[N, input_nc, H, W]`` and returns one ``[N, 3, H, W]`` tensor in [-1, 1]. Sizes are computed
from the input on every call; nothing is cached per batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from asapbench.errors import UserError


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

    @property
    def graph_variant(self) -> str:
        """What, beyond the configuration, changes the exported graph (keys cached exports); "" if nothing."""
        return ""

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
