"""The DDPM UNet (Ho et al. 2020, appendix B), ε_θ(x_t, t), in the layout of the official checkpoint.

The CIFAR-10 model: ch 128, ch_mult (1, 2, 2, 2), 2 residual blocks per level, self-attention at
16×16 and in the middle, dropout 0.1, GroupNorm(32, eps 1e-6), swish, sinusoidal step embedding,
35.7M parameters, about 6.2 GMACs per 32×32 image. Module names follow the PyTorch port the DDIM
authors used (ermongroup/ddim `models/diffusion.py`), so `state_dict()` keys and shapes equal those
of the converted DDPM EMA checkpoint `model-790000.ckpt` and it loads with `strict=True`
(see `checkpoint.load_official_ddpm`). Notebook 06 §1 walks through the anatomy.

    >>> net = cifar10_unet()                     # 35,746,307 parameters
    >>> eps_hat = net(x_t, t)                    # x_t (B, 3, 32, 32), t (B,) int or float steps
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .checks import as_real, check_int

# The constructor's shape arguments besides in_ch/out_ch: what a training config must store to rebuild the network.
CONFIG_KEYS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "num_groups", "resolution")

PRESETS = {
    # The paper's CIFAR-10 network.
    "cifar10": dict(in_ch=3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                    dropout=0.1, resolution=32, num_groups=32),
    # A small network for 16×16 one-channel images: the tests' UNet (the `digits` training preset is 8×8, ch_mult (1, 2)).
    "tiny": dict(in_ch=1, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                 dropout=0.1, resolution=16, num_groups=8),
}
CIFAR10_PARAMS = 35_746_307  # parameter count of the official checkpoint


def timestep_embedding(t: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding of the step t (Vaswani et al. 2017, as in DDPM's tensor2tensor version; notebook 06 §1).

    e(t) = [sin(t ω_0), …, sin(t ω_{h−1}), cos(t ω_0), …, cos(t ω_{h−1})],  ω_i = 10000^{−i/(h−1)},
    h = dim // 2 (sines first, then cosines; a zero is appended if dim is odd). t may be fractional. Computed in
    `dtype`: float32 as the official code, float64 for a float64 network.
    """
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    half = check_int("dim", dim, 4, note=" (dim // 2 >= 2 frequencies, from 1 down to 1/10000)") // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype, device=t.device) * (-math.log(10000.0) / (half - 1)))
    args = t.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """h = conv2(drop(swish(norm2(conv1(swish(norm1(x))) + W e)))),  out = shortcut(x) + h."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = dropout
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)  # "network in network": a 1×1 conv

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        # temb_act is swish(temb), computed once per forward pass instead of once per block
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(temb_act)[:, :, None, None]
        h = F.dropout(F.silu(self.norm2(h)), self.dropout, self.training)
        h = self.conv2(h)
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions, out = x + proj_out(softmax(qkᵀ/√C) v).

    q, k, v and proj_out are 1×1 convolutions in the checkpoint; here they run as one fused
    (B, HW, C) × (C, 3C) matmul and `scaled_dot_product_attention`. With channels_last inputs the
    `b c h w -> b (h w) c` rearrange is a view, so no activation is copied.
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        h = rearrange(self.norm(x), "b c h w -> b (h w) c")
        w_qkv = torch.cat([self.q.weight, self.k.weight, self.v.weight]).flatten(1)
        b_qkv = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        q, k, v = rearrange(F.linear(h, w_qkv, b_qkv), "b n (three c) -> three b 1 n c", three=3)
        h = rearrange(F.scaled_dot_product_attention(q, k, v), "b 1 n c -> b n c")
        h = F.linear(h, self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + rearrange(h, "b (h w) c -> b c h w", h=height)


class Downsample(nn.Module):
    """3×3 stride-2 conv with TensorFlow's "SAME" padding: one zero row/column at the bottom/right."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the UNet: `block` (res blocks), `attn` (empty or one per block), and a
    `downsample` / `upsample` module except at the bottom / top level."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)


