"""ASAP-Net: the behaviours that decide equivalence with the official generator.

An independent, deliberately naive reference follows shared/docs/official-behaviour.md section 1
literally (per-pixel MLP on nearest-upsampled parameters, encoding from global coordinates, a
loop-based tent filter) and is compared with the batched implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asapbench import UserError, create_generator
from asapbench.models.asapnet import positional_table, tent_downsample, tent_kernel


# ------------------------------------------------------------------------------------------
# naive reference (written from the spec, sharing no code with asapbench.models.asapnet)
# ------------------------------------------------------------------------------------------
def ref_tent(x: torch.Tensor, s: int) -> torch.Tensor:
    """Loop version: reflect index, 2s taps centred on each s-block, separable, horizontal first."""
    k = np.array(list(range(1, 2 * s, 2)) + list(range(2 * s - 1, 0, -2)), dtype=np.float64) / (2 * s * s)
    xn = x.double().numpy()
    n, c, h, w = xn.shape

    def refl(i, size):
        if i < 0:
            return -i
        if i >= size:
            return 2 * (size - 1) - i
        return i

    tmp = np.zeros((n, c, h, w // s))
    for j in range(w // s):
        for t in range(2 * s):
            tmp[..., j] += k[t] * xn[..., refl(s * j - s // 2 + t, w)]
    out = np.zeros((n, c, h // s, w // s))
    for i in range(h // s):
        for t in range(2 * s):
            out[:, :, i, :] += k[t] * tmp[:, :, refl(s * i - s // 2 + t, h), :]
    return torch.from_numpy(out).float()


def ref_encoding(height: int, width: int, s: int) -> torch.Tensor:
    """[4 log2 S, H, W] from global coordinates, float32 recipe of the spec."""
    chans = []
    f = s
    two_pi = np.float32(2 * math.pi)
    while f >= 2:
        x = np.arange(width, dtype=np.float32)
        y = np.arange(height, dtype=np.float32)
        tx = (np.float32(np.fmod(x, np.float32(f))) * two_pi) / np.float32(f)
        ty = (np.float32(np.fmod(y, np.float32(f))) * two_pi) / np.float32(f)
        cx, sx = np.cos(tx).astype(np.float32), np.sin(tx).astype(np.float32)
        cy, sy = np.cos(ty).astype(np.float32), np.sin(ty).astype(np.float32)
        for v, along_x in ((cx, True), (sx, True), (cy, False), (sy, False)):
            chans.append(np.broadcast_to(v[None, :] if along_x else v[:, None], (height, width)))
        f //= 2
    return torch.from_numpy(np.stack(chans).astype(np.float32))


def ref_forward(model, x: torch.Tensor) -> torch.Tensor:
    """Official forward per the spec: P from the LR stream, per-pixel MLP of cell (r//S, c//S)."""
    s = model.scale
    n, _, height, width = x.shape
    lr_in = x if model.pre_factor == 1 else ref_tent(x, model.pre_factor)
    p = model.lowres_stream(lr_in).double()  # LR conv stream itself is plain torch modules
    p_full = p.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)  # nearest upsampling by S
    hr = x[:, :-1] if model.lr_instance else x
    feats = torch.cat([hr.double(), ref_encoding(height, width, s).double().expand(n, -1, -1, -1)], 1)
    chans = model.mlp_channels
    h = feats.permute(0, 2, 3, 1)  # (N, H, W, C)
    q = p_full.permute(0, 2, 3, 1)
    off = 0
    for li, (ci, co) in enumerate(zip(chans[:-1], chans[1:])):
        b = q[..., off : off + co]
        wgt = q[..., off + co : off + co + ci * co].reshape(n, height, width, ci, co)
        off += co + ci * co
        h = torch.einsum("nhwi,nhwio->nhwo", h, wgt) + b
        h = torch.tanh(h) if li == len(chans) - 2 else torch.where(h > 0, h, 0.01 * h)
    return h.permute(0, 3, 1, 2).float()


def _randomise(model, seed=0, p_scale=0.15):
    """Random weights giving a non-trivial, mostly unsaturated output (std ~0.2-0.6)."""
    g = torch.Generator().manual_seed(seed)
    last = model.lowres_stream.model[-1]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("1.weight") and p.dim() == 1:  # InstanceNorm gamma
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(1, p[0].numel())))
        last.weight.mul_(p_scale)
        last.bias.mul_(p_scale)
    return model


