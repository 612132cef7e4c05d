"""Large-DiT (Alpha-VLLM's DiT-Llama): the published maths, the hook contract, deterministic sampling."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize
from harness import build_model, sample
from harness.diffusion import Diffusion, model_output_with_cfg
from harness.methods import ATTN, MLP, Policy
from harness.methods import modulate

TINY = dict(image_size=64, depth=2, hidden_size=64, num_heads=4, multiple_of=16, num_classes=10)


def tiny(**overrides) -> torch.nn.Module:
    """Random weights everywhere; norm scales near 1 so that q.k logits are O(1) and RoPE matters."""
    model = randomize(build_model("Large-DiT-600M", **{**TINY, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)
    return model


@pytest.fixture
def tiny_large_dit() -> torch.nn.Module:
    """A 4-channel latent Large-DiT at 8x8 latents (16 tokens)."""
    return tiny()


def inputs(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=gen), torch.tensor([999, 500, 3][:n]), torch.tensor([1, 7, 10][:n])


def published_forward(model, x, t, y):
    """DiT_Llama.forward written out from the maths of Alpha-VLLM's models.py, from the raw parameters.

    Complex-number RoPE over the flattened token index, RMSNorm and LayerNorm by formula, softmax
    attention by hand: nothing here calls the model's modules.
    """
    P, cfg = dict(model.named_parameters()), model.config
    lin = lambda v, name, bias=True: v @ P[name + ".weight"].T + (P[name + ".bias"] if bias else 0)  # noqa: E731
    rms = lambda v, w: v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w  # noqa: E731
    N, C, H, W = x.shape
    p, D, heads = cfg.patch_size, cfg.hidden_size, cfg.num_heads
    kv_heads, hd = cfg.num_kv_heads or heads, D // heads
    T = (H // p) * (W // p)
    tokens = x.reshape(N, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(N, T, C * p * p)
    h = lin(tokens, "x_embedder")
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = t[:, None].float() * freqs[None]
    t_emb = lin(F.silu(lin(torch.cat([torch.cos(args), torch.sin(args)], -1), "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = t_emb + P["y_embedder.embedding_table.weight"][y]
    inv = 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd)
    cis = torch.polar(torch.ones(T, hd // 2), torch.outer(torch.arange(T).float(), inv))  # (T, hd / 2)

    def rotate(v):  # (N, T, heads, hd)
        z = torch.view_as_complex(v.reshape(*v.shape[:-1], -1, 2).contiguous()) * cis[None, :, None]
        return torch.view_as_real(z).flatten(3)

    for i in range(cfg.depth):
        pre = f"layers.{i}."
        s1, sc1, g1, s2, sc2, g2 = lin(F.silu(c), pre + "adaLN_modulation.1").chunk(6, dim=1)
        a = modulate(rms(h, P[pre + "attention_norm.weight"]), s1, sc1)
        norm = lambda v, which: F.layer_norm(v, v.shape[-1:], P[pre + which + ".weight"], P[pre + which + ".bias"])  # noqa: E731
        q = norm(lin(a, pre + "attention.wq", False), "attention.q_norm")
        k = norm(lin(a, pre + "attention.wk", False), "attention.k_norm")
        v = lin(a, pre + "attention.wv", False).reshape(N, T, kv_heads, hd)
        q, k = rotate(q.reshape(N, T, heads, hd)), rotate(k.reshape(N, T, kv_heads, hd))
        k, v = k.repeat_interleave(heads // kv_heads, 2), v.repeat_interleave(heads // kv_heads, 2)
        weights = torch.softmax(torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(hd), dim=-1)
        attn = torch.einsum("nhqk,nkhd->nqhd", weights, v).reshape(N, T, D)
        h = h + g1.unsqueeze(1) * lin(attn, pre + "attention.wo", False)
        m = modulate(rms(h, P[pre + "ffn_norm.weight"]), s2, sc2)
        ff = F.silu(lin(m, pre + "feed_forward.w1", False)) * lin(m, pre + "feed_forward.w3", False)
        h = h + g2.unsqueeze(1) * lin(ff, pre + "feed_forward.w2", False)
    shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    out = lin(modulate(F.layer_norm(h, (D,), eps=1e-6), shift, scale), "final_layer.linear")
    g, cout = H // p, model.out_channels
    out = out.reshape(N, g, g, p, p, cout).permute(0, 5, 1, 3, 2, 4)
    return out.reshape(N, cout, H, W)


def hook_free_forward(model, x, t, y):
    """The model's own modules chained without any policy (the plain DiT_Llama.forward)."""
    x, c = model.embed(x, t, y)
    rope = model.rope(x.shape[1], x.device)
    for layer in model.layers:
        s1, sc1, g1, s2, sc2, g2 = layer.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * layer.attention(modulate(layer.attention_norm(x), s1, sc1), rope)
        x = x + g2.unsqueeze(1) * layer.feed_forward(modulate(layer.ffn_norm(x), s2, sc2))
    return model.unpatchify(model.final_layer(x, c))


@pytest.mark.parametrize("num_kv_heads", [None, 2])
def test_forward_equals_the_published_maths(num_kv_heads):
    model = tiny(num_kv_heads=num_kv_heads)
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), published_forward(model, x, t, y), rtol=1e-4, atol=1e-6)