class UNet(nn.Module):
    """ε_θ(x_t, t) of DDPM (notebook 06 §1). Defaults are the paper's CIFAR-10 model (`PRESETS["cifar10"]`).

    Args:
        in_ch: image channels; out_ch: predicted channels (default in_ch, ε has the image's shape).
        ch: base width; level i has ch·ch_mult[i] channels; the step embedding has 4·ch.
        num_res_blocks: residual blocks per level going down (one more per level going up).
        attn_resolutions: feature-map sizes that get self-attention after each res block
            (the middle always has one); each must be resolution / 2^i for some level i.
        dropout: inside each residual block, between its two convolutions.
        resolution: the training image size (decides where attention goes; the network itself is
            convolutional and accepts any size divisible by 2^(len(ch_mult)−1)).
        num_groups: GroupNorm groups (32 in DDPM; must divide every width).
    """

    def __init__(self, in_ch: int = 3, ch: int = 128, ch_mult=(1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions=(16,), dropout: float = 0.1, resolution: int = 32, out_ch: int | None = None,
                 num_groups: int = 32):
        super().__init__()
        # Python ints: the config goes into checkpoints, whose weights-only loading refuses numpy scalars; int(1.5)
        # would build another network than the one asked for
        ch_mult = tuple(check_int("an entry of ch_mult", m) for m in ch_mult)
        attn_resolutions = tuple(check_int("an entry of attn_resolutions", r) for r in attn_resolutions)
        out_ch = in_ch if out_ch is None else out_ch
        in_ch, num_res_blocks, resolution, out_ch, num_groups = (check_int(name, v) for name, v in (
            ("in_ch", in_ch), ("num_res_blocks", num_res_blocks), ("resolution", resolution),
            ("out_ch", out_ch), ("num_groups", num_groups)))
        check_architecture(ch, ch_mult, attn_resolutions, dropout, resolution, num_groups)    # ch an integer >= 4 too
        ch, dropout = int(ch), float(dropout)       # a numpy int or float would make the checkpoint unloadable, as above
        self.config = dict(in_ch=in_ch, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                           attn_resolutions=attn_resolutions, dropout=dropout, resolution=resolution,
                           out_ch=out_ch, num_groups=num_groups)
        self.ch, self.num_groups = ch, num_groups
        temb_ch = 4 * ch
        g = num_groups

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)

        # Going down: widths[i] after level i's blocks; `skips` records the width of each saved h.
        res, block_in, skips = resolution, ch, [ch]
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * mult, temb_ch, dropout, g))
                block_in = ch * mult
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in, g))
                skips.append(block_in)
            level = Level(blocks, attns)
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
                skips.append(block_in)
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, temb_ch, dropout, g)
        self.mid.attn_1 = AttnBlock(block_in, g)
        self.mid.block_2 = ResnetBlock(block_in, block_in, temb_ch, dropout, g)

        # Going up, built bottom level first; each block eats one saved skip. self.up[i] is the
        # level at resolution / 2^i, the same index as self.down[i] (the official ordering).
        up = []
        for i in reversed(range(len(ch_mult))):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in + skips.pop(), ch * ch_mult[i], temb_ch, dropout, g))
                block_in = ch * ch_mult[i]
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in, g))
            level = Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            up.insert(0, level)
        self.up = nn.ModuleList(up)

        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """ε̂ = ε_θ(x, t): x (B, in_ch, H, W); t the step, a (B,) tensor, or a scalar for the whole batch."""
        if x.ndim != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.conv_in.in_channels:            # torch: "weight of size [128, 3, 3, 3], expected input…"
            raise ValueError(f"x has {x.shape[1]} channels but this network takes {self.conv_in.in_channels} (in_ch)")
        factor = 2 ** (len(self.down) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"image size {tuple(x.shape[2:])} must be divisible by {factor} "
                             f"(2^(len(ch_mult)-1))")
        t = _as_steps(t, x)
        w = self.temb.dense[0].weight.dtype          # a network cast to bf16, float16 or float64 runs without autocast
        emb = timestep_embedding(t, self.ch, torch.float64 if w == torch.float64 else torch.float32).to(w)
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](emb)))
        temb = F.silu(temb)  # every residual block applies swish to temb before projecting it

        hs = [self.conv_in(x)]
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(hs[-1], temb)
                if len(level.attn):
                    h = level.attn[i](h)
                hs.append(h)
            if hasattr(level, "downsample"):
                hs.append(level.downsample(hs[-1]))

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)

        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)

        return self.conv_out(F.silu(self.norm_out(h)))


