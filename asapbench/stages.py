"""How a generator splits into stages for ``asapbench profile`` (:class:`StagePlan`), and two helpers the
models' own plans share. A leaf (torch only): each generator states its plan next to its code
(``Generator.stage_plan``); :mod:`asapbench.bench.profile` times whatever plan a model gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

StageFn = Callable[[Any], Any]


@dataclass
class StagePlan:
    """How one generator splits into stages.

    ``stages``: (name, fn) run in order on the input (each gets the previous stage's output);
    ``scopes``: module path -> stage for ONNX nodes (the deepest listed scope of a node wins);
    ``calls``: (source substring, stage) for nodes at the top level (functional code in forward).
    """

    stages: list[tuple[str, StageFn]]
    scopes: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.stages]


def with_label_encoding(m, plan: StagePlan) -> StagePlan:
    """A baseline's plan in ``--input labels`` mode: a first stage that encodes the label map in the graph."""
    if getattr(m, "input_mode", "onehot") != "labels":
        return plan
    return StagePlan([("input encoding", m.model_input), *plan.stages], scopes=plan.scopes,
                     calls=[("self.model_input(", "input encoding"), *plan.calls])


def seq_range(seq: nn.Sequential, lo: int, hi: int) -> StageFn:
    layers = list(seq)[lo:hi]

    def run(x):
        for layer in layers:
            x = layer(x)
        return x

    return run
