"""Baselines (pix2pixHD global/local, SPADE, pix2pix U-Net): faithful to the official generators.

Three kinds of checks:
- every full preset's state dict equals its official manifest (names, shapes, order, dtypes,
  buffers, parameter count), built on the meta device;
- an independent functional reference, written from docs/generators.md ("pix2pixHD", "SPADE", "pix2pix U-Net-256")
  (plain F.conv2d / F.conv_transpose2d, hand-written instance/batch norm, slicing for the legacy
  nearest resize, sum/count average pooling, spectral norm from the stored u and v), reads the
  weights by manifest key and must reproduce the modules' eval output after every parameter and
  buffer has been randomised (tiny variants, and full presets at small resolutions);
- the small behaviours that decide bit-exactness, pinned one by one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asapbench import UserError, create_generator
from asapbench.registry import configure_for_resolution, get_preset, get_spec
from baselines.pix2pixhd import Pix2PixHDLocal
from baselines.spade import SPADE

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MANIFESTS = SHARED / "reference" / "official_state_dicts"

FULL = [
    ("pix2pixhd", "cityscapes"),
    ("pix2pixhd-local", "cityscapes"),
    *[("spade", p) for p in ("cityscapes", "cityscapes-1024", "cityscapes-normal", "square512", "square1024", "square2048")],
    ("pix2pix", "unet256"),
]
TINY = ["pix2pixhd-tiny", "pix2pixhd-local-tiny", "spade-tiny", "pix2pix-tiny"]
TOL = 1e-5

# Parameter counts of the official networks (manifests; SPADE 93.0M and U-Net 54.4M in the
# supplement's table). Checked without ../shared so a fresh clone still pins the architectures.
KNOWN_PARAMS = {"pix2pixhd": 182_546_755, "pix2pixhd-local": 182_857_059, "spade": 93_048_003, "pix2pix": 54_413_955}


# ------------------------------------------------------------------------------------------
# Functional reference (shares no code with baselines/): weights are read by manifest key
# ------------------------------------------------------------------------------------------
def _conv(x, sd, key, stride=1, pad=0, weight=None):
    w = sd[key + ".weight"] if weight is None else weight
    return F.conv2d(x, w, sd.get(key + ".bias"), stride=stride, padding=pad)


def _convT(x, sd, key, k_pad, out_pad):
    return F.conv_transpose2d(x, sd[key + ".weight"], sd.get(key + ".bias"), stride=2, padding=k_pad, output_padding=out_pad)


def _inorm(x):
    """Per sample and channel over H x W, biased variance, eps 1e-5, no affine, no running stats.

    F.instance_norm rather than the formula written out: the formula is equal only up to float32
    rounding (pinned in test_instance_norm_formula), and 18 random residual blocks amplify that to
    ~3e-5 at the output, above the 1e-5 tolerance.
    """
    return F.instance_norm(x, eps=1e-5)


def _bn(x, sd, key, train=False):
    if train:  # batch statistics, biased variance
        mean = x.mean(dim=(0, 2, 3))
        var = ((x - mean.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))
    else:
        mean, var = sd[key + ".running_mean"], sd[key + ".running_var"]
    y = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
    if key + ".weight" in sd:
        y = y * sd[key + ".weight"].view(1, -1, 1, 1) + sd[key + ".bias"].view(1, -1, 1, 1)
    return y


def _rpad(x, p):
    return F.pad(x, (p, p, p, p), mode="reflect")


def _resblock_hd(x, sd, key):
    h = F.relu(_inorm(_conv(_rpad(x, 1), sd, key + ".conv_block.1")))
    h = _inorm(_conv(_rpad(h, 1), sd, key + ".conv_block.5"))
    return x + h


def ref_pix2pixhd_global(sd, x, n_down, n_blocks, head=True):
    """docs/generators.md, "GlobalGenerator": keys model.<i>; returns the image (head) or the 64-channel trunk features."""
    h = F.relu(_inorm(_conv(_rpad(x, 3), sd, "model.1")))
    i = 4
    for _ in range(n_down):
        h = F.relu(_inorm(_conv(h, sd, f"model.{i}", stride=2, pad=1)))
        i += 3
    for _ in range(n_blocks):
        h = _resblock_hd(h, sd, f"model.{i}")
        i += 1
    for _ in range(n_down):
        h = F.relu(_inorm(_convT(h, sd, f"model.{i}", 1, 1)))
        i += 3
    if head:
        h = torch.tanh(_conv(_rpad(h, 3), sd, f"model.{i + 1}"))
    return h


def ref_avgpool_exclude_pad(x):
    """3x3 mean, stride 2, zero pad 1, divided by the number of real pixels in each window."""
    c = x.shape[1]
    ones_k = torch.ones(c, 1, 3, 3, dtype=x.dtype)
    s = F.conv2d(F.pad(x, (1, 1, 1, 1)), ones_k, stride=2, groups=c)
    cnt = F.conv2d(F.pad(torch.ones_like(x[:, :1]), (1, 1, 1, 1)), ones_k[:1], stride=2)
    return s / cnt


def ref_pix2pixhd_local(sd, x, n_down, n_blocks, n_blocks_local):
    """docs/generators.md, "LocalEnhancer", one enhancer."""
    trunk = ref_pix2pixhd_global(sd, ref_avgpool_exclude_pad(x), n_down, n_blocks, head=False)
    y = F.relu(_inorm(_conv(_rpad(x, 3), sd, "model1_1.1")))
    y = F.relu(_inorm(_conv(y, sd, "model1_1.4", stride=2, pad=1)))
    y = y + trunk
    for b in range(n_blocks_local):
        y = _resblock_hd(y, sd, f"model1_2.{b}")
    y = F.relu(_inorm(_convT(y, sd, f"model1_2.{n_blocks_local}", 1, 1)))
    return torch.tanh(_conv(_rpad(y, 3), sd, f"model1_2.{n_blocks_local + 4}"))


def _sn_weight(sd, key, sigma="stored"):
    w = sd[key + ".weight_orig"]
    mat = w.reshape(w.shape[0], -1)
    if sigma == "stored":
        s = torch.dot(sd[key + ".weight_u"], mat @ sd[key + ".weight_v"])
    else:  # the exact largest singular value: NOT what the official code does
        s = torch.linalg.matrix_norm(mat.double(), ord=2).float()
    return w / s


def _nearest(seg, h, w):
    """Legacy nearest for an integer downscale: the top-left pixel of each block."""
    rh, rw = seg.shape[2] // h, seg.shape[3] // w
    assert rh * h == seg.shape[2] and rw * w == seg.shape[3]
    return seg[:, :, ::rh, ::rw]


def ref_spade_norm(x, seg, sd, key):
    n = _bn(x, sd, key + ".param_free_norm")
    s = _nearest(seg, x.shape[2], x.shape[3])
    a = F.relu(_conv(s, sd, key + ".mlp_shared.0", pad=1))
    return n * (1 + _conv(a, sd, key + ".mlp_gamma", pad=1)) + _conv(a, sd, key + ".mlp_beta", pad=1)


def ref_spade_block(x, seg, sd, key, sigma="stored"):
    if key + ".conv_s.weight_orig" in sd:
        assert key + ".conv_s.bias" not in sd
        xs = F.conv2d(ref_spade_norm(x, seg, sd, key + ".norm_s"), _sn_weight(sd, key + ".conv_s", sigma))
    else:
        xs = x
    dx = F.leaky_relu(ref_spade_norm(x, seg, sd, key + ".norm_0"), 0.2)
    dx = _conv(dx, sd, key + ".conv_0", pad=1, weight=_sn_weight(sd, key + ".conv_0", sigma))
    dx = F.leaky_relu(ref_spade_norm(dx, seg, sd, key + ".norm_1"), 0.2)
    dx = _conv(dx, sd, key + ".conv_1", pad=1, weight=_sn_weight(sd, key + ".conv_1", sigma))
    return xs + dx


def _up2(x):  # pixel duplication
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def ref_spade(sd, seg, mode, sigma="stored"):
    """docs/generators.md, "SPADE" (latent size and layers), with the latent size taken from the input."""
    n = {"normal": 5, "more": 6, "most": 7}[mode]
    h, w = seg.shape[2] >> n, seg.shape[3] >> n
    x = _conv(_nearest(seg, h, w), sd, "fc", pad=1)
    x = ref_spade_block(x, seg, sd, "head_0", sigma)
    x = ref_spade_block(_up2(x), seg, sd, "G_middle_0", sigma)
    if mode != "normal":
        x = _up2(x)
    x = ref_spade_block(x, seg, sd, "G_middle_1", sigma)
    for i in range(5 if mode == "most" else 4):
        x = ref_spade_block(_up2(x), seg, sd, f"up_{i}", sigma)
    return torch.tanh(_conv(F.leaky_relu(x, 0.2), sd, "conv_img", pad=1))


def ref_unet(sd, x, num_downs, train=False):
    """docs/generators.md, "pix2pix U-Net-256": level L >= 1 has prefix model.model.1 + .model.3 * (L-1) + .model."""

    def level(h, lvl, p):
        if lvl == num_downs - 1:  # innermost: no BN after the down conv
            d = _conv(F.leaky_relu(h, 0.2), sd, p + ".1", stride=2, pad=1)
            u = _bn(_convT(F.relu(d), sd, p + ".3", 1, 0), sd, p + ".4", train)
            return torch.cat([h, u], 1)
        d = _bn(_conv(F.leaky_relu(h, 0.2), sd, p + ".1", stride=2, pad=1), sd, p + ".2", train)
        inner = level(d, lvl + 1, p + ".3.model")
        u = _bn(_convT(F.relu(inner), sd, p + ".5", 1, 0), sd, p + ".6", train)
        if lvl >= 4:  # the num_downs - 5 blocks above the innermost (levels 4..6 of unet_256) carry dropout
            u = F.dropout(u, 0.5, training=train)
        return torch.cat([h, u], 1)

    d = _conv(x, sd, "model.model.0", stride=2, pad=1)
    inner = level(d, 1, "model.model.1.model")
    return torch.tanh(_convT(F.relu(inner), sd, "model.model.3", 1, 0))


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def randomise(model: nn.Module, seed: int) -> None:
    """Fill every parameter and buffer with random values (incl. spectral-norm u/v and BN statistics).

    u is drawn near W v (plus noise) so σ = u·(W v) stays away from 0, yet differs from the exact
    largest singular value. Asserts that no tensor of the state dict was left out.
    """
    g = torch.Generator().manual_seed(seed)
    done: set[int] = set()

    def fill(t, mean=0.0, std=1.0):
        t.normal_(mean, std, generator=g)
        done.add(id(t))

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                w = m.weight_orig if hasattr(m, "weight_orig") else m.weight
                k = w.shape[2] * w.shape[3]
                fan = w.shape[1] * k if isinstance(m, nn.Conv2d) else w.shape[0] * k / 4
                fill(w, std=1.4 / fan**0.5)
                if m.bias is not None:
                    fill(m.bias, std=0.1)
                if hasattr(m, "weight_u"):
                    mat = w.reshape(w.shape[0], -1)
                    fill(m.weight_v)
                    m.weight_v.copy_(F.normalize(m.weight_v, dim=0))
                    wv = mat @ m.weight_v
                    fill(m.weight_u, std=0.5 * float(wv.norm()) / wv.numel() ** 0.5)
                    m.weight_u.copy_(F.normalize(wv + m.weight_u, dim=0))
            elif isinstance(m, nn.BatchNorm2d):
                fill(m.running_mean, std=0.2)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                done.add(id(m.running_var))
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
                done.add(id(m.num_batches_tracked))
                if m.weight is not None:
                    fill(m.weight, 1.0, 0.2)
                    fill(m.bias, std=0.1)
    missed = [k for k, t in model.named_parameters() if id(t) not in done]
    missed += [k for k, t in model.named_buffers() if id(t) not in done]
    assert not missed, f"randomise() left {missed} untouched"


def final_conv(model: nn.Module) -> nn.Module:
    """The conv that feeds the output tanh."""
    if hasattr(model, "conv_img"):
        return model.conv_img
    if hasattr(model, "model1_1"):
        return model.model1_2[-2]
    if hasattr(model, "num_downs"):
        return model.model.model[3]
    return model.model[-2]


def calibrate(model: nn.Module, x: torch.Tensor, target: float = 0.6) -> None:
    """Rescale the last conv so that the pre-tanh std is ``target`` (non-saturated, non-trivial output)."""
    conv = final_conv(model)
    seen = {}
    handle = conv.register_forward_hook(lambda mod, inp, out: seen.__setitem__("std", float(out.std())))
    with torch.no_grad():
        model(x)
    handle.remove()
    with torch.no_grad():
        conv.weight.mul_(target / seen["std"])
        conv.bias.mul_(target / seen["std"])


def reference(name: str, model: nn.Module, sd: dict, x: torch.Tensor, **kw) -> torch.Tensor:
    """Dispatch to the functional reference with the model's configuration."""
    cfg = model.config
    fam = get_spec(name).family or name
    if fam == "pix2pixhd":
        return ref_pix2pixhd_global(sd, x, cfg["n_downsampling"], cfg["n_blocks"])
    if fam == "pix2pixhd-local":
        return ref_pix2pixhd_local(sd, x, cfg["n_downsample_global"], cfg["n_blocks_global"], cfg["n_blocks_local"])
    if fam == "spade":
        return ref_spade(sd, x, cfg["num_upsampling_layers"], **kw)
    if fam == "pix2pix":
        return ref_unet(sd, x, cfg["num_downs"], **kw)
    raise AssertionError(name)