def _input(model, n, h, w, seed=0):
    from asapbench.inputs import example_input

    return example_input(model, n, h, w, seed=seed)


# ------------------------------------------------------------------------------------------
# pinned small behaviours
# ------------------------------------------------------------------------------------------
def test_tent_kernel_values():
    assert torch.equal(tent_kernel(2), torch.tensor([1, 3, 3, 1.0]) / 8)
    assert torch.equal(tent_kernel(4), torch.tensor([1, 3, 5, 7, 7, 5, 3, 1.0]) / 32)
    k8 = tent_kernel(8)
    assert k8.numel() == 16 and float(k8.sum()) == 1.0 and k8[0] == 1 / 128 and k8[7] == 15 / 128


@pytest.mark.parametrize("s", [2, 4, 8])
def test_tent_downsample_matches_loop_reference_including_borders(s):
    x = torch.randn(2, 3, 4 * s, 6 * s)
    ours = tent_downsample(x, s)
    assert ours.shape == (2, 3, 4, 6)
    torch.testing.assert_close(ours, ref_tent(x, s), atol=1e-5, rtol=0)
    # antialiased bilinear agrees in the interior only: the border treatment is what differs
    aa = F.interpolate(x, scale_factor=1 / s, mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(ours[..., 1:-1, 1:-1], aa[..., 1:-1, 1:-1], atol=1e-5, rtol=0)
    assert (ours - aa).abs().max() > 1e-3


def test_positional_encoding_values_and_channel_order():
    t = positional_table(4)  # levels: period 4 then period 2; channels cos x, sin x, cos y, sin y
    assert t.shape == (16, 8) and t.dtype == torch.float32
    row = lambda a, b: t[a * 4 + b]  # noqa: E731  pixel at tile row a, column b
    one, zero = 1.0, 0.0
    # pixel (row 0, col 1): x-angle 2π/4 at period 4, π at period 2; y-angles 0
    r = row(0, 1)
    assert abs(r[0]) < 1e-7 and r[1] == one and r[2] == one and r[3] == zero  # period 4: cx≈0, sx=1, cy=1, sy=0
    assert r[4] == -1.0 and r[6] == one and r[7] == zero  # period 2: cos π = -1
    # sin(π) in float32 is -8.74e-8, not 0: the float32 recipe is pinned
    assert r[5].item() == pytest.approx(np.float32(np.sin(np.float32(np.pi))), abs=0) and r[5] != 0
    # pixel (row 3, col 0): y-angle 3·2π/4
    r = row(3, 0)
    assert r[0] == one and r[1] == zero and r[3] == -1.0
    # every tile repeats the same pattern and equals the global-coordinate encoding
    enc = ref_encoding(8, 12, 4)  # [8, H, W]
    for a in range(8):
        for b in range(12):
            assert torch.equal(enc[:, a, b], row(a % 4, b % 4))


def test_lowres_stream_layers_padding_and_biases():
    city = create_generator("asapnet", "cityscapes")
    convs = [m for m in city.lowres_stream.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs[:5]] == [1, 2, 2, 2, 2]
    assert all(c.bias is None and c.padding == (1, 1) for c in convs[:-1])  # zero padding, no bias
    assert convs[-1].kernel_size == (1, 1) and convs[-1].bias is not None
    assert not any(isinstance(m, torch.nn.ReflectionPad2d) for m in city.modules())
    assert all(m.affine and not m.track_running_stats for m in city.modules() if isinstance(m, torch.nn.InstanceNorm2d))
    fac = create_generator("asapnet", "facades512")
    assert sum(isinstance(m, torch.nn.ReflectionPad2d) for m in fac.modules()) == 12
    assert all(c.padding == (0, 0) for c in fac.modules() if isinstance(c, torch.nn.Conv2d))
    # geometry: S = H/16 at the crop, S1 = S/16, 16-row grid, 4 log2 S positional channels
    for preset, (s, s1, pe, c_total) in {
        "cityscapes": (16, 1, 16, 16003), "cityscapes-1024": (32, 2, 20, 16259),
        "facades512": (32, 2, 20, 14851), "facades1024": (64, 4, 24, 15107), "facades2048": (128, 8, 28, 15363),
    }.items():
        with torch.device("meta"):
            m = create_generator("asapnet", preset)
        from asapbench.registry import get_preset

        hgt, wid = get_preset("asapnet", preset).resolution
        g = m.geometry(hgt, wid)
        assert (g["S"], g["S1"], g["pe_channels"], g["mlp_params"]) == (s, s1, pe, c_total)
        assert g["grid"][0] == 16 and g["lr_input"][0] == 256


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_parameter_layout_bias_first_then_cin_major_weights(impl):
    m = create_generator("asapnet-tiny", pixelwise_impl=impl).eval()
    chans = m.mlp_channels
    n, s = 1, m.scale
    hr = torch.randn(n, chans[0] - m.pe_channels, s, s)
    p = torch.zeros(n, m.num_mlp_params, 1, 1)
    # identity-like first layer: W0[i, o] = 1 only for i == 0, o == 1 ; bias b0[0] = 0.25
    c0, c1 = chans[0], chans[1]
    p[0, 0, 0, 0] = 0.25  # b0[0]
    p[0, c1 + 0 * c1 + 1, 0, 0] = 1.0  # W0[0, 1] (c_in-major)
    # pass h1[0], h1[1] through the remaining layers unchanged on channels 0/1 and read them out
    off = c0 * c1 + c1
    for ci, co in zip(chans[1:-1], chans[2:]):
        for k in range(min(2, co)):
            p[0, off + co + k * co + k, 0, 0] = 1.0
        off += ci * co + co
    with torch.no_grad():
        out = m.pixelwise(hr, p)[0]  # (3, S, S)
    lrelu = lambda v: torch.where(v > 0, v, 0.01 * v)  # noqa: E731
    depth = len(chans) - 1
    exp0, exp1 = torch.full((s, s), 0.25), hr[0, 0]
    for _ in range(depth - 1):
        exp0, exp1 = lrelu(exp0), lrelu(exp1)
    torch.testing.assert_close(out[0], torch.tanh(exp0))
    torch.testing.assert_close(out[1], torch.tanh(exp1))  # pixel (a, b) kept its place in the tile
    torch.testing.assert_close(out[2], torch.zeros(s, s))


@pytest.mark.parametrize(
    "name,preset,n,h,w",
    [
        ("asapnet-tiny", "tiny", 2, 32, 64),
        ("asapnet-tiny", "tiny", 1, 64, 32),  # another resolution with the same model
        ("asapnet-tiny", "tiny-facades", 2, 64, 48),
        ("asapnet", "cityscapes", 1, 32, 64),  # full widths, small input (grid 2x4)
        ("asapnet", "facades512", 1, 64, 64),  # tent S1 = 2, reflection padding
    ],
)
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_forward_matches_naive_reference(name, preset, n, h, w, impl):
    torch.manual_seed(0)
    m = _randomise(create_generator(name, preset, pixelwise_impl=impl), seed=1).eval()
    x = _input(m, n, h, w, seed=3)
    with torch.no_grad():
        ours = m(x)
        ref = ref_forward(m, x)
    assert ours.shape == (n, 3, h, w)
    assert 0.1 < float(ours.std()) and float((ours.abs() > 0.999).float().mean()) < 0.5, (
        "degenerate (constant or saturated) output: the comparison would prove nothing")
    assert (ours - ref).abs().max() < 1e-4
    assert ours.abs().max() <= 1.0


def test_instance_edge_feeds_only_the_lowres_stream():
    m = _randomise(create_generator("asapnet-tiny"), seed=2).eval()
    x = _input(m, 1, 32, 64, seed=1)
    p = m.lowres(x)
    torch.testing.assert_close(m(x), m.pixelwise(x[:, :-1], p))
    x2 = x.clone()
    x2[:, -1] = 1 - x2[:, -1]
    assert not torch.allclose(m.lowres(x2), p)  # the edge channel does reach the LR stream


def test_no_per_batch_cache_and_resolution_rules():
    m = create_generator("asapnet-tiny").eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        assert m(_input(m, 2, 32, 64)).shape == (2, 3, 32, 64)
        assert m(_input(m, 1, 64, 128)).shape == (1, 3, 64, 128)
        assert m(_input(m, 3, 16, 16)).shape == (3, 3, 16, 16)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    for bad in [(36, 64), (32, 60), (4, 8)]:
        with pytest.raises(UserError, match="multiple of 8"):
            m(torch.zeros(1, m.input_nc, *bad))
    with pytest.raises(UserError, match="expects input"):
        m(torch.zeros(1, m.input_nc + 1, 32, 64))


def test_invalid_configuration_is_a_user_error():
    with pytest.raises(UserError, match="power of two"):
        create_generator("asapnet", "cityscapes", scale=48)
    with pytest.raises(UserError, match="unknown option"):
        create_generator("asapnet", "cityscapes", tile=16)


# ------------------------------------------------------------------------------------------
# the two formulations of the pixelwise stream
# ------------------------------------------------------------------------------------------
def _max_abs(a, b) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize(
    "preset,h,w",
    [("cityscapes", 256, 512), pytest.param("facades1024", 1024, 1024, marks=pytest.mark.slow)],
)
def test_fast_pixelwise_equals_reference_at_preset_size(preset, h, w):
    """Whole generator at the preset's own size: fast == reference to 1e-5 (fp32), realistic output."""
    torch.manual_seed(0)
    m = _randomise(create_generator("asapnet", preset), seed=4).eval()
    x = _input(m, 1, h, w, seed=5)
    with torch.no_grad():
        params = m.lowres(x)
        hr = x[:, :-1] if m.lr_instance else x
        fast = m.pixelwise_fast_eager(hr, params)
        graph = m.pixelwise_fast_graph(hr, params)
        ref = m.pixelwise_reference(hr, params)
        assert torch.equal(m(x), fast)  # the default is the fast eager path
    assert 0.1 < float(ref.std()) and float((ref.abs() > 0.999).float().mean()) < 0.5
    assert _max_abs(fast, ref) < 1e-5
    assert _max_abs(graph, ref) < 1e-5


@pytest.mark.parametrize("n,h,w", [(2, 32, 64), (1, 16, 16), (3, 16, 40)])
def test_fast_paths_match_reference_on_tiny_and_partial_chunks(n, h, w, monkeypatch):
    """Chunk boundaries (a partial chunk at the end of a row of tiles, one tile per chunk, one chunk per row)
    change nothing."""
    import asapbench.models.asapnet as mod

    m = _randomise(create_generator("asapnet-tiny"), seed=6).eval()
    x = _input(m, n, h, w, seed=7)
    with torch.no_grad():
        ref = m.pixelwise_reference(x[:, :-1], m.lowres(x))
        for chunk in (mod.CHUNK_PIXELS, 64, 128, 10**9):
            monkeypatch.setattr(mod, "CHUNK_PIXELS", chunk)
            assert _max_abs(m(x), ref) < 1e-5
        assert _max_abs(m.pixelwise_fast_graph(x[:, :-1], m.lowres(x)), ref) < 1e-5


def test_fast_pixelwise_is_differentiable_and_matches_reference_gradients():
    torch.manual_seed(0)
    fast = _randomise(create_generator("asapnet-tiny"), seed=8)
    ref = create_generator("asapnet-tiny", pixelwise_impl="reference")
    ref.load_state_dict(fast.state_dict())
    x = _input(fast, 2, 32, 64, seed=9)
    grads = []
    for m in (fast, ref):
        m.zero_grad()
        m(x).square().mean().backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("preset", ["cityscapes", "facades1024"])
def test_formulation_changes_no_state_dict_key_shape_or_mac_count(preset):
    """Official checkpoints load into either formulation; counted MACs are the reference's."""
    import json
    from pathlib import Path

    from asapbench.counting import count_macs
    from asapbench.registry import get_preset

    with torch.device("meta"):
        fast = create_generator("asapnet", preset)
        ref = create_generator("asapnet", preset, pixelwise_impl="reference")
    assert fast.pixelwise_impl == "fast" and ref.pixelwise_impl == "reference"
    sd_f, sd_r = fast.state_dict(), ref.state_dict()
    assert list(sd_f) == list(sd_r) and all(sd_f[k].shape == sd_r[k].shape for k in sd_f)
    manifest = Path(__file__).resolve().parents[1] / "asapbench" / "fixtures" / get_preset("asapnet", preset).manifest
    text = manifest.read_text()
    for k in sd_f:
        assert json.dumps(k) in text  # every key is an official name
    h, w = get_preset("asapnet", preset).resolution
    assert count_macs(fast, h, w)["macs"] == count_macs(ref, h, w)["macs"]


def test_reference_state_dict_loads_into_fast_model_with_same_output():
    ref = _randomise(create_generator("asapnet", "cityscapes", pixelwise_impl="reference"), seed=10).eval()
    fast = create_generator("asapnet", "cityscapes").eval()
    fast.load_state_dict(ref.state_dict(), strict=True)
    x = _input(ref, 1, 32, 64, seed=11)
    with torch.no_grad():
        assert _max_abs(fast(x), ref(x)) < 1e-5
    fast.pixelwise_impl = "reference"  # also switchable as an attribute
    with torch.no_grad():
        assert torch.equal(fast(x), ref(x))


def test_unknown_pixelwise_impl_is_a_user_error():
    with pytest.raises(UserError, match="pixelwise_impl"):
        create_generator("asapnet-tiny", pixelwise_impl="turbo")


def test_fast_onnx_graph_is_one_matmul_per_layer_without_full_size_transposes(tmp_path):
    """The exported fast path: MatMul (+Add) + LeakyRelu per layer (the first layer: a labels and a PE product,
    no concatenated input), one group of tiles at this size, and the only Transposes move the label input or the
    3-channel output (or the small low-res parameters)."""
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    from exporters.onnx_export import torch_to_onnx

    # the direct low-res convs: the Winograd form's own MatMuls and Transposes are tests/test_winograd.py's
    m = _randomise(create_generator("asapnet-tiny", lowres_conv="direct"), seed=12).eval()
    x = _input(m, 1, 32, 64, seed=13)
    proto = torch_to_onnx(m, x)
    ops = [nd.op_type for nd in proto.graph.node]
    depth = len(m.mlp_channels) - 1
    assert ops.count("MatMul") == depth + 1
    assert ops.count("LeakyRelu") == depth - 1 and ops.count("Tanh") == 1
    assert "Concat" not in ops
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in inferred.graph.value_info}
    hidden = m.mlp_channels[1]
    for nd in proto.graph.node:
        if nd.op_type == "Transpose":
            shp = shapes.get(nd.output[0]) or []
            # never a full-resolution tensor of hidden width
            assert not (math.prod(shp) >= 32 * 64 * hidden), (nd.name, shp)


