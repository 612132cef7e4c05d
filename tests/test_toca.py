"""ToCa against the official DiT-ToCa: the step typing and fresh-token counts (Sim facts for DDIM-50 at depth 28),
golden fixtures from the official code (typing, counts, every row's selected tokens, latents), and the two
contract additions it needs (attention probabilities on request, a branch input of a token subset)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.toca import ToCaPolicy, fresh_ratio, fresh_tokens, probabilities_needed, spatial_bonus, toca_plan
from conftest import randomize
from harness import build_model, sample
from harness.methods import BranchInput, attention_probs, create_policy

GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "toca"
ARGS = ("fresh_threshold", "fresh_ratio", "ratio_scheduler", "soft_fresh_weight", "force_fresh", "cache_type")


# ---- step typing and counts, without a model ------------------------------------------

def test_ddim50_typing_matches_the_reference_sim():
    full, fresh = toca_plan(ToCaPolicy.Config(), num_steps=50, depth=28, num_tokens=256)
    assert [i for i in reversed(range(50)) if full[i, 1:].all()] == [49, 44, 40, 36, 30, 27, 24, 21, 18, 16, 14, 12, 10,
                                                                   8, 6, 4, 2, 0]
    mixed = [i for i in reversed(range(50)) if full[i, 0] and not full[i, 1:].any()]
    assert mixed == [45, 32]  # block 0 decides with the previous full step's interval
    assert (full[:, 1:].all(1) | ~full[:, 1:].any(1)).all()  # blocks 1..27 always agree
    assert int(full.sum()) == 506 and int((~full).sum()) == 894
    assert fresh[full].eq(0).all() and fresh[38:].eq(0).all() and fresh[37].gt(0).all()  # step factor <= 0 for i >= 37.5: no fresh tokens


@pytest.mark.parametrize("step, expected", [(30, (21, 26, 32)), (20, (50, 62, 75)), (10, (78, 97, 118)),
                                            (1, (104, 129, 156))])
def test_ddim50_fresh_token_counts_match_the_reference(step, expected):
    counts = tuple(fresh_tokens(fresh_ratio("ToCa-ddim50", 0.07, step, 50, layer, 28), 256) for layer in (0, 13, 27))
    assert counts == expected


def test_layer_factor_generalises_l_over_27_as_l_over_depth_minus_one():
    assert fresh_ratio("ToCa-ddim50", 0.07, 10, 50, 27, 28) == pytest.approx(0.07 * 1.2 * 2.2 * 2.5)
    assert fresh_ratio("ToCa-ddim50", 0.07, 10, 50, 5, 6) == fresh_ratio("ToCa-ddim50", 0.07, 10, 50, 27, 28)
    assert fresh_ratio("ToCa-ddpm250", 0.07, 10, 50, 0, 6) == pytest.approx(0.07 * 1.8 * (1.4 - 0.8 * 10 / 50) * 2.5)


def test_fresh_ratio_zero_with_threshold_one_is_all_full_and_needs_no_probabilities():
    full, fresh = toca_plan(ToCaPolicy.Config(fresh_threshold=1, fresh_ratio=0.0), 50, 28, 256)
    assert full.all() and not probabilities_needed(full, fresh).any()


def test_probabilities_are_kept_only_where_a_later_toca_block_selects():
    full = torch.tensor([[True], [False], [True], [False], [True]])  # step index 0 (last) .. 4 (first)
    fresh = torch.tensor([[0], [3], [0], [0], [0]])
    assert probabilities_needed(full, fresh).flatten().tolist() == [False, False, True, False, False]


@pytest.mark.parametrize("args, bad", [({"ratio_scheduler": "linear"}, "'linear'"), ({"cache_type": "random"}, "'random'"),
                                       ({"force_fresh": "sometimes"}, "'sometimes'"), ({"fresh_threshold": 0}, "0")])
def test_unsupported_arguments_fail_with_one_line(args, bad):
    with pytest.raises(ValueError, match=bad):
        create_policy("toca", args)


def test_spatial_bonus_lifts_the_best_token_of_each_2x2_cell():
    score = torch.arange(16.0).view(1, 16)  # 4x4 grid: the best of each cell is its bottom-right token
    bonus = spatial_bonus(score) - score
    assert bonus.view(4, 4)[1::2, 1::2].flatten().tolist() == pytest.approx([0.6 * s for s in (5, 7, 13, 15)])
    assert bonus.count_nonzero() == 4


# ---- against the official code ----------------------------------------------------------

@pytest.mark.parametrize("name", ["ddim50", "ddpm250-20"])
def test_matches_the_official_dit_toca(name, monkeypatch, one_thread):
    golden = torch.load(GOLDEN / f"{name}.pt", weights_only=True)
    c = golden["config"]
    model = randomize(build_model("DiT-S/2", image_size=c["image_size"], depth=c["depth"], hidden_size=c["hidden"],
                                  num_heads=c["heads"], num_classes=10), seed=c["seed"], std=c["std"])
    calls = []
    tokens = BranchInput.tokens
    monkeypatch.setattr(BranchInput, "tokens", lambda self, index: calls.append(index.clone()) or tokens(self, index))
    out = sample(model, golden["labels"].tolist(), golden["seeds"].tolist(), steps=c["steps"], cfg_scale=1.5,
                 method="toca", method_args={k: c[k] for k in ARGS}, noise=golden["noise"], decode=False,
                 batch_invariant=False)  # the official batch: 2n rows
    branch = out.decisions.branch  # (S, depth, 2, B)
    full = golden["full"]
    T = model.num_tokens
    assert torch.equal(branch[:, :, 0].eq(1).all(-1), full) and torch.equal(branch[:, :, 0].eq(0).all(-1), ~full)
    assert torch.equal(torch.where(full, 0, (branch[:, :, 1, 0] * T).round().long()), golden["fresh_count"].long())

    slots = [(i, l) for i in reversed(range(c["steps"])) for l in range(c["depth"]) if golden["fresh_count"][i, l] > 0]
    assert len(calls) == len(slots)
    selected = torch.zeros(*full.shape, branch.shape[-1], T, dtype=torch.bool)
    for (i, l), index in zip(slots, calls):
        selected[i, l].scatter_(1, index, True)
    assert torch.equal(selected, torch.from_numpy(np.unpackbits(golden["selected"].numpy(), axis=-1)).bool())

    reference = golden["latents"]
    assert (out.latents - reference).abs().max() <= 1e-5 * reference.abs().max()


# ---- the contract additions ---------------------------------------------------------------

def large_dit() -> torch.nn.Module:
    return randomize(build_model("Large-DiT-600M", image_size=64, depth=2, hidden_size=64, num_heads=4, multiple_of=16,
                                 num_classes=10), std=0.2)


@pytest.mark.parametrize("family", ["dit", "large-dit"])
def test_attention_offers_probabilities_beside_the_same_output(family, tiny_latent_dit):
    model = tiny_latent_dit if family == "dit" else large_dit()
    seen = []

    class Probe(ToCaPolicy):
        def branch(self, block, kind, fn, make_h):
            if kind == 0:
                h = make_h()
                out, probs = attention_probs(fn)(h)
                seen.append((fn(h), out, probs))
            return fn(make_h())

    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        model(x, torch.tensor([10, 500]), torch.tensor([1, 2]), Probe())
    assert len(seen) == model.depth
    for fused, out, probs in seen:
        assert probs.shape == (2, 4, 16, 16)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 16))
        torch.testing.assert_close(out, fused, rtol=1e-5, atol=1e-5)


def test_a_plain_attention_function_has_no_probabilities():
    with pytest.raises(NotImplementedError, match="forward_with_probs"):
        attention_probs(torch.clone)


def test_branch_input_tokens_equal_the_gathered_full_input():
    gen = torch.Generator().manual_seed(0)
    x, shift, scale = torch.randn(3, 16, 8, generator=gen), torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen)
    h = BranchInput(x, torch.nn.LayerNorm(8, elementwise_affine=False), shift, scale)
    index = torch.stack([torch.randperm(16, generator=gen)[:5] for _ in range(3)])
    torch.testing.assert_close(h.tokens(index), h().gather(1, index[..., None].expand(-1, -1, 8)), rtol=0, atol=1e-6)


def test_log_and_overhead_follow_the_plan(tiny_latent_dit, one_thread):
    out = sample(tiny_latent_dit, [1, 2], [3, 4], steps=10, cfg_scale=1.5, method="toca", decode=False)
    full, fresh = toca_plan(ToCaPolicy.Config(), 10, tiny_latent_dit.depth, 16)
    branch = out.decisions.branch
    assert torch.equal(branch[:, :, 0], full[..., None].float().expand_as(branch[:, :, 0]))
    assert torch.equal(branch[:, :, 1], torch.where(full, 1.0, fresh / 16)[..., None].expand_as(branch[:, :, 1]))
    assert out.decisions.block.eq(1).all()  # adaLN runs in every block
    scored = (fresh > 0).any(1) | probabilities_needed(full, fresh).any(1)  # steps that select or keep scores
    assert fresh.sum() > 0 and torch.equal(out.decisions.overhead_macs.gt(0).all(1), scored)


def test_a_non_square_token_grid_is_refused():
    policy = create_policy("toca")
    model = build_model("DiT-S/2", image_size=64, depth=1, hidden_size=32, num_heads=2, num_classes=10)
    from harness.sampling import run_info
    from harness.diffusion import Diffusion
    info = run_info(model, Diffusion(10), 2, True, torch.device("cpu"))
    with pytest.raises(ValueError, match="12 tokens"):
        policy.start(type(info)(**{**info.__dict__, "num_tokens": 12}))


def test_runs_on_large_dit(one_thread):
    model = large_dit()
    run = lambda method, args=None: sample(model, [1, 2], [3, 4], steps=10, cfg_scale=1.5, method=method,
                                           method_args=args, decode=False)
    full = run("toca", {"fresh_threshold": 1, "fresh_ratio": 0.0})
    assert torch.equal(full.latents, run("ddim").latents)
    typical = run("toca", {"fresh_threshold": 2, "fresh_ratio": 0.2})
    assert typical.latents.isfinite().all() and 0 < typical.decisions.lazy_ratio()["all"] < 1
