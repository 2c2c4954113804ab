"""ASAP-Net generator (Shaham et al., CVPR 2021), written from the paper, its supplement and the
official forward computation (docs/generators.md pins the details that decide it).

Two streams:
- a low-resolution convolutional stream that turns the (tent-downsampled) label map into a grid of
  per-tile MLP parameters ``P [N, C_total, H/S, W/S]``;
- a full-resolution pixelwise stream: every pixel runs the 5-layer MLP of its S x S tile on
  ``[labels, cosine positional encoding]``, computed as one batched matrix product per layer
  over all tiles (per-pixel weights are never materialised).

Three interchangeable formulations of the pixelwise stream (``pixelwise_impl``), equal to ~1e-7:
- ``"reference"``: the literal one (5-D matmul, broadcast bias add, out-of-place activations);
- ``"fast"`` (default): tile-major ``[tiles, S*S, C]`` batches; every bias folded into the matrix
  product as an extra input row (the official parameter layout stores each layer as
  ``[bias; W]``, a ``(c_in + 1) x c_out`` matrix, so the weights are views of the parameters) with a
  ones column in the activations; activations in place; in eager PyTorch the tiles run in chunks of
  about :data:`CHUNK_PIXELS` pixels through all layers, so a chunk's activations stay in cache.
  While traced, exported or trained (ONNX, torch.compile, torch.export, autograd) the same algebra is written as
  batched products per layer (ONNX: ``MatMul`` + ``Add`` + ``LeakyRelu``; the first layer as ``x @ W_labels +
  PE @ W_PE + b``, no concatenated input), with no full-size transposes beyond the input (label channels) and
  the 3-channel output; in eval mode the tiles run in groups of about :data:`GRAPH_CHUNK_PIXELS` pixels through
  all layers (one unrolled chain per group, concatenated at the end), in training as one product per layer.
- ``"fused"``: in eager CPU float32 inference, one compiled kernel (:mod:`asapbench.models.fused_kernel`: every
  tile's MLP on blocks of pixels through all layers in cache, bias and activation applied in the registers; built
  on first use with the machine's C++ compiler); anything else (export, autograd, bf16, CUDA) runs "fast", so
  its exports are the fast formulation's.

Two interchangeable forms of the low-res stream's seven 1024-wide 3x3 stride-1 convolutions (``lowres_conv``):
``"winograd"`` (default), the Winograd F(2x2, 3x3) inference form (:func:`winograd_conv3x3`: 16 batched
``[C_out x C_in] @ [C_in x tiles]`` products on tiles transformed with fixed small matrices, 2.25x fewer
multiplications), used in inference (eager without autograd on the CPU, and in the ONNX export: plain
``Slice``/``Pad``/``MatMul``/``Reshape``/``Transpose`` ops); ``"winograd4"``, F(4x4, 3x3) (4x fewer, larger
rounding error); ``"direct"``, the plain ``Conv2d``. Training, autograd, meta tensors (MAC counting: the direct
MACs are counted), reduced precision (bf16/fp16) and non-CPU tensors always take the direct conv.

State-dict keys and shapes equal the official ``ASAPNetsGenerator`` (``lowres_stream.model.<i>``),
so official checkpoints load by name.
"""

from __future__ import annotations

import copy
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from asapbench.errors import UserError
from asapbench.models.base import Generator
from asapbench.stages import StagePlan

#: formulations of the pixelwise stream (see the module docstring)
PIXELWISE_IMPLS = ("fast", "fused", "reference")
#: forms of the low-res stream's 1024-wide 3x3 stride-1 convs: Winograd F(2x2,3x3), F(4x4,3x3), plain conv
LOWRES_CONVS = ("winograd", "winograd4", "direct")
#: output tile size m of F(m x m, 3x3) per form (0: the direct conv)
WINOGRAD_TILE = {"winograd": 2, "winograd4": 4, "direct": 0}
#: eager "fast" path: pixels per chunk of tiles (64-channel fp32 activations of 4096 pixels = 1 MiB)
CHUNK_PIXELS = 4096
#: traced "fast" path in inference (ONNX export): pixels per group of tiles run through all layers in turn
GRAPH_CHUNK_PIXELS = 65536


