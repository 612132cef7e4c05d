"""The fused CPU score: the official LazyDiT logit in one pass, the same decisions as the eager ops."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from harness import sample
from harness.methods import BranchInput
from harness.models.large_dit import RMSNorm
from lazydit import fused_score
from lazydit.fused_score import applies, layernorm_score_logits
from lazydit.layers import LazyLayers
from lazydit.policy import LazyDiTPolicy

pytestmark = pytest.mark.usefixtures("one_thread")


def branch_input(n: int = 6, tokens: int = 5, width: int = 24, norm: nn.Module | None = None) -> BranchInput:
    """A DiT-like branch input; shift and scale are column slices of one adaLN output, as in the model."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, tokens, width, generator=gen) * 3 + 1
    ada = torch.randn(n, 6 * width, generator=gen)
    norm = norm if norm is not None else nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
    return BranchInput(x, norm, ada[:, :width], ada[:, width: 2 * width])


def eager_logits(inp: BranchInput, w: torch.Tensor) -> torch.Tensor:
    return (inp() @ w).sum(dim=-1)


@pytest.fixture
def built():
    if fused_score._extension() is None:
        pytest.skip("no C++ toolchain here: the policy uses the eager ops (tested below)")


def test_the_fused_logit_equals_the_eager_one_up_to_rounding(built):
    inp, w = branch_input(), torch.randn(24, generator=torch.Generator().manual_seed(1))
    fused = layernorm_score_logits(inp, w)
    torch.testing.assert_close(fused, eager_logits(inp, w), rtol=1e-5, atol=1e-4)


def test_fused_and_eager_scores_make_the_same_decisions_and_images(built, tiny_latent_dit):
    layers = LazyLayers(6, tiny_latent_dit.depth, tiny_latent_dit.config.hidden_size)
    gen = torch.Generator().manual_seed(2)
    layers.copy_weight_(torch.randn(layers.weight.shape, generator=gen) * 0.05)  # scores on both sides of 0.5
    run = lambda score: sample(tiny_latent_dit, [1, 2, 3, 4], [0, 1, 2, 3], steps=6, decode=False,  # noqa: E731
                               method=LazyDiTPolicy.from_layers(layers, score=score))
    fused, eager = run("auto"), run("eager")
    assert 0 < fused.decisions.branch.mean() < 1
    assert torch.equal(fused.decisions.branch, eager.decisions.branch)
    assert torch.equal(fused.latents, eager.latents)


@pytest.mark.parametrize("case", ["rmsnorm", "bfloat16", "affine"])
def test_inputs_the_kernel_does_not_cover_fall_back_to_eager_ops(case):
    norm = {"rmsnorm": RMSNorm(24), "affine": nn.LayerNorm(24)}.get(case)
    inp = branch_input(norm=norm)
    w = torch.randn(24)
    if case == "bfloat16":
        inp.x = inp.x.bfloat16()
    assert not applies(inp, w) and layernorm_score_logits(inp, w) is None


def test_a_plain_callable_input_is_scored_with_eager_ops():
    assert layernorm_score_logits(lambda: torch.ones(2, 3, 4), torch.ones(4)) is None


def test_a_failed_build_warns_once_and_leaves_the_eager_path(monkeypatch):
    import torch.utils.cpp_extension as cpp

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no c++ compiler")

    monkeypatch.setattr(cpp, "load_inline", no_compiler)
    fused_score._extension.cache_clear()
    try:
        with pytest.warns(UserWarning, match="no c\\+\\+ compiler"):
            assert layernorm_score_logits(branch_input(), torch.randn(24)) is None
    finally:
        fused_score._extension.cache_clear()


def test_an_unknown_score_mode_is_refused_naming_the_accepted_ones():
    with pytest.raises(ValueError, match="auto, eager"):
        LazyDiTPolicy.from_layers(LazyLayers(2, 1, 4), score="triton")