def check_architecture(ch, ch_mult, attn_resolutions, dropout, resolution, num_groups) -> None:
    """Refuse (ValueError) a UNet size that cannot be built, without building it: `UNet` calls it, and so does
    `train.validate_config`, so that `train` says it before anything else."""
    check_int("ch", ch, 4, note=" (the step embedding has ch/2 >= 2 frequencies)")
    if not ch_mult or any(m < 1 for m in ch_mult):
        raise ValueError(f"ch_mult must be a non-empty sequence of positive ints, got {ch_mult!r}")
    if (p := as_real(dropout)) is None or not 0.0 <= p < 1.0:            # "0.1" compared as a string before
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    factor = 2 ** (len(ch_mult) - 1)
    if resolution % factor:
        raise ValueError(f"resolution {resolution} must be divisible by 2^(len(ch_mult)-1) = {factor}")
    allowed = [resolution // 2 ** i for i in range(len(ch_mult))]
    bad = [r for r in attn_resolutions if r not in allowed]
    if bad:
        raise ValueError(f"attn_resolutions {bad} are not feature-map sizes of this network; allowed: {allowed}")
    widths = sorted({ch} | {ch * m for m in ch_mult})
    if any(w % num_groups for w in widths):
        raise ValueError(f"num_groups={num_groups} must divide every width {widths} (ch * ch_mult)")


def _as_steps(t, x: torch.Tensor) -> torch.Tensor:
    """The step(s) t as a (B,) tensor on x's device: a scalar applies to the whole batch."""
    if isinstance(t, bool) or not isinstance(t, (numbers.Real, torch.Tensor)):
        raise TypeError(f"t must be an int, a float or a tensor of shape (B,), got {type(t).__name__}")
    t = torch.as_tensor(t, device=x.device)
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"t must be integer or real, got dtype {t.dtype}")
    if t.ndim == 0 or t.shape == (1,):
        t = t.reshape(1).expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},) to match the batch, got {tuple(t.shape)}")
    if t.device.type == "cpu" and t.is_floating_point() and not bool(torch.isfinite(t).all()):  # an all-NaN ε
        raise ValueError(f"t must be finite steps, got {t.tolist()}")
    return t


def ddpm_init_(net: UNet) -> UNet:
    """The official DDPM code's initialisation, in place (Ho et al.'s diffusion_tf, `nn.default_init`; notebook 06 §1):
    every conv and dense weight uniform with variance scale / fan_avg, fan_avg = (fan_in + fan_out) / 2 (Glorot's
    uniform), biases 0, and scale 1e-10 (their `init_scale=0.`) for the last conv of each residual block, the attention
    output and the output conv (weights 1e-5 times the size of Glorot's): the untrained network answers ≈ 0, every residual block
    starts as its skip path (the identity, or its 1×1 `nin_shortcut` conv where the channels change) and every attention
    block as the identity. `UNet` otherwise keeps PyTorch's defaults (variance by fan_in alone, every
    branch on), as the DDIM authors' port does."""
    last = {net.conv_out} | {m.conv2 for m in net.modules() if isinstance(m, ResnetBlock)} \
        | {m.proj_out for m in net.modules() if isinstance(m, AttnBlock)}
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight, gain=math.sqrt(1e-10 if m in last else 1.0))
            nn.init.zeros_(m.bias)
    return net


def cifar10_unet(**overrides) -> UNet:
    """The paper's CIFAR-10 UNet (35,746,307 parameters with the defaults; notebook 06 §1)."""
    net = UNet(**{**PRESETS["cifar10"], **overrides})
    if not overrides:
        assert count_params(net) == CIFAR10_PARAMS, count_params(net)
    return net


def tiny_unet(**overrides) -> UNet:
    """A small UNet for 16×16 one-channel images (`PRESETS["tiny"]`: 1.11M parameters, 66 MMACs per image),
    the tests' network; the `digits` training preset (`train.PRESETS`) is smaller, at 8×8."""
    return UNet(**{**PRESETS["tiny"], **overrides})


def count_params(model: nn.Module) -> int:
    """Number of parameters of `model`, a torch.nn.Module (notebook 06 §1)."""
    if not isinstance(model, nn.Module):              # else "'str' object has no attribute 'parameters'"
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, x: torch.Tensor | None = None, t=None) -> int:
    """Multiply-accumulates of one forward pass `model(x, t)`, per image (notebook 06 §1).

    Counted by torch's FlopCounterMode over convolutions, linear layers and the two attention
    matmuls qkᵀ and softmax(·)v; normalisations, activations and additions are not counted.
    MACs = FLOPs / 2. x defaults to one image at the model's training resolution. A ddimlab UNet
    is counted on a weightless copy on the meta device, so nothing is computed.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    if x is None:
        cfg = model.config
        x = torch.zeros(1, cfg["in_ch"], cfg["resolution"], cfg["resolution"])
    t = torch.zeros(x.shape[0]) if t is None else torch.as_tensor(t)
    if isinstance(model, UNet):
        with torch.device("meta"):
            model = UNet(**model.config)
        x, t = x.to("meta"), t.to("meta")
    # the math backend routes attention through matmuls that the counter sees on every device
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, t)
    return counter.get_total_flops() // 2 // x.shape[0]