def _is_pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def _graph_mode(x: torch.Tensor) -> bool:
    """True while traced, compiled or exported (where Python loops and ``out=`` would be unrolled)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return True
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(x, FakeTensor) or torch.onnx.is_in_onnx_export()


# --------------------------------------------------------------------------------------------
# Fixed (parameter-free) pieces
# --------------------------------------------------------------------------------------------
def tent_kernel(s: int) -> torch.Tensor:
    """1-D tent ("bilinear") kernel of length 2s: 1, 3, ..., 2s-1, mirrored, divided by 2 s^2."""
    half = torch.arange(1, 2 * s, 2, dtype=torch.float32, device="cpu")
    return torch.cat([half, half.flip(0)]) / (2 * s * s)


def tent_downsample(x: torch.Tensor, s: int, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """Downsample ``x [N, C, H, W]`` by ``s``: reflect-pad s//2, depthwise 1x2s (stride s) then 2sx1.

    Output pixel j is centred on input block [s j, s j + s - 1]. Returns ``[N, C, H/s, W/s]``.
    """
    n, c, height, width = x.shape
    k = (tent_kernel(s) if kernel is None else kernel).to(device=x.device, dtype=x.dtype)
    p = s // 2
    x = F.pad(x, (p, p, p, p), mode="reflect")
    if _graph_mode(x) or x.is_meta:  # the exported form: two depthwise convs (unchanged since export landed)
        x = F.conv2d(x, k.view(1, 1, 1, 2 * s).expand(c, 1, 1, 2 * s), stride=(1, s), groups=c)
        return F.conv2d(x, k.view(1, 1, 2 * s, 1).expand(c, 1, 2 * s, 1), stride=(s, 1), groups=c)
    # eager: the channels folded into the batch and one 2s x 2s conv with the outer-product kernel (the same
    # sums as the two depthwise convs, in one conv that is faster on the CPU)
    x = x.reshape(n * c, 1, height + 2 * p, width + 2 * p)
    x = F.conv2d(x, torch.outer(k, k).view(1, 1, 2 * s, 2 * s), stride=s)
    return x.reshape(n, c, height // s, width // s)


def positional_table(scale: int) -> torch.Tensor:
    """Cosine positional encoding of the pixels of one S x S tile: float32 ``[S*S, 4*log2(S)]``.

    Row ``a*S + b`` is the pixel at tile row a, column b. Per level, periods f = S, S/2, ..., 2
    (coarsest first), channels (cos θx, sin θx, cos θy, sin θy) with θ = 2π (coord mod f) / f.
    Every period divides S, so the table is the same for every tile. Computed in float32 on the
    CPU, rounding after each step, as the official code does (bit-exact).
    """
    levels = int(math.log2(scale))
    if torch.empty(()).is_meta:  # built under torch.device("meta") (planning, counting): shape only, nothing allocated
        return torch.empty(scale * scale, 4 * levels, dtype=torch.float32)
    coord = torch.arange(scale, dtype=torch.float32, device="cpu")
    two_pi = torch.tensor(2 * math.pi, dtype=torch.float32, device="cpu")
    chans = []
    for lvl in range(levels):
        f = torch.tensor(float(scale // (2**lvl)), dtype=torch.float32, device="cpu")
        theta = torch.remainder(coord, f) * two_pi / f  # [S]
        cx = torch.cos(theta).view(1, scale).expand(scale, scale)  # varies along columns (x)
        sx = torch.sin(theta).view(1, scale).expand(scale, scale)
        cy = torch.cos(theta).view(scale, 1).expand(scale, scale)  # varies along rows (y)
        sy = torch.sin(theta).view(scale, 1).expand(scale, scale)
        chans += [cx, sx, cy, sy]
    if not chans:
        return torch.zeros(scale * scale, 0, device="cpu")
    return torch.stack(chans, dim=-1).reshape(scale * scale, 4 * levels).contiguous()


def mlp_param_count(channels: list[int]) -> int:
    """Parameters of one pixelwise MLP with layer widths ``channels``: Σ (c_in c_out + c_out)."""
    return sum(ci * co + co for ci, co in itertools.pairwise(channels))


# --------------------------------------------------------------------------------------------
# Low-resolution stream
# --------------------------------------------------------------------------------------------
def winograd_matrices(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B^T, G, A^T) of Winograd F(m x m, 3x3) (Lavin & Gray 2015), float64 on the CPU, tile a = m + 2.

    m = 2: interpolation points 0, 1, -1 (and infinity); m = 4: 0, 1, -1, 2, -2 (and infinity).
    A 3x3 correlation of an a x a tile d is ``A^T [(G g G^T) * (B^T d B)] A`` (elementwise product in the middle).
    """
    if m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
              [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
             [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"Winograd F(m x m, 3x3) is implemented for m = 2 and 4, got {m}")
    return tuple(torch.tensor(v, dtype=torch.float64, device="cpu") for v in (bt, g, at))


def winograd_weight(weight: torch.Tensor, m: int) -> torch.Tensor:
    """The transformed 3x3 kernels ``[a*a, C_out, C_in]`` of ``weight [C_out, C_in, 3, 3]`` for
    :func:`winograd_conv3x3`: entry ``q*a + r`` is ``(G g G^T)[r, q]`` (row r, column q of the tile).

    Eager: computed in float64 and rounded once to the weight's dtype. While traced or exported the
    same product on the weight itself (a constant subgraph of the initializer, which the ONNX exporter's
    optimizer folds: the file stores the transformed kernels)."""
    _, g, _ = winograd_matrices(m)
    a = m + 2
    cout, cin = weight.shape[:2]
    if _graph_mode(weight):
        g = g.to(device=weight.device, dtype=weight.dtype)
        w = weight
    else:
        g = g.to(device=weight.device)
        w = weight.detach().double()
    # one product: kron(G, G)[q*a + r, x*3 + y] = G[q, x] G[r, y] times the kernels as columns (x*3 + y)
    k = torch.kron(g, g)
    u = torch.matmul(k, w.transpose(2, 3).reshape(cout * cin, 9).t())  # [a*a, C_out C_in]
    return u.reshape(a * a, cout, cin).to(weight.dtype).contiguous()


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, m: int, padding: int = 0) -> torch.Tensor:
    """``F.conv2d(x, w, padding=padding)`` of a 3x3 stride-1 kernel ``w`` without bias, computed with
    Winograd F(m x m, 3x3) from ``u = winograd_weight(w, m)``.

    ``x [N, C_in, H, W]`` is zero-padded by ``padding`` and, at the bottom/right, up to whole m x m output
    tiles (any H, W); the overlapping a x a input tiles (a = m + 2, stride m) are cut with strided slices
    and transformed by ``B^T . B`` as two small matrix products; then one batched product
    ``[a*a, C_out, C_in] @ [a*a, C_in, tiles]`` (the multiplications: a*a/(9 m*m) of the direct conv's,
    0.44 for m = 2), the output transform ``A^T . A`` and the crop to ``[N, C_out, H + 2p - 2, W + 2p - 2]``.
    Channels-first throughout: with N = 1 no transpose of the input or of the products is copied.
    """
    bt, _, at = winograd_matrices(m)
    bt, at = bt.to(device=x.device, dtype=x.dtype), at.to(device=x.device, dtype=x.dtype)
    a = m + 2
    n, c = x.shape[:2]
    ho, wo = x.shape[2] + 2 * padding - 2, x.shape[3] + 2 * padding - 2
    th, tw = (ho + m - 1) // m, (wo + m - 1) // m
    x = F.pad(x, (padding, padding + m * tw - wo, padding, padding + m * th - ho))
    xc = x.transpose(0, 1)  # [C, N, m th + 2, m tw + 2]
    rows = torch.stack([xc[:, :, r : r + m * th : m] for r in range(a)])  # [a(r), C, N, th, W']
    v = torch.matmul(bt, rows.reshape(a, -1)).reshape(rows.shape)  # B^T along the rows
    cols = torch.stack([v[..., q : q + m * tw : m] for q in range(a)])  # [a(q), a(r), C, N, th, tw]
    v = torch.matmul(bt, cols.reshape(a, -1)).reshape(a * a, c, n * th * tw)  # B along the columns
    y = torch.bmm(u, v)  # [a*a, C_out, tiles]: the multiplications
    co = u.shape[1]
    y = torch.matmul(at, y.reshape(a, a, -1))  # A^T along the rows: [a(q), m(i), C_out * tiles]
    y = torch.matmul(at, y.reshape(a, -1)).reshape(m, m, co, n, th, tw)  # A along the columns: [j, i, ...]
    y = y.permute(3, 2, 4, 1, 5, 0).reshape(n, co, m * th, m * tw)
    return y[:, :, :ho, :wo]