def prepared(name: str, preset: str | None = None, seed: int = 0, res=None, batch: int = 2, **overrides):
    """A randomised, calibrated eval-mode model and a random input at ``res`` (default: the preset's)."""
    with torch.device("meta"):  # no initialisation cost: randomise() fills every tensor
        model = create_generator(name, preset, **overrides)
    model = model.to_empty(device="cpu").eval()
    randomise(model, seed)
    h, w = res or get_preset(name, preset).resolution
    x = torch.rand(batch, model.input_nc, h, w, generator=torch.Generator().manual_seed(seed + 1))
    if model.input_kind == "image":
        x = x * 2 - 1
    calibrate(model, x)
    return model, x


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def load_manifest(fname: str) -> dict:
    p = MANIFESTS / fname
    if not p.exists():
        pytest.skip(f"{p} is absent (../shared is not next to this checkout)")
    return json.loads(p.read_text())


# ------------------------------------------------------------------------------------------
# State dicts = official manifests
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,preset", FULL)
def test_state_dict_matches_manifest(name, preset):
    p = get_preset(name, preset)
    man = load_manifest(p.manifest)
    with torch.device("meta"):
        model = create_generator(name, preset)
    sd = model.state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(k, v) for k, v in man["tensors"].items()]
    assert {k: str(v.dtype).removeprefix("torch.") for k, v in sd.items()} == man["dtypes"]
    assert sorted(k for k, _ in model.named_buffers()) == sorted(man["buffer_keys"])
    assert sum(t.numel() for t in model.parameters()) == man["params"]


