"""Large-DiT (Alpha-VLLM's DiT-Llama, the 600M / 3B / 7B models of the LazyDiT paper) with method hooks.

State-dict keys and shapes equal Alpha-VLLM's `Large-DiT-ImageNet/models.py` (as copied into
LazyDiT's `models_largedit.py`, qk_norm on, as in the released checkpoints), so the published
files load with `strict=True`. It runs without flash-attn or apex: attention is torch SDPA and
RMSNorm is `F.rms_norm`. As in `harness.models.dit`, each block asks the attached policy for
its two residual branches (attention, SwiGLU MLP) and adds the gated, ungated branch output.

Differences from DiT worth knowing: patches are embedded by a Linear on (C, p, p)-ordered
patch vectors; positions enter only through rotary embeddings over the flattened token index
(1-D, row-major, a table of 4096 positions), so the weights fit any image size up to 1024 px;
the conditioning vector (timestep + label embedding) has min(hidden, 1024) channels.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.methods import ATTN, MLP, COMPUTE_ALL, BranchInput, Policy
from harness.models import MODELS, ModelSpec
from harness.models.dit import FinalLayer, LabelEmbedder, TimestepEmbedder

VAE_DOWNSAMPLE = 8
DEFAULT_VAE = "sd-vae-ft-ema"  # Large-DiT's sample.py and LazyDiT's sampling scripts
MAX_ADALN = 1024  # the conditioning width: min(hidden_size, 1024)


#################################################################################
#                        Normalisation and Rotary Embedding                     #
#################################################################################

class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale, computed in float32 (apex FusedRMSNorm's maths)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).type_as(x)


def rope_table(head_dim: int, num_positions: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (num_positions, head_dim / 2) of the angles pos * theta^(-2k / head_dim), float32."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, device="cpu")[: head_dim // 2].float() / head_dim)
    angles = torch.outer(torch.arange(num_positions, device="cpu"), freqs).float()  # (T, head_dim / 2)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates channel pairs (2k, 2k+1) of x (N, T, H, head_dim) by the angles of each token, in float32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # (N, T, H, head_dim / 2, 2)
    re, im = pairs.unbind(-1)
    cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, head_dim / 2)
    rotated = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)
    return rotated.flatten(-2)  # (N, T, H, head_dim)


#################################################################################
#                                 Core Large-DiT                                #
#################################################################################

class Attention(nn.Module):
    """Bidirectional multi-head attention: bias-free projections, LayerNorm on q and k, RoPE, SDPA."""

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None, qk_norm: bool):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        self.head_dim = dim // num_heads
        self.wq = nn.Linear(dim, num_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, self.num_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, self.num_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(num_heads * self.head_dim, dim, bias=False)
        if qk_norm:
            self.q_norm = nn.LayerNorm(num_heads * self.head_dim)
            self.k_norm = nn.LayerNorm(self.num_kv_heads * self.head_dim)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, T, _ = x.shape
        out = F.scaled_dot_product_attention(*self.heads(x, rope))
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))

    def forward_with_probs(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The output through a materialised softmax and the attention probabilities (N, heads, T, T)."""
        B, T, _ = x.shape
        q, k, v = self.heads(x, rope)
        probs = ((q * self.head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # (N, heads, T, T)
        return self.wo((probs @ v).transpose(1, 2).reshape(B, T, -1)), probs

    def heads(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """q, k, v (N, heads, T, head_dim): projected, q/k-normed, rotated, kv heads repeated."""
        B, T, _ = x.shape
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        dtype = q.dtype  # q/k norms may upcast under autocast; the official code casts back after RoPE
        q = self.q_norm(q).view(B, T, self.num_heads, self.head_dim)
        k = self.k_norm(k).view(B, T, self.num_kv_heads, self.head_dim)
        v = v.view(B, T, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, *rope).to(dtype), apply_rope(k, *rope).to(dtype)
        q, k, v = (a.transpose(1, 2) for a in (q, k, v))  # (N, heads, T, head_dim)
        if self.num_kv_heads != self.num_heads:  # grouped-query attention: each kv head serves n_rep query heads
            n_rep = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        return q, k, v


class RotaryAttention:
    """A block's attention with this forward pass's rotary table bound: the `fn` its policy sees."""

    __slots__ = ("attention", "rope")

    def __init__(self, attention: Attention, rope: tuple[torch.Tensor, torch.Tensor]):
        self.attention, self.rope = attention, rope

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, self.rope)

    def forward_with_probs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attention.forward_with_probs(x, self.rope)


def ffn_hidden_size(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """LLaMA's SwiGLU width: 2/3 of 4 * dim, optionally scaled, rounded up to a multiple of `multiple_of`."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class FeedForward(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """A LLaMA block with adaLN-Zero conditioning: h = h + gate * f(modulate(rmsnorm(h)))."""

    def __init__(self, config: "LargeDiTConfig"):
        super().__init__()
        dim = config.hidden_size
        self.attention = Attention(dim, config.num_heads, config.num_kv_heads, config.qk_norm)
        self.feed_forward = FeedForward(dim, ffn_hidden_size(dim, config.multiple_of, config.ffn_dim_multiplier))
        self.attention_norm = RMSNorm(dim, eps=config.norm_eps)
        self.ffn_norm = RMSNorm(dim, eps=config.norm_eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(min(dim, MAX_ADALN), 6 * dim, bias=True))

    def branch_input(self, kind: int, x: torch.Tensor, c: torch.Tensor) -> BranchInput:
        """Branch `kind`'s input for residual stream x, uncomputed (its modulation is computed here)."""
        shift, scale = self.adaLN_modulation(c).chunk(6, dim=1)[3 * kind: 3 * kind + 2]
        return BranchInput(x, self.attention_norm if kind == ATTN else self.ffn_norm, shift, scale)

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                policy: Policy, index: int) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        attention = RotaryAttention(self.attention, rope)
        x = x + gate_msa.unsqueeze(1) * policy.branch(index, ATTN, attention, BranchInput(x, self.attention_norm, shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * policy.branch(index, MLP, self.feed_forward, BranchInput(x, self.ffn_norm, shift_mlp, scale_mlp))
        return x


@dataclass(frozen=True)
class LargeDiTConfig:
    input_size: int = 32  # latent grid
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 4096  # Alpha-VLLM's `dim`
    depth: int = 32  # `n_layers`
    num_heads: int = 32  # `n_heads`
    num_kv_heads: int | None = None  # `n_kv_heads`; None: as many as query heads
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True
    qk_norm: bool = True  # the released ImageNet checkpoints were trained with it
    rope_theta: float = 10000.0
    max_positions: int = 4096  # the rotary table's length: at most this many tokens


class LargeDiT(nn.Module):
    """Large-DiT: a DiT whose blocks are LLaMA blocks (RMSNorm, RoPE, q/k norm, SwiGLU)."""

    def __init__(self, config: LargeDiTConfig):
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.out_channels = config.in_channels * 2 if config.learn_sigma else config.in_channels
        self.patch_size = config.patch_size
        self.num_classes = config.num_classes
        dim, cond = config.hidden_size, min(config.hidden_size, MAX_ADALN)

        self.x_embedder = nn.Linear(config.patch_size**2 * config.in_channels, dim, bias=True)
        self.t_embedder = TimestepEmbedder(cond)
        self.y_embedder = LabelEmbedder(config.num_classes, cond, config.class_dropout_prob)
        self.layers = nn.ModuleList([TransformerBlock(config) for _ in range(config.depth)])
        self.final_layer = FinalLayer(dim, config.patch_size, self.out_channels, cond_size=min(dim, MAX_ADALN))
        self._rope_cache: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Alpha-VLLM's training init: xavier linears, N(0, 0.02) embedders, zero biases, adaLN-Zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for layer in self.layers:
            nn.init.zeros_(layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.linear.weight)

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def num_tokens(self) -> int:
        return (self.config.input_size // self.patch_size) ** 2

    def rope(self, num_tokens: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary table's first `num_tokens` rows on `device`; float32 whatever the model dtype."""
        key = (num_tokens, device)
        if key not in self._rope_cache:
            cos, sin = rope_table(self.config.hidden_size // self.config.num_heads, self.config.max_positions,
                                  self.config.rope_theta)
            self._rope_cache[key] = (cos[:num_tokens].to(device), sin[:num_tokens].to(device))
        return self._rope_cache[key]

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, T, C * p * p), tokens row-major, each patch vector ordered (C, p, p)."""
        N, C, H, W = x.shape
        p = self.patch_size
        x = x.reshape(N, C, H // p, p, W // p, p)
        return x.permute(0, 2, 4, 1, 3, 5).flatten(-3).flatten(1, 2)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p * p * C) -> (N, C, H, W); output patch vectors are ordered (p, p, C), as in DiT."""
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens (N, T, D) and the conditioning vector c = t_emb + y_emb (N, min(D, 1024))."""
        x = self.x_embedder(self.patchify(x))
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        return x, c

    def run_block(self, index: int, x: torch.Tensor, c: torch.Tensor, policy: Policy) -> torch.Tensor:
        return self.layers[index](x, c, self.rope(x.shape[1], x.device), policy, index)

    def branch_input(self, index: int, kind: int, x: torch.Tensor, c: torch.Tensor) -> BranchInput:
        return self.layers[index].branch_input(kind, x, c)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, policy: Policy = COMPUTE_ALL) -> torch.Tensor:
        """x: (N, C, H, W) latents, t: (N,) diffusion timesteps, y: (N,) class labels."""
        return policy.forward(self, x, t, y, lambda: self.compute(x, t, y, policy))

    def compute(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, policy: Policy) -> torch.Tensor:
        """The forward pass itself, the block stack run through the policy."""
        x, c = self.embed(x, t, y)
        x = policy.run_blocks(self, x, c)  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, p * p * out_channels)
        return self.unpatchify(x)  # (N, out_channels, H, W)


#################################################################################
#                                Large-DiT Configs                              #
#################################################################################

LargeDiT_models = {  # paper name -> (Alpha-VLLM name, architecture)
    "Large-DiT-600M": ("DiT_Llama_600M_patch2", dict(patch_size=2, hidden_size=1536, depth=16, num_heads=32)),
    "Large-DiT-3B": ("DiT_Llama_3B_patch2", dict(patch_size=2, hidden_size=3072, depth=32, num_heads=32)),
    "Large-DiT-7B": ("DiT_Llama_7B_patch2", dict(patch_size=2, hidden_size=4096, depth=32, num_heads=32)),
}
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(LargeDiTConfig) if f.name != "input_size")  # image_size sets it


def latent_size_for(name: str, image_size: int, config: LargeDiTConfig) -> int:
    """Checks that `image_size` fits the VAE, the patch grid and the rotary table; returns the latent size."""
    step = VAE_DOWNSAMPLE * config.patch_size
    largest = step * int(config.max_positions**0.5)
    if not isinstance(image_size, int) or image_size <= 0 or image_size % step or image_size > largest:
        raise ValueError(
            f"image_size={image_size!r} does not fit {name}: accepted: multiples of {step} up to {largest} "
            f"(VAE x{VAE_DOWNSAMPLE}, patch {config.patch_size}, {config.max_positions} rotary positions); "
            f"the released checkpoints are 256"
        )
    return image_size // VAE_DOWNSAMPLE


def make_config(name: str, arch: dict, overrides: dict) -> LargeDiTConfig:
    """The architecture with `overrides` applied; unknown fields and impossible head splits fail by name."""
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown override(s) {', '.join(map(repr, unknown))} for {name}; accepted: {', '.join(CONFIG_FIELDS)}"
        )
    config = LargeDiTConfig(**{**arch, **overrides})
    head_dim, rem = divmod(config.hidden_size, config.num_heads)
    if rem or head_dim % 2 or config.num_heads % (config.num_kv_heads or config.num_heads):
        raise ValueError(
            f"hidden_size={config.hidden_size}, num_heads={config.num_heads}, num_kv_heads={config.num_kv_heads} "
            f"do not fit {name}: hidden_size must split into heads of even width (RoPE) and kv heads must divide heads"
        )
    return config


def _large_dit_builder(name: str, arch: dict):
    def build(image_size: int = 256, vae: str = DEFAULT_VAE, **overrides) -> LargeDiT:
        config = make_config(name, arch, overrides)
        latent = latent_size_for(name, image_size, config)
        model = LargeDiT(dataclasses.replace(config, input_size=latent))
        model.spec = ModelSpec(name, image_size, latent, config.in_channels, config.num_classes, vae, "large-dit")
        return model

    return build


for _name, (_official, _arch) in LargeDiT_models.items():
    MODELS.register(_name)(_large_dit_builder(_name, _arch))
    MODELS.register(_official)(_large_dit_builder(_official, _arch))
