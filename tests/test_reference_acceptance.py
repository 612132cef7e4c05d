"""Acceptance: the model and the sampler equal facebookresearch/DiT's own code on random weights.

Skipped unless DIT_REFERENCE_DIR points at a checkout of https://github.com/facebookresearch/DiT
(its `models.py` and `diffusion/` are imported from there; `models.py` needs `timm`):

    git clone https://github.com/facebookresearch/DiT /tmp/DiT && pip install timm
    DIT_REFERENCE_DIR=/tmp/DiT pytest tests/test_reference_acceptance.py -s   # -s prints the max differences

Same weights and same initial noise must give the same latents as the reference's
`ddim_sample_loop(model.forward_with_cfg, ...)` / `p_sample_loop(...)` to fp32 tolerance.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch

from harness import build_model, sample
from harness.diffusion import Diffusion
from harness.sampling import SamplingLoop

REFERENCE_DIR = os.environ.get("DIT_REFERENCE_DIR")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.skipif(
    not REFERENCE_DIR,
    reason="set DIT_REFERENCE_DIR to a checkout of facebookresearch/DiT (and pip install timm) to compare with it",
)]

NUM_CLASSES = 10  # null label = 10
# DiT-S/2's block layout, narrowed and made shallow so that a 25-step loop takes a second on 2 cores.
SMALL = dict(patch_size=2, hidden_size=128, depth=2, num_heads=4)
LABELS = [1, 7, 3]
CFG_SCALE = 4.0
RTOL = 1e-5  # allowed max |ours - reference| per unit of max |reference|


# ---- the reference, imported under private names -------------------------------------

def _load(name: str, path: Path, package: bool = False) -> ModuleType:
    locations = [str(path.parent)] if package else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=locations)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ref() -> SimpleNamespace:
    """facebookresearch/DiT's `diffusion` package and `models` module."""
    root = Path(REFERENCE_DIR)
    missing = [p for p in ("models.py", "diffusion/__init__.py") if not (root / p).is_file()]
    if missing:
        pytest.fail(f"DIT_REFERENCE_DIR={REFERENCE_DIR} is not a facebookresearch/DiT checkout: missing {missing}")
    if importlib.util.find_spec("timm") is None:
        pytest.fail("the reference models.py imports timm: pip install timm")
    diffusion = _load("_dit_reference_diffusion", root / "diffusion" / "__init__.py", package=True)
    models = _load("_dit_reference_models", root / "models.py")
    return SimpleNamespace(create_diffusion=diffusion.create_diffusion, space_timesteps=diffusion.space_timesteps,
                           gd=sys.modules["_dit_reference_diffusion.gaussian_diffusion"], models=models)




def randomize_state(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values for every entry, adaLN, final layer and pos_embed included (DiT zero-inits some)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        fan_in = value[0].numel() if value.dim() > 1 else 25
        out[key] = torch.randn(value.shape, generator=gen) / fan_in**0.5
    return out


@pytest.fixture(scope="module")
def pair(ref) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, reference): the same small random-weight 4-channel latent DiT in both codebases."""
    ours = build_model("DiT-S/2", image_size=64, num_classes=NUM_CLASSES, **SMALL)
    theirs = ref.models.DiT(input_size=8, in_channels=4, num_classes=NUM_CLASSES, **SMALL)
    state = randomize_state(theirs.state_dict())
    theirs.load_state_dict(state, strict=True)
    ours.load_state_dict(state, strict=True)
    return ours.eval(), theirs.eval()


def assert_fp32_close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    scale = max(1.0, theirs.abs().max().item())
    diff = (ours - theirs).abs().max().item()
    print(f"\n  {what}: max |ours - reference| = {diff:.3g} (max |reference| = {scale:.3g})")
    assert diff <= RTOL * scale, f"{what}: max diff {diff:.3g} > {RTOL} x {scale:.3g}"


def start_noise(n: int = len(LABELS), seed: int = 5) -> torch.Tensor:
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def reference_batch(z: torch.Tensor, cfg: bool) -> tuple[torch.Tensor, dict]:
    """What DiT's sample.py feeds its loop: z twice with [labels, null] under CFG."""
    y = torch.tensor(LABELS)
    if not cfg:
        return z, dict(y=y)
    return torch.cat([z, z]), dict(y=torch.cat([y, torch.full_like(y, NUM_CLASSES)]), cfg_scale=CFG_SCALE)