@pytest.mark.parametrize("name", list(KNOWN_PARAMS))
def test_params_of_default_presets(name):
    with torch.device("meta"):
        model = create_generator(name)
    assert sum(t.numel() for t in model.parameters()) == KNOWN_PARAMS[name]


def test_spade_folding_works_on_meta_device():
    """count_macs builds a meta twin and calls prepare_for_inference: folding must not need data."""
    with torch.device("meta"):
        model = create_generator("spade", "square2048")
    model.prepare_for_inference()
    assert model.spectral_norm_folded()
    assert sum(t.numel() for t in model.parameters()) == KNOWN_PARAMS["spade"]


def test_presets_and_size_rules():
    # (resolution, size multiple, minimum size); pix2pixHD needs 2 pixels at the bottleneck (reflect pad 1)
    sizes = {
        ("pix2pixhd", "cityscapes"): ((512, 1024), 16, 32),
        ("pix2pixhd-local", "cityscapes"): ((1024, 2048), 32, 64),
        ("spade", "cityscapes"): ((256, 512), 64, 64),
        ("spade", "cityscapes-1024"): ((512, 1024), 64, 64),
        ("spade", "cityscapes-normal"): ((256, 512), 32, 32),
        ("spade", "square512"): ((512, 512), 32, 32),
        ("spade", "square1024"): ((1024, 1024), 32, 32),
        ("spade", "square2048"): ((2048, 2048), 32, 32),
        ("pix2pix", "unet256"): ((256, 256), 256, 256),
    }
    for (name, preset), (res, mult, low) in sizes.items():
        assert get_preset(name, preset).resolution == res
        with torch.device("meta"):
            m = create_generator(name, preset)
        assert m.size_multiple() == (mult, mult) and m.min_size() == (low, low)
        m.check_input_size(*res)
        with pytest.raises(UserError):
            m.check_input_size(low - mult if low > mult else mult // 2, res[1])
    with torch.device("meta"):
        p2p = create_generator("pix2pix")
        hd = create_generator("pix2pixhd")
    assert (p2p.input_kind, p2p.input_nc, p2p.label_nc, p2p.instance_edge) == ("image", 3, None, False)
    assert (hd.input_kind, hd.input_nc, hd.label_nc, hd.instance_edge) == ("labels", 36, 35, True)
    for tiny in TINY:
        spec = get_spec(tiny)
        assert spec.tiny and spec.family == tiny.removesuffix("-tiny")
        assert get_spec(spec.family).input_kind == spec.input_kind


def test_spade_configure_rule():
    assert configure_for_resolution("spade", 256, 512) == ("cityscapes", {})
    assert configure_for_resolution("spade", 512, 1024) == ("cityscapes-1024", {})
    assert configure_for_resolution("spade", 1024, 1024) == ("square1024", {})
    assert configure_for_resolution("spade", 2048, 2048) == ("square2048", {})
    assert configure_for_resolution("spade", 768, 1536) == ("cityscapes", {})  # 2:1 -> "more"
    assert configure_for_resolution("spade", 640, 640)[0].startswith("square")
    preset, _ = configure_for_resolution("spade", 256, 768)
    assert get_preset("spade", preset).kwargs["num_upsampling_layers"] == "normal"
    assert configure_for_resolution("pix2pixhd", 512, 1024) == ("cityscapes", {})


# ------------------------------------------------------------------------------------------
# Numerical equivalence with the functional reference
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_tiny_matches_reference(name):
    model, x = prepared(name, seed=3)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y = model(x)
        y2 = model(x)
    ref = reference(name, model, sd, x)
    assert y.shape == (x.shape[0], 3, *x.shape[2:])
    assert 0.1 < float(y.std()) < 0.8, "randomised output should be non-trivial and unsaturated"
    assert (y - ref).abs().max() < TOL
    assert torch.equal(y, y2)  # eval is deterministic
    for k, v in model.state_dict().items():  # eval changes no buffer (BN stats, spectral-norm u/v)
        assert torch.equal(v, sd[k]), k


@pytest.mark.parametrize("mode,res", [("more", (64, 128)), ("most", (128, 128))])
def test_spade_tiny_upsampling_modes_match_reference(mode, res):
    model, x = prepared("spade-tiny", res=res, seed=5, num_upsampling_layers=mode)
    with torch.no_grad():
        y = model(x)
        # compared in float64: the fp32 module and the fp32 reference reach 1.3e-5 apart through different
        # kernels on some CPUs (an AVX2 EPYC; below TOL on AVX-512 ones); in float64 they agree to ~1e-14
        m64 = model.double()
        sd64 = {k: v.double() if v.is_floating_point() else v for k, v in m64.state_dict().items()}
        err64 = (m64(x.double()) - reference("spade-tiny", m64, sd64, x.double())).abs().max()
    assert y.shape[2:] == x.shape[2:]
    assert err64 < 1e-10
    if mode == "most":
        assert "up_4.conv_s.weight_orig" in model.state_dict()


@pytest.mark.parametrize(
    "name,preset,res",
    [
        ("pix2pixhd", "cityscapes", (32, 64)),  # the smallest sizes the architectures take
        ("pix2pixhd-local", "cityscapes", (64, 128)),
        ("spade", "cityscapes", (64, 64)),
        ("pix2pix", "unet256", (256, 256)),
    ],
)
def test_full_preset_matches_reference(name, preset, res):
    """The full official architectures (every key of the manifest used) at a small input."""
    model, x = prepared(name, preset, seed=7, res=res, batch=1)
    with torch.no_grad():
        y = model(x)
        ref = reference(name, model, model.state_dict(), x)
    assert float(y.std()) > 0.1
    assert (y - ref).abs().max() < TOL
    if name == "spade":  # folding keeps the output
        with torch.no_grad():
            folded = model.prepare_for_inference()(x)
        assert (folded - y).abs().max() < TOL


# ------------------------------------------------------------------------------------------
# The small behaviours, one by one
# ------------------------------------------------------------------------------------------
def test_spade_seg_resize_is_legacy_nearest_top_left():
    torch.manual_seed(0)
    norm = SPADE(5, 4, hidden=6).eval()
    randomise(norm, 1)
    x = torch.randn(2, 5, 4, 8)
    seg = torch.rand(2, 4, 32, 64)
    sd = {"norm." + k: v for k, v in norm.state_dict().items()}
    with torch.no_grad():
        y = norm(x, seg)
        ref = ref_spade_norm(x, seg, sd, "norm")
    assert (y - ref).abs().max() < TOL
    # changing every pixel but the top-left of each 8x8 block leaves the output unchanged ...
    seg2 = torch.rand_like(seg)
    seg2[:, :, ::8, ::8] = seg[:, :, ::8, ::8]
    with torch.no_grad():
        assert torch.equal(norm(x, seg2), y)
        # ... whereas 'nearest-exact' (the block centre) would give another result
        exact = F.interpolate(seg, size=(4, 8), mode="nearest-exact")
        a = F.relu(norm.mlp_shared[0](exact))
        other = norm.param_free_norm(x) * (1 + norm.mlp_gamma(a)) + norm.mlp_beta(a)
    assert (other - y).abs().max() > 1e-2


def test_instance_norm_formula():
    x = torch.randn(2, 5, 6, 10) * 3 + 1
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
    assert (_inorm(x) - (x - mean) / torch.sqrt(var + 1e-5)).abs().max() < 1e-5
    model = create_generator("pix2pixhd-tiny")
    norm = type(model.model[2])(x.shape[1])  # the module's norm class and settings, at 5 channels
    assert torch.equal(norm(x), _inorm(x))


def test_local_enhancer_avgpool_excludes_padding():
    x = torch.ones(1, 2, 8, 8)
    pooled = Pix2PixHDLocal.downsample(x)
    assert torch.equal(pooled, torch.ones(1, 2, 4, 4))  # count_include_pad=True would give 4/9 at corners
    x = torch.rand(2, 3, 16, 32)
    assert (Pix2PixHDLocal.downsample(x) - ref_avgpool_exclude_pad(x)).abs().max() < 1e-6


def test_transposed_convs_keep_exact_doubling():
    model = create_generator("pix2pixhd-tiny").eval()
    convs = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert convs and all(m.output_padding == (1, 1) and m.weight.shape[0] == 2 * m.weight.shape[1] for m in convs)
    with torch.no_grad():
        for h, w in [(32, 64), (8, 12), (12, 20)]:
            assert model(torch.rand(1, model.input_nc, h, w)).shape == (1, 3, h, w)


def test_pix2pixhd_norms_have_no_state_and_convs_keep_bias():
    model = create_generator("pix2pixhd-local-tiny")
    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not m.affine and not m.track_running_stats for m in norms)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(m.bias is not None for m in convs)
    with torch.no_grad():  # train and eval mode agree (no running stats, no dropout)
        x = torch.rand(1, model.input_nc, 32, 64)
        assert torch.equal(model.train()(x), model.eval()(x))


