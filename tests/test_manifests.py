"""Every preset's state dict has exactly the official key names and shapes (the manifests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import shared_path

from asapbench.counting import count_params
from asapbench.registry import create_generator, get_spec, model_names

FIXTURES = Path(__file__).resolve().parents[1] / "asapbench" / "fixtures"

PRESETS = [
    (name, preset, p.manifest)
    for name in model_names(include_tiny=False)
    for preset, p in get_spec(name).presets.items()
    if p.manifest
]


def _meta(name, preset):
    with torch.device("meta"):
        return create_generator(name, preset)


def test_every_full_model_has_presets_with_manifests():
    names = {n for n, _, _ in PRESETS}
    assert "asapnet" in names
    # the manifests the foundation issue maps to presets
    required = {
        ("asapnet", "cityscapes"): "asapnet_cityscapes.json",
        ("asapnet", "cityscapes-1024"): "asapnet_cityscapes_crop1024.json",
        ("asapnet", "facades512"): "asapnet_facades512.json",
        ("asapnet", "facades1024"): "asapnet_facades1024.json",
        ("asapnet", "facades2048"): "asapnet_facades2048.json",
        ("pix2pixhd", "cityscapes"): "pix2pixhd_global.json",
        ("pix2pixhd-local", "cityscapes"): "pix2pixhd_local.json",
        ("spade", "cityscapes"): "spade_cityscapes_more_256x512.json",
        ("spade", "cityscapes-normal"): "spade_cityscapes_normal_256x512.json",
        ("pix2pix", "unet256"): "pix2pix_unet256.json",
    }
    have = {(n, p): m for n, p, m in PRESETS}
    for key, manifest in required.items():
        assert have.get(key) == manifest, f"{key} should map to {manifest}"


@pytest.mark.parametrize("name,preset,manifest", PRESETS, ids=[f"{n}:{p}" for n, p, _ in PRESETS])
def test_state_dict_matches_fixture_exactly(name, preset, manifest):
    fixture = json.loads((FIXTURES / manifest).read_text())
    model = _meta(name, preset)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(fixture["tensors"]), "key names / order differ from the official generator"
    assert ours == fixture["tensors"]
    buffers = {k for k, _ in model.named_buffers() if k in ours}
    assert buffers == set(fixture["buffer_keys"])
    assert count_params(model) == fixture["params"]


@pytest.mark.parametrize("manifest", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_fixture_equals_shared_manifest(manifest):
    shared = json.loads(shared_path("reference", "official_state_dicts", manifest).read_text())
    fixture = json.loads((FIXTURES / manifest).read_text())
    assert fixture["tensors"] == shared["tensors"]
    assert fixture["params"] == shared["params"]
    assert fixture["buffer_keys"] == shared["buffer_keys"]


def test_paper_parameter_counts():
    """Supplement table: ASAP-Net 83.2M, SPADE 93.0M, pix2pix U-Net 54.4M."""
    assert {"asapnet", "spade", "pix2pix"} <= set(model_names())  # a failed registration fails, not skips
    assert round(count_params(_meta("asapnet", "cityscapes")) / 1e6, 1) == 83.2
    assert round(count_params(_meta("spade", "cityscapes")) / 1e6, 1) == 93.0
    assert round(count_params(_meta("pix2pix", "unet256")) / 1e6, 1) == 54.4