def test_token_order_matters_only_through_rope(tiny_large_dit):
    x, t, y = inputs()
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens, c = tiny_large_dit.embed(x, t, y)
        permuted_after = Policy().run_blocks(tiny_large_dit, tokens, c)[:, perm]
        permuted_before = Policy().run_blocks(tiny_large_dit, tokens[:, perm], c)
        assert not torch.allclose(permuted_after, permuted_before, atol=1e-3)
        tiny_large_dit.rope(16, x.device)[1].zero_()  # sin = 0, cos = 1: no rotation, a permutation-equivariant model
        tiny_large_dit.rope(16, x.device)[0].fill_(1.0)
        permuted_after = Policy().run_blocks(tiny_large_dit, tokens, c)[:, perm]
        permuted_before = Policy().run_blocks(tiny_large_dit, tokens[:, perm], c)
        torch.testing.assert_close(permuted_after, permuted_before, rtol=1e-5, atol=1e-6)


def test_ddim_through_the_hooks_equals_a_hook_free_loop(tiny_large_dit):
    model, steps, scale = tiny_large_dit, 6, 4.0
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([1, 2, 3, 10, 10, 10])
    diffusion = Diffusion(steps)
    x = torch.cat([z, z])
    plain = lambda x_, t_, y_, policy: hook_free_forward(model, x_, t_, y_)  # noqa: E731
    with torch.no_grad():
        for index in reversed(range(steps)):
            t = torch.full((6,), diffusion.timestep_map[index])
            x = diffusion.ddim_step(model_output_with_cfg(plain, x, t, y, scale, 3, Policy()), x, index)
    hooked = sample(model, [1, 2, 3], [0, 0, 0], steps=steps, cfg_scale=scale, noise=z, decode=False,
                    batch_invariant=False)
    assert torch.equal(hooked.latents, x[:3])


class RecordBranches(Policy):
    """Computes everything and records which (step, block, branch) the model asked for."""

    def start(self, run):
        super().start(run)
        self.calls = []

    def branch(self, block, kind, fn, make_h):
        h = make_h()
        self.calls.append((self.step, block, kind, tuple(h.shape)))
        return fn(h)


def test_every_branch_of_every_block_goes_through_the_policy(tiny_large_dit):
    policy = RecordBranches()
    sample(tiny_large_dit, [1, 2], [0, 1], steps=3, cfg_scale=1.5, decode=False, method=policy)
    expected = [(s, b, k, (16, 16, 64)) for s in (2, 1, 0) for b in range(2) for k in (ATTN, MLP)]
    assert policy.calls == expected  # batch padded to 16 rows, 16 tokens, hidden 64


def test_sampling_is_deterministic_and_batch_size_invariant(tiny_large_dit):
    first = sample(tiny_large_dit, [1, 2, 3], [5, 6, 7], steps=5, decode=False).latents
    again = sample(tiny_large_dit, [1, 2, 3], [5, 6, 7], steps=5, decode=False).latents
    one_by_one = sample(tiny_large_dit, [1, 2, 3], [5, 6, 7], steps=5, decode=False, batch_size=1).latents
    assert torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert torch.equal(first, one_by_one)


def test_default_method_logs_every_branch_as_computed(tiny_large_dit):
    out = sample(tiny_large_dit, [1, 2], [0, 1], steps=4, cfg_scale=1.5, decode=False)
    assert out.decisions.branch.shape == (4, 2, 2, 4)  # steps, depth, branches, 2 images x CFG halves
    assert bool((out.decisions.branch == 1).all())


def test_bfloat16_autocast_runs_and_stays_close(tiny_large_dit):
    full = sample(tiny_large_dit, [1], [0], steps=3, decode=False).latents
    half = sample(tiny_large_dit, [1], [0], steps=3, decode=False, dtype=torch.bfloat16).latents
    assert half.dtype == torch.float32
    assert ((half - full).norm() / full.norm()).item() < 0.05


def test_spec_says_latent_model_decoded_with_sd_vae_ft_ema(tiny_large_dit):
    spec = tiny_large_dit.spec
    assert (spec.family, spec.vae, spec.latent_shape, spec.num_classes) == ("large-dit", "sd-vae-ft-ema", (4, 8, 8), 10)
    assert (tiny_large_dit.depth, tiny_large_dit.num_tokens, tiny_large_dit.config.hidden_size) == (2, 16, 64)


@pytest.mark.parametrize("size", ["600M", "3B", "7B"])
def test_paper_and_alpha_vllm_names_build_the_same_architecture(size):
    with torch.device("meta"):
        paper = build_model(f"Large-DiT-{size}").state_dict()
        official = build_model(f"DiT_Llama_{size}_patch2").state_dict()
    assert {k: v.shape for k, v in paper.items()} == {k: v.shape for k, v in official.items()}


def test_600m_has_alpha_vllm_widths():
    with torch.device("meta"):
        model = build_model("Large-DiT-600M")
    state = model.state_dict()
    assert state["layers.15.feed_forward.w1.weight"].shape == (4096, 1536)  # int(2 * 4 * 1536 / 3) rounded to 256
    assert state["layers.0.adaLN_modulation.1.weight"].shape == (6 * 1536, 1024)  # conditioning width min(D, 1024)
    assert "layers.16.attention.wq.weight" not in state


def test_fresh_model_is_adaln_zero():
    model = build_model("Large-DiT-600M", **TINY)
    x, t, y = inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, y), torch.zeros(3, 8, 8, 8))


def test_impossible_head_split_is_rejected():
    with pytest.raises(ValueError, match="hidden_size=64, num_heads=5"):
        build_model("Large-DiT-600M", **{**TINY, "num_heads": 5})


def test_unknown_override_is_rejected_by_name():
    with pytest.raises(ValueError, match="unknown override.*'n_layers'.*accepted:.*depth"):
        build_model("Large-DiT-600M", n_layers=2)
