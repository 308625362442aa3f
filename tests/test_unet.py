"""The DDPM UNet: official layout, step embedding, attention, batch independence, MAC count."""
import hashlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from ddimlab import unet

# The official checkpoint's layout (`checkpoint.official_layout`, shipped as ddimlab/reference/…tsv) lists its
# 328 "key<TAB>shape" lines (e.g. "down.0.block.0.conv1.weight\t128x128x3x3"); this is the sha256 of those
# lines joined by newlines, recorded from the official model-790000.ckpt, so a damaged listing fails too.
REFERENCE_SHA256 = "bdf0cb63c2a81ad7548f00bff2d377c90d6a23155c0494575abaea1b2bed6a3b"


def layout_lines(state_dict):
    return [f"{k}\t{'x'.join(str(n) for n in v.shape)}" for k, v in state_dict.items()]


@pytest.fixture(scope="module")
def cifar():
    torch.manual_seed(0)
    return unet.cifar10_unet()


def small(**kw):
    cfg = dict(in_ch=2, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
               resolution=8, num_groups=4)
    return unet.UNet(**{**cfg, **kw})


def test_cifar10_state_dict_equals_official_layout(cifar):
    from ddimlab import checkpoint

    ours = layout_lines(cifar.state_dict())
    listed = [f"{k}\t{'x'.join(map(str, shape))}" for k, shape in checkpoint.official_layout().items()]
    assert ours == listed            # same keys, same shapes, same order (a readable diff on failure)
    assert len(ours) == 328
    assert hashlib.sha256("\n".join(ours).encode()).hexdigest() == REFERENCE_SHA256
    assert unet.count_params(cifar) == 35_746_307  # "35.7M parameters" (DDPM appendix B)


def test_cifar10_macs_match_design_figure(cifar):
    macs = unet.count_macs(cifar)
    assert 6.1e9 < macs < 6.3e9  # ≈ 6.2 GMACs = 12.4 GFLOP per 32×32 image


def test_macs_equal_hook_count_plus_attention_formula():
    """count_macs against an independent count: hooks on every Conv2d/Linear call + 4NC² + 2N²C per attention."""
    net = unet.tiny_unet().eval()
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            total += out[0].numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1] // mod.groups
        else:
            total += out[0].numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    attn_sizes = []
    for m in net.modules():
        if isinstance(m, unet.AttnBlock):
            handles.append(m.register_forward_hook(lambda mod, i, o: attn_sizes.append(o.shape[1:])))
    with torch.no_grad():
        net(torch.zeros(1, 1, 16, 16), torch.zeros(1))
    for h in handles:
        h.remove()
    assert len(attn_sizes) == 4  # 8×8: one going down, two going up (num_res_blocks + 1), one in the middle
    for c, hh, ww in attn_sizes:
        n = hh * ww
        total += 4 * n * c * c + 2 * n * n * c  # q, k, v, proj_out are not called as modules
    assert unet.count_macs(net) == total


def test_timestep_embedding_formula():
    t = torch.tensor([0, 1, 17, 999], dtype=torch.long)
    dim = 128
    half = dim // 2
    w = np.exp(-math.log(10000) * np.arange(half) / (half - 1))
    expected = np.concatenate([np.sin(t.numpy()[:, None] * w), np.cos(t.numpy()[:, None] * w)], axis=1)
    got = unet.timestep_embedding(t, dim).double().numpy()
    # float32 argument t·ω: relative error ~6e-8 of t ≤ 999 -> absolute error ≲ 1e-4 in sin/cos
    np.testing.assert_allclose(got, expected, atol=2e-4)
    np.testing.assert_allclose(unet.timestep_embedding(t, dim, torch.float64).numpy(), expected, atol=1e-12)  # float64 net
    odd = unet.timestep_embedding(t, 7)
    assert odd.shape == (4, 7) and torch.all(odd[:, -1] == 0)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        unet.timestep_embedding(torch.zeros(2, 1), 8)


def test_attention_equals_naive_softmax_formula(randomize):
    torch.manual_seed(1)
    block = unet.AttnBlock(32, 8)
    randomize(block, seed=1, scale=0.3)
    x = torch.randn(2, 32, 5, 6)
    h = block.norm(x)
    q, k, v = (conv(h).flatten(2) for conv in (block.q, block.k, block.v))  # (B, C, N)
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(32), dim=-1)
    expected = x + block.proj_out(torch.einsum("bij,bcj->bci", weights, v).reshape(x.shape))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(block(x.to(memory_format=torch.channels_last)), expected, atol=1e-5, rtol=1e-5)


def test_batch_elements_are_independent_and_t_broadcasts(randomize):
    net = randomize(small(), scale=0.1).eval()
    x = torch.randn(3, 2, 8, 8)
    t = torch.tensor([0, 400, 999])
    with torch.no_grad():
        batch = net(x, t)
        single = torch.cat([net(x[i:i + 1], t[i:i + 1]) for i in range(3)])
        torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)
        assert torch.equal(net(x, 7), net(x, torch.full((3,), 7)))
        torch.testing.assert_close(net(x, 7.0), net(x, torch.full((3,), 7)))
        # the step matters: a different t changes the output well above float noise
        assert (net(x, 0) - net(x, 500)).abs().max() > 1e-3
        cl = net(x.to(memory_format=torch.channels_last), t)
        torch.testing.assert_close(cl, batch, atol=1e-5, rtol=1e-5)