class _Block(nn.Module):
    """C{w}S1 block of the LR stream: (pad) conv3x3 + IN(affine) + ReLU, no residual.

    ``winograd_tile`` (m, set by the generator's ``lowres_conv``; 0: direct) selects the Winograd inference
    form of the conv (:meth:`conv_forward`); its transformed weights are cached on the module, not in
    the state dict, and recomputed whenever the weight changes (its version counter, storage, dtype or
    device)."""

    def __init__(self, width: int, reflection_pad: bool):
        super().__init__()
        layers: list[nn.Module] = []
        if reflection_pad:
            layers.append(nn.ReflectionPad2d(1))
        layers += [_conv_in(width, width, 1, reflection_pad), nn.ReLU()]
        self.conv_block = nn.Sequential(*layers)
        self.winograd_tile = 0
        self._winograd_cache: dict[int, tuple] = {}  # m -> (key, transformed weight)

    @property
    def conv(self) -> nn.Conv2d:
        return self.conv_block[-2][0]

    def uses_winograd(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` takes the Winograd form for ``x``: inference (no autograd graph being
        built) on CPU float32/float64, eager or traced/exported; never on meta tensors (MAC counting)."""
        w = self.conv.weight
        if not self.winograd_tile or x.is_meta or w.is_meta or x.device.type != "cpu":
            return False
        if x.dtype not in (torch.float32, torch.float64) or w.dtype != x.dtype:
            return False
        return not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)) or _graph_mode(x)

    def winograd_weight(self) -> torch.Tensor:
        """The cached transformed weight (:func:`winograd_weight`), recomputed when the weight changed."""
        w, m = self.conv.weight, self.winograd_tile
        try:
            version = w._version
        except RuntimeError:  # an inference tensor (made under torch.inference_mode) has no version counter
            version = None
        key = (m, w.data_ptr(), version, w.dtype, w.device, tuple(w.shape))
        hit = self._winograd_cache.get(m)
        if version is not None and hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            u = winograd_weight(w, m)
        self._winograd_cache = {m: (key, u)}  # one form at a time (the F(4x4) weights take 4x the conv's memory)
        return u

    def conv_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The 3x3 conv of the block (after the reflection pad, if any)."""
        if not self.uses_winograd(x):
            return self.conv(x)
        conv = self.conv
        u = winograd_weight(conv.weight, self.winograd_tile) if _graph_mode(x) else self.winograd_weight()
        return winograd_conv3x3(x, u, self.winograd_tile, conv.padding[0])

    def forward(self, x):
        if not self.winograd_tile:
            return self.conv_block(x)
        *pad, conv_in, relu = self.conv_block
        for layer in pad:
            x = layer(x)
        return relu(conv_in[1](self.conv_forward(x)))


def _conv_in(cin: int, cout: int, stride: int, reflection_pad: bool) -> nn.Sequential:
    """3x3 conv without bias (a norm follows) + InstanceNorm2d(affine): keys ``0.weight``, ``1.weight/bias``."""
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=0 if reflection_pad else 1, bias=False)
    return nn.Sequential(conv, nn.InstanceNorm2d(cout, affine=True, track_running_stats=False))


class LowResStream(nn.Module):
    """C{w}S1, (log2 S2 - 1) x C{w}S2, C{max}S2, depth x C{max}S1, then a 1x1 conv to C_total."""

    def __init__(
        self, in_nc: int, out_nc: int, ds_factor: int, width: int, max_width: int, depth: int, reflection_pad: bool
    ):
        super().__init__()
        n_down = int(math.log2(ds_factor))
        layers: list[nn.Module] = []

        def conv(cin, cout, stride):
            if reflection_pad:
                layers.append(nn.ReflectionPad2d(1))
            layers.append(_conv_in(cin, cout, stride, reflection_pad))
            layers.append(nn.ReLU())

        conv(in_nc, width, 1)
        for i in range(n_down):
            conv(width, max_width if i == n_down - 1 else width, 2)
        for _ in range(depth):
            layers.append(_Block(max_width, reflection_pad))
        layers.append(nn.Conv2d(max_width, out_nc, 1, bias=True))
        self.model = nn.Sequential(*layers)

    def forward(self, x):  # (N, C_in, h*S2, w*S2) -> (N, C_total, h, w)
        return self.model(x)


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------
class ASAPNetGenerator(Generator):
    """ASAP-Net generator.

    Args:
        label_nc: semantic classes one-hot encoded in the input.
        instance_edge: the input's last channel is the instance-edge map.
        lr_instance: feed the edge channel only to the low-res stream (official Cityscapes setting).
        scale: S, the total downsampling factor = tile size of the pixelwise MLPs (power of two,
            multiple of ``ds_factor``). The official code sets S = crop_height / 16.
        ds_factor: S2, the learned downsampling of the conv stream (official 16).
        reflection_pad: reflection padding in the LR stream (official Facades); zero otherwise.
        lr_width, lr_max_width, lr_depth: conv stream widths and number of C{max}S1 blocks.
        hr_width, hr_depth: pixelwise MLP hidden width and number of layers.
        contain_dontcare: one extra one-hot channel for a don't-care label.
        pixelwise_impl: ``"fast"`` (default), ``"fused"`` or ``"reference"``: how the pixelwise stream is computed
            (same parameters and state dict, outputs equal to ~1e-7); also settable as an attribute.
        lowres_conv: ``"winograd"`` (default), ``"winograd4"`` or ``"direct"``: the inference form of the
            low-res stream's seven 1024-wide 3x3 stride-1 convs (module docstring; same parameters and state
            dict); also settable as an attribute.
    """

    def __init__(
        self,
        label_nc: int = 35,
        instance_edge: bool = True,
        lr_instance: bool = True,
        scale: int = 16,
        ds_factor: int = 16,
        reflection_pad: bool = False,
        lr_width: int = 64,
        lr_max_width: int = 1024,
        lr_depth: int = 7,
        hr_width: int = 64,
        hr_depth: int = 5,
        output_nc: int = 3,
        contain_dontcare: bool = False,
        pixelwise_impl: str = "fast",
        lowres_conv: str = "winograd",
    ):
        super().__init__()
        if pixelwise_impl not in PIXELWISE_IMPLS:
            raise ValueError(f"pixelwise_impl must be one of {', '.join(PIXELWISE_IMPLS)}, got {pixelwise_impl!r}")
        self.pixelwise_impl = pixelwise_impl
        #: None: the pixelwise stream runs in the dtype of the low-res stream's output; a dtype (bf16): it
        #: runs in that dtype on the cast parameters while the low-res stream keeps the model's own
        #: (:meth:`mixed_precision_variant`)
        self.pixelwise_dtype: torch.dtype | None = None
        if not _is_pow2(ds_factor) or ds_factor < 2:
            raise ValueError(f"ds_factor must be a power of two >= 2, got {ds_factor}")
        if not _is_pow2(scale) or scale < ds_factor:
            raise ValueError(f"scale S must be a power of two >= ds_factor ({ds_factor}), got {scale}")
        self.label_nc = label_nc
        self.contain_dontcare = contain_dontcare
        self.instance_edge = instance_edge
        self.lr_instance = lr_instance and instance_edge
        self.scale = scale
        self.ds_factor = ds_factor
        self.pre_factor = scale // ds_factor  # S1 (1: no pre-downsampling)
        self.reflection_pad = reflection_pad
        n_labels = label_nc + (1 if contain_dontcare else 0)
        self.input_nc = n_labels + (1 if instance_edge else 0)
        hr_label_nc = n_labels if self.lr_instance else self.input_nc
        self.pe_channels = 4 * int(math.log2(scale))
        self.mlp_channels = [hr_label_nc + self.pe_channels] + [hr_width] * (hr_depth - 1) + [output_nc]
        self.num_mlp_params = mlp_param_count(self.mlp_channels)
        self.lowres_stream = LowResStream(
            self.input_nc, self.num_mlp_params, ds_factor, lr_width, lr_max_width, lr_depth, reflection_pad
        )
        # Fixed tables that depend only on the configuration (not on the batch): never in the state dict.
        self.register_buffer("pos_table", positional_table(scale), persistent=False)
        self.register_buffer("tent", tent_kernel(self.pre_factor) if self.pre_factor > 1 else torch.zeros(0, device="cpu"), persistent=False)
        self.lowres_conv = lowres_conv

    @property
    def lowres_conv(self) -> str:
        """The form of the low-res stream's 1024-wide 3x3 stride-1 convs (:data:`LOWRES_CONVS`)."""
        return self._lowres_conv

    @lowres_conv.setter
    def lowres_conv(self, value: str) -> None:
        if value not in LOWRES_CONVS:
            raise ValueError(f"lowres_conv must be one of {', '.join(LOWRES_CONVS)}, got {value!r}")
        self._lowres_conv = value
        for blk in self.lowres_stream.modules():
            if isinstance(blk, _Block):
                blk.winograd_tile = WINOGRAD_TILE[value]
        # recorded like a constructor option, however set, so that export file names and keys name a non-default form
        cfg = {k: v for k, v in self.config.items() if k != "lowres_conv"}
        self.config = cfg if value == "winograd" else {**cfg, "lowres_conv": value}

    def prepare_for_inference(self) -> ASAPNetGenerator:
        """Eval mode, and the Winograd-transformed weights of the low-res blocks computed now (CPU fp32/fp64
        weights; later weight changes are picked up at the next forward)."""
        self.eval()
        for blk in self.lowres_stream.modules():
            if isinstance(blk, _Block) and blk.winograd_tile:
                w = blk.conv.weight
                if w.device.type == "cpu" and not w.is_meta and w.dtype in (torch.float32, torch.float64):
                    blk.winograd_weight()
        return self

    def mixed_precision_variant(self, dtype: torch.dtype) -> tuple[str, ASAPNetGenerator]:
        """A copy whose pixelwise stream runs in ``dtype`` (bf16) while the low-res stream keeps fp32.

        Why: with random weights spread to a realistic output, the low-res stream's 1024-wide blocks
        (3x3 conv + InstanceNorm + ReLU, no residual) grow a relative perturbation about 1.2x per
        block, so bf16 rounding (8-bit mantissa) there ends ~34 dB from fp32 (the gate asks 40); the
        pixelwise MLP alone in bf16 stays near 50-60 dB. The copy takes the fp32 input as the model
        does; the parameters are cast to ``dtype`` where the pixelwise stream starts.
        """
        m = copy.deepcopy(self)
        m.pixelwise_dtype = dtype
        name = str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace("float16", "fp16")
        return f"pixelwise stream in {name}, low-res stream in fp32", m

    # geometry -----------------------------------------------------------------------------
    def graph_variant_parts(self) -> list[str]:
        impl = "fast" if self.pixelwise_impl == "fused" else self.pixelwise_impl  # fused exports the fast graph
        parts = [f"pixelwise={impl}"]
        if impl == "fast":  # the traced graph's groups of tiles (exports before them had none)
            parts.append(f"groups={GRAPH_CHUNK_PIXELS}")
        if self.lowres_conv != "direct":  # direct: the graph (and cache keys) of before the Winograd form
            parts.append(f"lowres={self.lowres_conv}")
        return parts

    def check_input_size(self, height: int, width: int) -> None:
        """H and W must be multiples of the tile size S, with at least two tiles (one tile leaves the
        low-res stream's deepest maps at 1x1, where instance normalisation is undefined)."""
        s = self.scale
        if height >= s and width >= s and not height % s and not width % s and (height // s) * (width // s) >= 2:
            return
        name = self.model_name or "asapnet"
        preset = f" (preset {self.preset})" if self.preset else ""
        near = sorted({(max(s, round(height / s) * s), max(2 * s, round(width / s) * s)),
                       (max(s, (height // s) * s), max(2 * s, (width // s) * s)),
                       (max(s, -(-height // s) * s), max(2 * s, -(-width // s) * s))})
        raise UserError(
            f"{name}{preset} cannot take a {height}x{width} input: its pixelwise MLPs work on S x S tiles with S = {s}, "
            f"so H and W must each be a multiple of {s}, with at least two tiles; nearest valid sizes: "
            f"{', '.join(f'{h}x{w}' for h, w in near)}; check a size with `asapbench info --model {name} --res HxW`")

    def size_multiple(self) -> tuple[int, int]:
        return self.scale, self.scale

    def geometry(self, height: int, width: int) -> dict:
        """S1, S2, S, grid, tile and positional channels for an H x W input."""
        self.check_input_size(height, width)
        return {
            "S": self.scale,
            "S1": self.pre_factor,
            "S2": self.ds_factor,
            "lr_input": [height // self.pre_factor, width // self.pre_factor],
            "grid": [height // self.scale, width // self.scale],
            "tile": [self.scale, self.scale],
            "pe_channels": self.pe_channels,
            "mlp_channels": list(self.mlp_channels),
            "mlp_params": self.num_mlp_params,
        }

    # streams ------------------------------------------------------------------------------
    def lowres(self, x: torch.Tensor) -> torch.Tensor:
        """Per-tile MLP parameters ``[N, C_total, H/S, W/S]`` for the input ``x [N, C, H, W]``."""
        lr_in = x if self.pre_factor == 1 else tent_downsample(x, self.pre_factor, self.tent)
        return self.lowres_stream(lr_in)

    def pixelwise(self, hr_in: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Run each tile's MLP on its pixels: ``hr_in [N, C, H, W]``, ``params [N, C_total, h, w]``.

        Dispatches on :attr:`pixelwise_impl`. Meta tensors (MAC counting) always take the reference
        formulation, so counted MACs do not include the folded bias rows of the fast one. The fast
        formulation runs chunked in eager inference and as one product per layer when traced,
        exported, compiled or differentiated (training). The fused one runs the compiled kernel on CPU float32
        tensors in eager inference, and the fast formulation otherwise.
        """
        if self.pixelwise_dtype is not None:
            hr_in, params = hr_in.to(self.pixelwise_dtype), params.to(self.pixelwise_dtype)
        if self.pixelwise_impl == "reference" or hr_in.is_meta:
            return self.pixelwise_reference(hr_in, params)
        if _graph_mode(hr_in) or (torch.is_grad_enabled() and (params.requires_grad or hr_in.requires_grad)):
            return self.pixelwise_fast_graph(hr_in, params)  # traceable and differentiable (training)
        return self._pixelwise_eager(hr_in, params)

    def _pixelwise_eager(self, hr_in: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Eager inference: the compiled kernel where it runs (``pixelwise_impl="fused"`` on CPU float32 tensors),
        else the fast formulation."""
        if self.pixelwise_impl == "fused":
            from asapbench.models.fused_kernel import pixelwise, usable

            if usable(hr_in, params):
                return pixelwise(hr_in, params, self.pos_table, self.scale, self.mlp_channels)
        return self.pixelwise_fast_eager(hr_in, params)

    def pixelwise_reference(self, hr_in: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The literal formulation: 5-D matmul per layer, broadcast bias add, out-of-place activations."""
        n, c, height, width = hr_in.shape
        s = self.scale
        h, w = height // s, width // s
        # (N, C, h, S, w, S) -> (N, h, w, S, S, C) -> (N, h, w, S*S, C); pixel (a, b) of a tile at a*S + b
        feats = hr_in.reshape(n, c, h, s, w, s).permute(0, 2, 4, 3, 5, 1).reshape(n, h, w, s * s, c)
        pe = self.pos_table.to(device=feats.device, dtype=feats.dtype).expand(n, h, w, s * s, self.pe_channels)
        feats = torch.cat([feats, pe], dim=-1)  # labels first, then the encoding
        p = params.permute(0, 2, 3, 1)  # (N, h, w, C_total)
        off = 0
        n_layers = len(self.mlp_channels) - 1
        for i, (ci, co) in enumerate(itertools.pairwise(self.mlp_channels)):
            bias = p[..., off : off + co].unsqueeze(3)  # (N, h, w, 1, co); bias block first
            off += co
            weight = p[..., off : off + ci * co].reshape(n, h, w, ci, co)  # c_in-major
            off += ci * co
            feats = torch.matmul(feats, weight) + bias  # (N, h, w, S*S, co)
            feats = torch.tanh(feats) if i == n_layers - 1 else F.leaky_relu(feats, 0.01)
        co = self.mlp_channels[-1]
        out = feats.reshape(n, h, w, s, s, co).permute(0, 5, 1, 3, 2, 4)  # (N, co, h, S, w, S)
        return out.reshape(n, co, height, width)

    # fast formulation ---------------------------------------------------------------------
    def _untile(self, out: torch.Tensor, n: int, height: int, width: int) -> torch.Tensor:
        """``[T, S*S, c_out]`` tile-major -> ``[N, c_out, H, W]`` (one copy of the small output)."""
        s, co = self.scale, out.shape[-1]
        out = out.reshape(n, height // s, width // s, s, s, co).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(n, co, height, width)

    def pixelwise_fast_eager(self, hr_in: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Eager fast path: bias rows folded into ``bmm``, activations in place, tiles in chunks.

        Each chunk of tiles (about :data:`CHUNK_PIXELS` pixels, within one row of tiles) runs through
        all layers before the next one starts. Its first-layer input ``[1, labels, PE]`` is staged in a
        chunk-sized buffer whose ones and encoding columns are written once (only the label channels
        are copied per chunk, straight from ``hr_in``), and the hidden layers run between two ping-pong
        buffers whose column 0 holds the constant 1, so a chunk stays in the L2 cache and no full-size
        intermediate is allocated.
        """
        n, c, height, width = hr_in.shape
        s = self.scale
        h, w = height // s, width // s
        pix = s * s
        chans = self.mlp_channels
        n_layers = len(chans) - 1
        k = max(1, min(w, CHUNK_PIXELS // pix))
        stage = hr_in.new_empty(k, s, s, 1 + chans[0])  # [1, labels, PE] of a chunk's pixels
        stage[..., 0].fill_(1.0)
        stage[..., 1 + c :].copy_(self.pos_table.to(device=hr_in.device, dtype=hr_in.dtype).view(s, s, self.pe_channels))
        tiles = hr_in.reshape(n, c, h, s, w, s).permute(0, 2, 4, 3, 5, 1)  # (N, h, w, S, S, C): a view
        p = params.permute(0, 2, 3, 1).reshape(n * h * w, params.shape[1])
        hid = max(chans[1:-1], default=chans[0])
        bufs = [p.new_empty(k, pix, 1 + hid) for _ in range(2)]
        for b in bufs:
            b[..., 0].fill_(1.0)
        out = p.new_empty(n * h * w, pix, chans[-1])
        for ni, hi, wi in itertools.product(range(n), range(h), range(0, w, k)):
            kk = min(k, w - wi)
            t0 = (ni * h + hi) * w + wi
            q = p[t0 : t0 + kk]
            x = stage[:kk]
            x[..., 1 : 1 + c].copy_(tiles[ni, hi, wi : wi + kk])
            x = x.view(kk, pix, 1 + chans[0])
            off = 0
            for i, (ci, co) in enumerate(itertools.pairwise(chans)):
                wb = q[:, off : off + (ci + 1) * co].view(kk, ci + 1, co)  # [bias; W], bias first
                off += (ci + 1) * co
                if i == n_layers - 1:
                    torch.bmm(x, wb, out=out[t0 : t0 + kk]).tanh_()
                else:
                    torch.bmm(x, wb, out=bufs[i % 2][:kk][..., 1 : 1 + co])
                    # on the whole contiguous buffer, not the strided output view: column 0 (the ones) is
                    # unchanged by leaky_relu, and the contiguous kernel is vectorised (bf16: 4x faster)
                    x = bufs[i % 2][:kk]
                    F.leaky_relu_(x, 0.01)
                    x = x[..., : 1 + co]
        return self._untile(out, n, height, width)

    def _graph_groups(self, tiles: int) -> list[tuple[int, int]]:
        """Tile ranges ``[(start, stop)]`` that the traced formulation runs through all layers one after the other.

        In eval mode (inference, the exports) groups of about :data:`GRAPH_CHUNK_PIXELS` pixels, so that a
        runtime that executes the nodes in order keeps a group's activations in cache instead of writing every
        layer's full-size activation to memory (OpenVINO and onnxruntime at 1024x1024: the pixelwise stream
        1.2x faster, results/cpu-profile); one group in training mode (one product per layer) or when all tiles fit.
        """
        if self.training:
            return [(0, tiles)]
        g = max(1, GRAPH_CHUNK_PIXELS // (self.scale * self.scale))
        return [(i, min(tiles, i + g)) for i in range(0, tiles, g)]

    def pixelwise_fast_graph(self, hr_in: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Traceable fast path (ONNX / torch.export / torch.compile): batched products per layer.

        First layer: ``x @ W_labels + PE @ W_PE + b`` (two ``MatMul`` and the bias ``Add``, no concatenated
        ``[labels, PE]`` input); other layers: ``baddbmm`` with the bias as a ``[T, 1, c_out]`` view (ONNX
        ``MatMul`` + ``Add``). In inference the tiles run in groups (:meth:`_graph_groups`), concatenated at the end.
        """
        n, c, height, width = hr_in.shape
        s = self.scale
        h, w = height // s, width // s
        t = n * h * w
        pe = self.pos_table.to(device=hr_in.device, dtype=hr_in.dtype)
        x = hr_in.reshape(n, c, h, s, w, s).permute(0, 2, 4, 3, 5, 1).reshape(t, s * s, c)
        p = params.permute(0, 2, 3, 1).reshape(t, params.shape[1])
        ci, co = self.mlp_channels[0], self.mlp_channels[1]

        def first_layer(a: int, b: int) -> torch.Tensor:
            wb = p[a:b, : (ci + 1) * co].reshape(b - a, ci + 1, co)  # [bias; W_labels; W_PE]
            return torch.matmul(x[a:b], wb[:, 1 : 1 + c]) + torch.matmul(pe, wb[:, 1 + c :]) + wb[:, :1]

        return self._untile(self._grouped(p, first_layer), n, height, width)

    def _grouped(self, p: torch.Tensor, first_layer) -> torch.Tensor:
        """``[T, S*S, c_out]``: every group of tiles (:meth:`_graph_groups`) through ``first_layer(start, stop)`` (its
        pre-activation), the LeakyReLU and layers 1.. (:meth:`_graph_layers`), concatenated in tile order."""
        outs = [self._graph_layers(F.leaky_relu(first_layer(a, b), 0.01), p[a:b]) for a, b in self._graph_groups(p.shape[0])]
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)

    def _graph_layers(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Layers 1.. of the graph formulation on the first layer's activations ``x [T, S*S, c_1]``."""
        t = p.shape[0]
        chans = self.mlp_channels
        n_layers = len(chans) - 1
        off = (chans[0] + 1) * chans[1]
        for i, (ci, co) in enumerate(itertools.pairwise(chans[1:]), start=1):
            bias = p[:, off : off + co].unsqueeze(1)
            x = torch.baddbmm(bias, x, p[:, off + co : off + (ci + 1) * co].reshape(t, ci, co))
            x = torch.tanh(x) if i == n_layers - 1 else F.leaky_relu(x, 0.01)
            off += (ci + 1) * co
        return x

    # label-map input: the first layer as a row lookup --------------------------------------
    def _label_layout(self) -> tuple[int, int, int]:
        """(c_in, c_out, hr_labels) of the first pixelwise layer: its input is ``[1, labels (+ edge), PE]``;
        ``hr_labels`` counts the label-and-edge channels before the encoding."""
        ci, co = self.mlp_channels[0], self.mlp_channels[1]
        return ci, co, ci - self.pe_channels

    def _tile_labels(self, lab: torch.Tensor) -> torch.Tensor:
        """``[N, 1, H, W]`` -> tile-major ``[T, S*S]`` (pixel (a, b) of a tile at a*S + b)."""
        n, _, height, width = lab.shape
        s = self.scale
        h, w = height // s, width // s
        return lab.reshape(n, h, s, w, s).permute(0, 1, 3, 2, 4).reshape(n * h * w, s * s)

    def _first_layer_lookup(self, wb: torch.Tensor, lab_t: torch.Tensor, edge_t: torch.Tensor | None) -> torch.Tensor:
        """First layer (before its activation) of tiles ``wb [T, c_in + 1, c_out]`` (``[bias; W]``) on pixels
        with label ids ``lab_t [T, S*S]``: ``bias + W[1 + label] (+ edge W[edge]) + PE @ W[PE]``.

        The one-hot product ``[1, onehot, PE] @ [bias; W]`` picks exactly one label row per pixel, so
        this is that product without the zero terms: a row gather instead of ``label_nc`` multiply-adds
        (ONNX: MatMul (PE) + Add (bias) + Gather (label rows) [+ Mul/Add (edge)]).
        """
        t = lab_t.shape[0]
        _, co, hr = self._label_layout()
        n_lab = self.label_classes
        pe = self.pos_table.to(device=wb.device, dtype=wb.dtype)
        y = torch.matmul(pe, wb[:, 1 + hr :]) + wb[:, :1]
        flat = wb.reshape(t * wb.shape[1], co)
        base = (torch.arange(t, device=lab_t.device, dtype=lab_t.dtype) * wb.shape[1] + 1).view(t, 1)
        y = y + F.embedding(lab_t + base, flat)
        if hr > n_lab:  # the edge channel feeds the pixelwise stream too (lr_instance=False)
            y = y + edge_t * wb[:, 1 + n_lab : 2 + n_lab]
        return y

    def pixelwise_labels(self, x: torch.Tensor, onehot: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The pixelwise stream of the label-map input ``x [N, 1|2, H, W]`` and its in-graph one-hot ``onehot``.

        Traced, exported, compiled or differentiated: the fast formulation with its first layer as a row
        lookup (:meth:`_first_layer_lookup`; no product over the label channels; onnxruntime runs the whole
        model about as fast as the one-hot one, results/cpu-profile). Eager: the one-hot product of
        :meth:`pixelwise_fast_eager` (or of the fused kernel, :meth:`_pixelwise_eager`) on ``onehot``,
        which the low-res stream needs at full resolution anyway and which the chunked ``bmm`` runs
        faster than an eager gather (268 vs 314 ms at 1024x1024, equal at 256x512; 2-core AMD EPYC,
        torch 2.13). The reference formulation and meta tensors also take ``onehot``."""
        hr_in = onehot[:, :-1] if self.lr_instance else onehot
        if self.pixelwise_dtype is not None:
            hr_in, params = hr_in.to(self.pixelwise_dtype), params.to(self.pixelwise_dtype)
        if self.pixelwise_impl == "reference" or x.is_meta:
            return self.pixelwise_reference(hr_in, params)
        if not (_graph_mode(x) or (torch.is_grad_enabled() and params.requires_grad)):
            return self._pixelwise_eager(hr_in, params)
        n, _, height, width = x.shape
        _, co, hr = self._label_layout()
        lab_t = self._tile_labels(x[:, :1])
        edge_t = self._tile_labels(hr_in[:, -1:]).unsqueeze(-1) if hr > self.label_classes else None
        t = lab_t.shape[0]
        p = params.permute(0, 2, 3, 1).reshape(t, params.shape[1])
        wb = p[:, : (hr + self.pe_channels + 1) * co].reshape(t, -1, co)
        out = self._grouped(p, lambda a, b: self._first_layer_lookup(wb[a:b], lab_t[a:b],
                                                                    None if edge_t is None else edge_t[a:b]))
        return self._untile(out, n, height, width)

    def stage_plan(self) -> StagePlan:
        """The stages ``asapbench profile`` times (:class:`asapbench.stages.StagePlan`)."""
        return _asapnet_plan(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, input_nc, H, W) -> (N, 3, H, W)
        if self.input_mode == "labels":  # integer label map: one-hot in the graph (first layer a row lookup in graphs)
            onehot = self.model_input(x)  # checked, then encoded in the graph
            params = self.lowres(onehot)
            return self.pixelwise_labels(x, onehot, params)
        if x.dim() != 4 or x.shape[1] != self.input_nc:
            raise UserError(f"ASAP-Net expects input [N, {self.input_nc}, H, W], got {list(x.shape)}")
        self.check_input_size(int(x.shape[2]), int(x.shape[3]))
        if self.pixelwise_dtype is not None:  # mixed: the low-res stream in the model's own dtype
            x = x.to(self.float_dtype())
        params = self.lowres(x)
        hr_in = x[:, :-1] if self.lr_instance else x
        return self.pixelwise(hr_in, params)


def _asapnet_plan(m) -> StagePlan:
    if m.input_mode == "labels":
        return _asapnet_labels_plan(m)

    def encode(x):
        lr_in = x if m.pre_factor == 1 else tent_downsample(x, m.pre_factor, m.tent)
        return lr_in, (x[:, :-1] if m.lr_instance else x)

    def lowres(state):
        lr_in, hr = state
        return hr, m.lowres_stream(lr_in)

    def pixelwise(state):
        hr, params = state
        return m.pixelwise(hr, params)

    return StagePlan(
        [("input encoding", encode), ("low-res stream", lowres), ("pixelwise stream", pixelwise)],
        scopes={"lowres_stream": "low-res stream"},
        calls=[("self.lowres(", "input encoding"), ("hr_in =", "input encoding"), ("self.pixelwise(", "pixelwise stream")],
    )


def _asapnet_labels_plan(m) -> StagePlan:
    """ASAP-Net on the label map (``--input labels``): encoding = the in-graph one-hot and edge map (and the
    tent pre-downsampling); the pixelwise stream is :meth:`pixelwise_labels` (in onnxruntime its first layer's row
    lookup; in torch eager the one-hot product)."""
    def encode(x):
        onehot = m.model_input(x)
        return (onehot if m.pre_factor == 1 else tent_downsample(onehot, m.pre_factor, m.tent)), (x, onehot)

    def lowres(state):
        lr_in, hr = state
        return hr, m.lowres_stream(lr_in)

    def pixelwise(state):
        (x, onehot), params = state
        return m.pixelwise_labels(x, onehot, params)

    return StagePlan(
        [("input encoding", encode), ("low-res stream", lowres), ("pixelwise stream", pixelwise)],
        scopes={"lowres_stream": "low-res stream"},
        calls=[("self.model_input(", "input encoding"), ("self.lowres(", "input encoding"),
               ("self.pixelwise_labels(", "pixelwise stream")],
    )