def test_spade_shortcut_conv_has_no_bias_and_fc_no_spectral_norm():
    sd = create_generator("spade-tiny").state_dict()
    for blk in ("up_0", "up_1", "up_2", "up_3"):
        assert f"{blk}.conv_s.weight_orig" in sd and f"{blk}.conv_s.bias" not in sd
    for blk in ("head_0", "G_middle_0", "G_middle_1"):
        assert not any(k.startswith(f"{blk}.conv_s") for k in sd)
    assert "fc.weight" in sd and "conv_img.weight" in sd and "fc.weight_orig" not in sd


def test_spade_sigma_uses_stored_u_v_not_svd():
    model, x = prepared("spade-tiny", seed=11)
    sd = model.state_dict()
    with torch.no_grad():
        y = model(x)
        stored = ref_spade(sd, x, "normal", sigma="stored")
        svd = ref_spade(sd, x, "normal", sigma="svd")
    assert (y - stored).abs().max() < TOL
    assert (y - svd).abs().max() > 1e-3
    # train mode runs one power iteration and updates u, v in place; eval never does
    u0 = model.head_0.conv_0.weight_u.clone()
    with torch.no_grad():
        model.train()(x)
    assert not torch.equal(model.head_0.conv_0.weight_u, u0)


def test_spade_prepare_for_inference_folds_and_keeps_output():
    model, x = prepared("spade-tiny", seed=13)
    with torch.no_grad():
        y = model(x)
    before = set(model.state_dict())
    model.train().prepare_for_inference()
    assert not model.training and model.spectral_norm_folded()
    after = model.state_dict()
    assert "head_0.conv_0.weight" in after and "head_0.conv_0.weight_orig" not in after
    assert "up_0.conv_s.weight" in after and "up_0.conv_s.bias" not in after
    assert not any(k.endswith(("weight_u", "weight_v", "weight_orig")) for k in after)
    assert {k.replace(".weight_orig", ".weight") for k in before if not k.endswith(("_u", "_v"))} == set(after)
    with torch.no_grad():
        assert (model(x) - y).abs().max() < TOL
    model.prepare_for_inference()  # idempotent
    with torch.no_grad():
        assert (model(x) - y).abs().max() < TOL