def test_dropout_only_in_train_mode_and_all_parameters_get_gradients(randomize):
    net = randomize(small(dropout=0.5), scale=0.1)
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([3, 9])
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x, t), net(x, t))
    net.train()
    torch.manual_seed(0)
    a = net(x, t)
    b = net(x, t)
    assert not torch.allclose(a, b)
    (a ** 2).mean().backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []


def test_tiny_preset_shape_and_size():
    net = unet.tiny_unet()
    assert 0.5e6 < unet.count_params(net) < 1.2e6
    out = net.eval()(torch.randn(4, 1, 16, 16), torch.randint(0, 1000, (4,)))
    assert out.shape == (4, 1, 16, 16)
    assert unet.tiny_unet(in_ch=3, out_ch=6)(torch.randn(1, 3, 16, 16), 0).shape == (1, 6, 16, 16)


@pytest.mark.parametrize("kw, match", [
    (dict(attn_resolutions=(16,)), r"attn_resolutions \[16\].*allowed: \[8, 4\]"),
    (dict(num_groups=5), "num_groups=5 must divide"),
    (dict(ch_mult=(1, 2, 2), resolution=10, attn_resolutions=()), "divisible by"),
    (dict(ch_mult=()), "ch_mult"),
    (dict(dropout=1.0), "dropout"),
])
def test_bad_configs_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        small(**kw)


def test_bad_inputs_raise():
    net = small().eval()
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        net(torch.randn(2, 2, 8, 8), torch.zeros(3))
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(1, 2, 7, 8), 0)
    with pytest.raises(TypeError, match="t must be"):
        net(torch.randn(1, 2, 8, 8), "10")


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.bfloat16, 0.05), (torch.float16, 0.01)])
def test_network_cast_to_another_dtype_runs_and_agrees_with_float32(randomize, dtype, tol):
    """`net.to(torch.bfloat16)` without autocast used to fail inside torch (the step embedding stayed float32);
    the cast network must give the float32 network's ε̂ to that dtype's rounding, and sample in that dtype."""
    from ddimlab import checkpoint, samplers, schedule

    ref = randomize(small()).eval()
    net = small().eval()
    net.load_state_dict(ref.state_dict())
    net.to(dtype)
    x, t = torch.randn(3, 2, 8, 8), torch.tensor([5, 500, 999])
    with torch.no_grad():
        want, got = ref(x, t), net(x.to(dtype), t)
    assert got.dtype == dtype
    assert (got.double() - want.double()).abs().max() / want.abs().max() < tol
    abar = schedule.make_alpha_bar("linear", 1000)
    x0 = samplers.ddim_sample(checkpoint.eps_fn(net), x.to(dtype), abar, schedule.timesteps(5, 1000, "uniform"))
    assert x0.dtype == dtype and torch.isfinite(x0).all()


def test_ddpm_init_starts_every_residual_branch_off_with_glorot_variance_elsewhere():
    """The official code's initialisation (diffusion_tf `default_init`): fan-average uniform weights, zero biases, and
    ~0 for each residual branch's last conv, the attention output and the output conv, so the untrained network
    answers ~0, every attention block is the identity and every residual block its skip path (the identity, or the
    1×1 shortcut conv where the channels change). Variances against 2 / (fan_in + fan_out) from the shapes, in SE; the
    blocks are found by type, each checked against its skip path."""
    torch.manual_seed(0)
    net = unet.ddpm_init_(small())
    x, t = torch.randn(4, 2, 8, 8), torch.tensor([0, 300, 600, 999])
    temb = torch.randn(4, net.temb.dense[1].out_features)
    blocks = [m for m in net.modules() if isinstance(m, (unet.ResnetBlock, unet.AttnBlock))]
    with torch.no_grad():
        assert net(x, t).abs().max() < 1e-3                  # PyTorch's default init answers O(0.1)
        assert small()(x, t).abs().max() > 1e-2
        for block in blocks:
            if isinstance(block, unet.AttnBlock):
                h = torch.randn(4, block.proj_out.in_channels, 4, 4)
                torch.testing.assert_close(block(h), h, atol=1e-4, rtol=0)
            else:
                h = torch.randn(4, block.conv1.in_channels, 4, 4)
                skip = block.nin_shortcut(h) if hasattr(block, "nin_shortcut") else h
                torch.testing.assert_close(block(h, temb), skip, atol=1e-4, rtol=0)
    assert {hasattr(b, "nin_shortcut") for b in blocks if isinstance(b, unet.ResnetBlock)} == {True, False}   # both kinds
    tiny = 0
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach().double()
            k = w[0, 0].numel() if w.ndim == 4 else 1
            glorot = 2 / ((w.shape[0] + w.shape[1]) * k)
            mean_sq = float(w.pow(2).mean())
            want = glorot * (1e-10 if mean_sq < 1e-6 * glorot else 1.0)
            tiny += mean_sq < 1e-6 * glorot
            assert abs(mean_sq - want) < 5 * want * math.sqrt(0.8 / w.numel())   # SE of a uniform sample's variance
            assert not m.bias.any()
    assert tiny == len(blocks) + 1                           # one per residual and attention block, and conv_out
