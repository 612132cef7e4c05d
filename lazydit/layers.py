"""LazyDiT's lazy layers: one Linear(hidden, 1, bias=False) per step x block x branch.

Shi et al., "LazyDiT: Lazy Learning for the Acceleration of Diffusion Transformers"
(AAAI 2025, https://arxiv.org/abs/2412.12444). The score of branch k of block b at step
index i is sigmoid(sum over tokens and channels of w[i, b, k] . h), h the branch's
modulated input; the branch is computed when the score reaches the threshold and its
cached output is reused otherwise. The weights live in one (depth, 2, hidden) parameter per
step index: a training iteration uses exactly one step index, so the parameters an
iteration does not touch keep grad None and AdamW (elementwise, no weight decay) skips
them, moments and step count included: the same optimisation as the official
S x depth x 2 separate `nn.Linear(hidden, 1, bias=False)` layers.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from harness.methods import BRANCHES

DEFAULT_THRESHOLD = 0.5  # sigmoid(0): zero-initialised layers compute everything


class LazyLayers(nn.Module):
    """The lazy-layer weights w (S, depth, 2, hidden), zero-initialised (every score 0.5: compute)."""

    def __init__(self, num_steps: int, depth: int, hidden_size: int):
        super().__init__()
        self.per_step = nn.ParameterList(
            [nn.Parameter(torch.zeros(depth, len(BRANCHES), hidden_size)) for _ in range(num_steps)]
        )

    @property
    def weight(self) -> torch.Tensor:
        """All weights (S, depth, 2, hidden), detached (a copy: write with `copy_weight_`)."""
        return torch.stack([p.detach() for p in self.per_step])

    @torch.no_grad()
    def copy_weight_(self, weight: torch.Tensor) -> "LazyLayers":
        """Overwrites all weights with `weight` (S, depth, 2, hidden) (broadcastable)."""
        weight = torch.as_tensor(weight).expand(self.num_steps, self.depth, len(BRANCHES), self.hidden_size)
        for p, w in zip(self.per_step, weight):
            p.copy_(w)
        return self

    @property
    def num_steps(self) -> int:
        return len(self.per_step)

    @property
    def depth(self) -> int:
        return self.per_step[0].shape[0]

    @property
    def hidden_size(self) -> int:
        return self.per_step[0].shape[2]

    def logits(self, h: torch.Tensor, step: int, block: int, kind: int) -> torch.Tensor:
        """(N,) pre-sigmoid scores of branch inputs h (N, T, D): the linear map summed over tokens and channels."""
        w = self.per_step[step][block, kind].to(h.dtype)  # (D,)
        return (h @ w).sum(dim=-1)  # (N, T) -> (N,)

    def scores(self, h: torch.Tensor, step: int, block: int, kind: int) -> torch.Tensor:
        """(N,) LazyDiT scores in (0, 1); the branch is computed where score >= threshold."""
        return torch.sigmoid(self.logits(h, step, block, kind))

    def check_fits(self, num_steps: int, depth: int, hidden_size: int) -> None:
        """Raises one line when these layers were made for another step budget or model."""
        want = (num_steps, depth, hidden_size)
        have = (self.num_steps, self.depth, self.hidden_size)
        if want != have:
            raise ValueError(
                f"lazy layers for (steps, depth, hidden) = {have} do not fit a run with {want}; "
                "train or load layers for this model and step budget"
            )