def test_spade_output_size_follows_input():
    model, _ = prepared("spade-tiny", seed=2)
    with torch.no_grad():
        for h, w in [(32, 32), (64, 32), (96, 160)]:
            x = torch.rand(1, model.input_nc, h, w)
            y = model(x)
            assert y.shape == (1, 3, h, w)
            assert (y - reference("spade-tiny", model, model.state_dict(), x)).abs().max() < TOL


def test_unet_dropout_off_in_eval_and_train_mode_matches_reference():
    model, x = prepared("pix2pix-tiny", seed=17)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == model.num_downs - 5 >= 1
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        a, b = model(x), model(x)
        assert torch.equal(a, b)
        assert (a - ref_unet(sd, x, model.num_downs)).abs().max() < TOL
        # official default inference (train mode): batch statistics + dropout, deepest block first
        model.train()
        torch.manual_seed(123)
        t1 = model(x)
        torch.manual_seed(123)
        t_ref = ref_unet(sd, x, model.num_downs, train=True)
        torch.manual_seed(124)
        t2 = model(x)
    assert (t1 - t_ref).abs().max() < TOL
    assert (t1 - t2).abs().max() > 1e-4  # dropout is active in train mode
    assert (t1 - a).abs().max() > 1e-4


def test_unet_bias_layout():
    sd = create_generator("pix2pix-tiny").state_dict()
    assert "model.model.0.bias" not in sd and "model.model.3.bias" in sd
    convs = [k for k in sd if k.endswith(".weight") and sd[k].dim() == 4]
    assert [k for k in convs if k.replace(".weight", ".bias") in sd] == ["model.model.3.weight"]


@pytest.mark.parametrize("name", TINY)
def test_bad_input_raises_user_error(name):
    model = create_generator(name).eval()
    h, w = get_preset(name).resolution
    mh, mw = model.size_multiple()
    with torch.no_grad():
        with pytest.raises(UserError, match="multiple"):
            model(torch.rand(1, model.input_nc, h + mh // 2, w))
        with pytest.raises(UserError, match="multiple"):
            model(torch.rand(1, model.input_nc, h, w - 1))
        with pytest.raises(UserError, match=str(model.input_nc)):
            model(torch.rand(1, model.input_nc + 1, h, w))
        with pytest.raises(UserError):
            model(torch.rand(model.input_nc, h, w))
    with pytest.raises(UserError):
        create_generator(name, "no-such-preset")


def test_invalid_configuration_is_user_error():
    with pytest.raises(UserError, match="num_upsampling_layers"):
        create_generator("spade-tiny", num_upsampling_layers="many")
    with pytest.raises(UserError, match="num_downs"):
        create_generator("pix2pix-tiny", num_downs=4)