@pytest.mark.parametrize("mode", ["onehot", "labels"])
def test_exported_pixelwise_runs_in_groups_of_tiles_with_the_same_output(monkeypatch, mode):
    """Inference exports run the tiles in groups (GRAPH_CHUNK_PIXELS), one chain of layers per group: the groups
    cover every tile once and in order (onnxruntime's output equals the eager reference formulation's), and
    training mode keeps one product per layer."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    import asapbench.models.asapnet as A
    from asapbench.inputs import label_input, random_label_map
    from exporters.onnx_export import torch_to_onnx

    monkeypatch.setattr(A, "GRAPH_CHUNK_PIXELS", 8 * 64)  # 8 tiles of 8 x 8 pixels per group: 4 groups at 32x64
    m = _randomise(create_generator("asapnet-tiny", lowres_conv="direct"), seed=21).eval()
    assert m.scale == 8
    assert m._graph_groups(32) == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert m._graph_groups(30)[-1] == (24, 30)
    assert m.train()._graph_groups(32) == [(0, 32)]
    m.eval()
    if mode == "labels":
        m.set_input_mode("labels")
        x = label_input(m, *random_label_map(1, 32, 64, m.label_nc, seed=22))
    else:
        x = _input(m, 1, 32, 64, seed=22)
    with torch.no_grad():
        m.pixelwise_impl = "reference"
        ref = m(x).numpy()
        m.pixelwise_impl = "fast"
    proto = torch_to_onnx(m, x)
    ops = [nd.op_type for nd in proto.graph.node]
    assert ops.count("Tanh") == 4, ops.count("Tanh")  # one chain per group
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - ref).max() < 1e-4