# ---- (a) model -----------------------------------------------------------------------

def test_official_dit_s2_and_ours_accept_each_others_state_dicts(ref):
    ours = build_model("DiT-S/2", image_size=64, num_classes=NUM_CLASSES)
    theirs = ref.models.DiT_models["DiT-S/2"](input_size=8, num_classes=NUM_CLASSES)
    assert torch.equal(ours.pos_embed, theirs.pos_embed), "fixed sin-cos positional embedding differs"
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(randomize_state(theirs.state_dict(), seed=1), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = start_noise(4, seed=2)
    t, y = torch.tensor([0, 1, 500, 999]), torch.tensor([0, 9, 3, NUM_CLASSES])
    with torch.no_grad():
        assert_fp32_close(ours.eval()(x, t, y), theirs.eval()(x, t, y), "DiT-S/2 forward")


def test_forward_with_cfg_equals_the_reference(pair):
    ours, theirs = pair
    from harness.diffusion import model_output_with_cfg
    from harness.methods import COMPUTE_ALL

    x, kwargs = reference_batch(start_noise(), cfg=True)
    t = torch.full((len(x),), 333)
    with torch.no_grad():
        expected = theirs.forward_with_cfg(x, t, **kwargs)
        got = model_output_with_cfg(ours, x, t, kwargs["y"], CFG_SCALE, 3, COMPUTE_ALL)
    assert_fp32_close(got, expected, "forward_with_cfg")


# ---- (b) DDIM ------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [10, 25, "ddim20"])
def test_ddim_with_cfg_equals_reference_ddim_sample_loop(ref, pair, steps):
    ours, theirs = pair
    z = start_noise()
    got = sample(ours, LABELS, [0, 1, 2], steps=steps, cfg_scale=CFG_SCALE, noise=z, decode=False).latents
    x, kwargs = reference_batch(z, cfg=True)
    expected = ref.create_diffusion(str(steps)).ddim_sample_loop(
        theirs.forward_with_cfg, x.shape, x, clip_denoised=False, model_kwargs=kwargs, device="cpu")
    assert_fp32_close(got, expected[: len(z)], f"DDIM {steps} + CFG {CFG_SCALE}")


@pytest.mark.parametrize("steps", [10, "ddim20"])
def test_ddim_without_cfg_equals_reference_ddim_sample_loop(ref, pair, steps):
    ours, theirs = pair
    z = start_noise()
    got = sample(ours, LABELS, [0, 1, 2], steps=steps, cfg_scale=1.0, noise=z, decode=False).latents
    x, kwargs = reference_batch(z, cfg=False)
    expected = ref.create_diffusion(str(steps)).ddim_sample_loop(
        theirs.forward, x.shape, x, clip_denoised=False, model_kwargs=kwargs, device="cpu")
    assert_fp32_close(got, expected, f"DDIM {steps}, no CFG")


# ---- (c) DDPM and DDIM with eta > 0: same step noise in both ----------------------------

class _TorchFeedingNoise:
    """Stands in for `torch` inside the reference module: randn_like returns our recorded noise."""

    def __init__(self, noise: list[torch.Tensor]):
        self.queue, self.calls = list(noise), 0

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        # Our sampler draws no noise for the last step, whose noise the reference masks out.
        return self.queue.pop(0) if self.queue else torch.zeros_like(x)

    def __getattr__(self, name: str):
        return getattr(torch, name)


def run_recording_step_noise(monkeypatch, model, steps, cfg_scale, **kwargs):
    """Our latents and the step noise our sampler drew, cut to the reference's batch rows."""
    recorded, original = [], SamplingLoop.step_noise

    def recording(self, x, generators, padded):
        noise = original(self, x, generators, padded)
        recorded.append(noise)
        return noise

    monkeypatch.setattr(SamplingLoop, "step_noise", recording)
    n = len(LABELS)
    z = start_noise()
    got = sample(model, LABELS, [0, 1, 2], steps=steps, cfg_scale=cfg_scale, noise=z, decode=False, **kwargs).latents
    monkeypatch.undo()
    half = len(recorded[0]) // 2  # rows are [images + padding] (x2 under CFG)
    rows = [torch.cat([r[:n], r[half: half + n]]) if cfg_scale > 1 else r[:n] for r in recorded]
    return z, got, rows


@pytest.mark.parametrize("cfg_scale", [CFG_SCALE, 1.0])
def test_ddpm_equals_reference_p_sample_loop_given_the_same_step_noise(monkeypatch, ref, pair, cfg_scale):
    ours, theirs = pair
    steps = 10
    z, got, noise = run_recording_step_noise(monkeypatch, ours, steps, cfg_scale, sampler="ddpm")
    assert len(noise) == steps - 1
    cfg = cfg_scale > 1
    x, kwargs = reference_batch(z, cfg)
    fake_torch = _TorchFeedingNoise(noise)
    monkeypatch.setattr(ref.gd, "th", fake_torch)
    expected = ref.create_diffusion(str(steps)).p_sample_loop(
        theirs.forward_with_cfg if cfg else theirs.forward, x.shape, x, clip_denoised=False, model_kwargs=kwargs,
        device="cpu")
    assert fake_torch.calls == steps and not fake_torch.queue
    assert_fp32_close(got, expected[: len(z)], f"DDPM {steps}, cfg {cfg_scale}")


def test_ddim_with_eta_equals_the_reference_given_the_same_step_noise(monkeypatch, ref, pair):
    ours, theirs = pair
    steps, eta = 10, 0.7
    z, got, noise = run_recording_step_noise(monkeypatch, ours, steps, CFG_SCALE, eta=eta)
    x, kwargs = reference_batch(z, cfg=True)
    fake_torch = _TorchFeedingNoise(noise)
    monkeypatch.setattr(ref.gd, "th", fake_torch)
    expected = ref.create_diffusion(str(steps)).ddim_sample_loop(
        theirs.forward_with_cfg, x.shape, x, clip_denoised=False, model_kwargs=kwargs, device="cpu", eta=eta)
    assert fake_torch.calls == steps and not fake_torch.queue
    assert_fp32_close(got, expected[: len(z)], f"DDIM {steps}, eta {eta}, CFG {CFG_SCALE}")


# ---- (d) respacing and (e) q_sample --------------------------------------------------

STEP_BUDGETS = list(range(1, 1001)) + ["10,15,20", "5,5,5,5", "100,1,7"]


def test_ddim_stride_budgets_match_the_reference_or_both_raise(ref):
    wrong = []
    for n in range(1, 1001):
        try:
            expected = sorted(ref.space_timesteps(1000, f"ddim{n}"))
        except ValueError:
            expected = ValueError
        try:
            got = Diffusion(f"ddim{n}").timestep_map
        except ValueError:
            got = ValueError
        if got != expected:
            wrong.append(n)
    assert not wrong, f"'ddimN' differs for N={wrong[:10]} ({len(wrong)} budgets)"


def test_timestep_map_equals_the_reference_for_every_budget_1_to_1000(ref):
    wrong = [s for s in STEP_BUDGETS if Diffusion(s).timestep_map != sorted(ref.space_timesteps(1000, str(s)))]
    assert not wrong, f"timestep_map differs for steps={wrong[:10]} ({len(wrong)} budgets)"


@pytest.mark.parametrize("steps", [1, 2, 10, 20, 21, 25, 50, 100, 250, 1000, "ddim20", "ddim50", "10,15,20"])
def test_respaced_schedule_arrays_equal_the_reference(ref, steps):
    ours, theirs = Diffusion(steps), ref.create_diffusion(str(steps))
    assert ours.timestep_map == theirs.timestep_map
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_recip_alphas_cumprod",
                 "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2"):
        np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=1e-13, atol=0, err_msg=name)


@pytest.mark.parametrize("steps", [10, 50, "ddim20", 1000])
def test_q_sample_equals_the_reference(ref, steps):
    ours, theirs = Diffusion(steps), ref.create_diffusion(str(steps))
    gen = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(6, 4, 8, 8, generator=gen), torch.randn(6, 4, 8, 8, generator=gen)
    index = torch.tensor([0, 1, ours.num_timesteps // 2, ours.num_timesteps - 2, ours.num_timesteps - 1, 3])
    assert_fp32_close(ours.q_sample(x0, index, noise), theirs.q_sample(x0, index, noise), f"q_sample {steps}")
