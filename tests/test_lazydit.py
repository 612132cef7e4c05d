"""LazyDiT: the faithful lazy policy, its weight files, accounting, training and the static variant."""
from __future__ import annotations

import pytest
import torch

from harness import build_model, sample
from harness.diffusion import Diffusion
from harness.methods import ATTN, MLP, METHODS, RunInfo, create_policy
from lazydit.accounting import laziness, threshold_for_ratio
from lazydit.layers import LazyLayers
from lazydit.policy import LazyDiTPolicy
from lazydit.static import LazyDiTStaticPolicy, schedule_from_log
from lazydit.training import LazyTrainConfig, frozen, lazy_learning_loss, train_lazy_layers
from lazydit.weights import layers_to_state, load_lazy_weights, official_key, save_lazy_weights

STEPS, DEPTH, HIDDEN = 6, 2, 32
LABELS, SEEDS = [1, 7, 3], [0, 1, 2]
BIG = 1e3  # saturates a score: sigmoid(+-BIG * positive) is 1 or 0


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_dit(seed: int = 0, shift: float = 0.0):
    """A random tiny DiT (adaLN-Zero's identity init replaced by noise); `shift` > 0 makes every
    branch input's token-and-channel sum positive, so that +-ones lazy weights force decisions."""
    torch.manual_seed(seed)
    model = build_model("DiT-S/2", image_size=32, depth=DEPTH, hidden_size=HIDDEN, num_heads=2, num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.1)
        for block in model.blocks:
            bias = block.adaLN_modulation[-1].bias
            bias[0:HIDDEN] += shift  # attention branch shift
            bias[3 * HIDDEN: 4 * HIDDEN] += shift  # MLP branch shift
    return model.eval()


def forcing_layers(compute: torch.Tensor) -> LazyLayers:
    """Lazy layers whose scores are 1 where compute[i, b, k] and 0 elsewhere (on a shifted tiny DiT)."""
    layers = LazyLayers(*compute.shape[:2], HIDDEN)
    sign = compute.float() * 2 - 1  # (S, depth, 2)
    return layers.copy_weight_(BIG * sign[..., None])


def half_lazy_pattern() -> torch.Tensor:
    """Compute at odd step indices, skip at even ones (the shape official training yields)."""
    compute = torch.ones(STEPS, DEPTH, 2, dtype=torch.bool)
    compute[0::2] = False
    compute[2, 1, MLP] = True  # one irregular branch
    return compute


def run(model, method, **kw):
    return sample(model, LABELS, SEEDS, steps=STEPS, cfg_scale=1.5, method=method, decode=False, **kw)


# ---- the faithful policy ------------------------------------------------------------

@pytest.mark.parametrize("execution", ["gather", "where"])
def test_zero_laziness_reproduces_ddim_bit_for_bit(execution):
    model = tiny_dit()
    ddim = run(model, "ddim")
    lazy = run(model, LazyDiTPolicy.from_layers(LazyLayers(STEPS, DEPTH, HIDDEN), execution=execution))
    assert torch.equal(lazy.latents, ddim.latents)
    assert lazy.decisions.branch.min() == 1


def test_lazydit_is_registered_with_its_variants():
    assert {"lazydit", "lazydit-allsteps", "lazydit-static"} <= set(METHODS.names())


def test_forced_weights_give_the_expected_decision_log():
    model = tiny_dit(shift=3.0)
    pattern = half_lazy_pattern()
    out = run(model, LazyDiTPolicy.from_layers(forcing_layers(pattern)))
    expected = pattern.clone()
    expected[-1] = True  # the first step has nothing cached: it computes
    assert torch.equal(out.decisions.branch.bool(), expected[..., None].expand(-1, -1, -1, 2 * len(SEEDS)))
    skipped = 1 - expected.float().mean().item()
    assert laziness(out.decisions).overall == pytest.approx(skipped)


def test_forced_weights_give_the_outputs_of_the_same_static_schedule():
    model = tiny_dit(shift=3.0)
    pattern = half_lazy_pattern()
    dynamic = run(model, LazyDiTPolicy.from_layers(forcing_layers(pattern)))
    static = run(model, LazyDiTStaticPolicy.from_schedule(pattern))
    ddim = run(model, "ddim")
    assert torch.equal(dynamic.latents, static.latents)
    assert not torch.allclose(dynamic.latents, ddim.latents)  # the skips did change the result


def test_score_overhead_counts_modulation_and_lazy_map_per_checked_branch():
    model = tiny_dit(shift=3.0)
    out = run(model, LazyDiTPolicy.from_layers(forcing_layers(half_lazy_pattern())))
    per_step = 2 * DEPTH * 2 * model.num_tokens * HIDDEN  # 2 branches x (modulate + score) per token and channel
    assert out.decisions.overhead_macs[:-1].eq(per_step).all()
    assert out.decisions.overhead_macs[-1].eq(0).all()  # the first step scores nothing


def branch_run(depth: int = 1, tokens: int = 3, batch: int = 2) -> RunInfo:
    return RunInfo(num_steps=2, timesteps=(0, 500), batch=batch, cfg=False, depth=depth, num_tokens=tokens,
                   hidden_size=4, device=torch.device("cpu"))


@pytest.mark.parametrize("execution", ["gather", "where"])
def test_each_sample_reuses_its_own_cached_output_when_its_score_is_low(execution):
    layers = LazyLayers(2, 1, 4)
    layers.copy_weight_(torch.tensor([1.0, 0.0]).view(2, 1, 1, 1))  # step 0: score = sigmoid(sum of h)
    policy = LazyDiTPolicy.from_layers(layers, execution=execution)
    policy.start(branch_run())
    double = lambda h: 2 * h  # noqa: E731
    policy.begin_step(1)
    first = policy.branch(0, ATTN, double, lambda: torch.full((2, 3, 4), 5.0))  # first step: computes, fills the cache
    policy.end_step()
    policy.begin_step(0)
    h = torch.stack([torch.ones(3, 4), -torch.ones(3, 4)])  # sample 0 scores high, sample 1 low
    out = policy.branch(0, ATTN, double, lambda: h)
    policy.end_step()
    assert torch.equal(out[0], 2 * h[0])
    assert torch.equal(out[1], first[1])
    log = policy.finish()
    assert log.branch[0, 0, ATTN].tolist() == [1.0, 0.0]
    assert log.branch[1, 0, ATTN].tolist() == [1.0, 1.0]


def test_speculation_with_holding_predictions_equals_gather_and_reads_the_host_once_per_step(monkeypatch):
    model = tiny_dit(shift=3.0)
    layers, pattern = forcing_layers(half_lazy_pattern()), half_lazy_pattern()
    gather = run(model, LazyDiTPolicy.from_layers(layers))
    policy = LazyDiTPolicy.from_layers(layers, execution="speculate", prediction=pattern)
    monkeypatch.setattr(torch, "nonzero", lambda *a, **k: pytest.fail("a per-branch host read"))
    reads = []
    real_bool = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(1) or real_bool(t))
    run(model, "ddim")
    sampler_reads = len(reads)  # input checks of the sampler, once per call
    out = run(model, policy)
    assert len(reads) - 2 * sampler_reads == STEPS - 1  # one per step; the first step scores nothing
    assert torch.equal(out.latents, gather.latents) and torch.equal(out.decisions.branch, gather.decisions.branch)
    assert policy.reruns == 0


def test_a_failed_prediction_reruns_the_step_and_still_equals_gather():
    model = tiny_dit(shift=3.0)
    layers = forcing_layers(half_lazy_pattern())
    wrong = ~half_lazy_pattern()  # predicts compute where the scores skip and the reverse
    policy = LazyDiTPolicy.from_layers(layers, execution="speculate", prediction=wrong)
    out = run(model, policy)
    gather = run(model, LazyDiTPolicy.from_layers(layers))
    assert torch.equal(out.latents, gather.latents) and torch.equal(out.decisions.branch, gather.decisions.branch)
    assert policy.reruns == STEPS - 1  # every step after the first mispredicted


def test_speculation_without_a_schedule_names_the_argument(tmp_path):
    save_lazy_weights(LazyLayers(STEPS, DEPTH, HIDDEN), tmp_path / "w.pt", method="lazydit")
    with pytest.raises(ValueError, match="schedule"):
        create_policy("lazydit", {"weights": str(tmp_path / "w.pt"), "execution": "speculate"})


def test_score_at_exactly_the_threshold_computes():
    policy = LazyDiTPolicy.from_layers(LazyLayers(2, 1, 4), threshold=0.5)  # zero weights: score 0.5
    policy.start(branch_run())
    policy.begin_step(1)
    policy.branch(0, MLP, torch.neg, lambda: torch.ones(2, 3, 4))
    policy.begin_step(0)
    assert torch.equal(policy.branch(0, MLP, torch.neg, lambda: torch.ones(2, 3, 4)), -torch.ones(2, 3, 4))


def test_layers_for_another_step_budget_are_refused():
    model = tiny_dit()
    with pytest.raises(ValueError, match="do not fit"):
        run(model, LazyDiTPolicy.from_layers(LazyLayers(STEPS + 1, DEPTH, HIDDEN)))


def test_missing_weights_argument_names_it():
    with pytest.raises(ValueError, match="weights"):
        create_policy("lazydit", {})


# ---- official weight files -----------------------------------------------------------

def test_official_format_round_trip(tmp_path):
    layers = LazyLayers(STEPS, DEPTH, HIDDEN)
    layers.copy_weight_(torch.randn(STEPS, DEPTH, 2, HIDDEN))
    path = tmp_path / "lazy.pt"
    save_lazy_weights(layers, path, method="lazydit")
    payload = torch.load(path, weights_only=True)
    assert set(payload["model"]) == {official_key(b, k, i) for b in range(DEPTH) for k in (0, 1) for i in range(STEPS)}
    assert payload["model"]["block_1_mlp_lazy_learning_weight_4"].shape == (1, HIDDEN)
    assert torch.equal(payload["model"]["block_1_mlp_lazy_learning_weight_4"][0], layers.weight[4, 1, MLP])
    assert torch.equal(load_lazy_weights(path).weight, layers.weight)


def test_an_official_checkpoint_dict_loads_through_method_args(tmp_path):
    model = tiny_dit()
    state = layers_to_state(LazyLayers(STEPS, DEPTH, HIDDEN))  # as the official save: + opt, args, epoch, step
    torch.save({"model": state, "opt": {}, "args": None, "epoch": 0, "step": 500}, tmp_path / "official.pt")
    out = run(model, "lazydit", method_args={"weights": str(tmp_path / "official.pt"), "threshold": 0.5})
    assert torch.equal(out.latents, run(model, "ddim").latents)


def test_a_missing_official_key_is_named(tmp_path):
    state = layers_to_state(LazyLayers(STEPS, DEPTH, HIDDEN))
    del state["block_0_attn_lazy_learning_weight_3"]
    torch.save({"model": state}, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="block_0_attn_lazy_learning_weight_3"):
        load_lazy_weights(tmp_path / "broken.pt")


def test_allsteps_weights_are_refused_under_the_official_method_name(tmp_path):
    save_lazy_weights(LazyLayers(STEPS, DEPTH, HIDDEN), tmp_path / "all.pt", method="lazydit-allsteps")
    with pytest.raises(ValueError, match="lazydit-allsteps"):
        create_policy("lazydit", {"weights": str(tmp_path / "all.pt")})
    assert create_policy("lazydit-allsteps", {"weights": str(tmp_path / "all.pt")}).name == "lazydit-allsteps"


# ---- accounting ---------------------------------------------------------------------

def test_laziness_is_reported_per_type_step_and_block():
    model = tiny_dit(shift=3.0)
    pattern = half_lazy_pattern()
    report = laziness(run(model, LazyDiTPolicy.from_layers(forcing_layers(pattern))).decisions)
    assert report.per_step[0] == [1.0, 1.0] and report.per_step[1] == [0.0, 0.0]
    assert report.per_step[2] == [1.0, 0.5]  # block 1's MLP computes at step 2
    assert report.per_type["mlp"] < report.per_type["attn"]
    assert len(report.per_block) == DEPTH


def test_a_weights_files_searched_threshold_applies_unless_one_is_given(tmp_path):
    save_lazy_weights(LazyLayers(STEPS, DEPTH, HIDDEN), tmp_path / "w.pt", method="lazydit", threshold=0.7, target_ratio=0.3)
    stored = create_policy("lazydit", {"weights": str(tmp_path / "w.pt")})
    assert stored.threshold == 0.7 and stored.parameters()["target_ratio"] == 0.3 and stored.target_ratio == 0.3
    overridden = create_policy("lazydit", {"weights": str(tmp_path / "w.pt"), "threshold": 0.5})
    assert overridden.threshold == 0.5 and overridden.target_ratio is None  # the target belonged to the stored threshold


def test_an_official_file_without_a_threshold_uses_the_official_half(tmp_path):
    torch.save({"model": layers_to_state(LazyLayers(STEPS, DEPTH, HIDDEN))}, tmp_path / "official.pt")
    policy = create_policy("lazydit", {"weights": str(tmp_path / "official.pt")})
    assert policy.threshold == 0.5 and policy.target_ratio is None


def test_threshold_search_reaches_a_reachable_target():
    model = tiny_dit(shift=3.0)
    layers = LazyLayers(STEPS, DEPTH, HIDDEN)
    layers.copy_weight_(torch.linspace(-0.02, 0.02, STEPS * DEPTH * 2).view(STEPS, DEPTH, 2, 1))  # graded scores
    threshold, achieved = threshold_for_ratio(model, layers, 0.25, STEPS, LABELS, SEEDS, iterations=12, tolerance=0.05)
    assert achieved == pytest.approx(0.25, abs=0.05)


# ---- static schedule ---------------------------------------------------------------

def test_static_schedule_is_frozen_from_the_dynamic_log():
    model = tiny_dit(shift=3.0)
    pattern = half_lazy_pattern()
    log = run(model, LazyDiTPolicy.from_layers(forcing_layers(pattern))).decisions
    compute = schedule_from_log(log)
    expected = pattern.clone()
    expected[-1] = True
    assert torch.equal(compute, expected)
    assert 1 - schedule_from_log(log, target_ratio=0.25).float().mean().item() == pytest.approx(0.25, abs=1 / compute.numel())


def test_a_static_skip_never_computes_the_branch_input():
    policy = LazyDiTStaticPolicy.from_schedule(torch.tensor([[[False, True]], [[True, True]]]))
    policy.start(branch_run())
    policy.begin_step(1)
    policy.branch(0, ATTN, torch.neg, lambda: torch.ones(2, 3, 4))
    policy.begin_step(0)

    def forbidden() -> torch.Tensor:
        raise AssertionError("a reused branch computed its input")

    assert torch.equal(policy.branch(0, ATTN, torch.neg, forbidden), -torch.ones(2, 3, 4))


def test_static_schedule_of_all_compute_is_ddim():
    model = tiny_dit()
    static = run(model, LazyDiTStaticPolicy.from_schedule(torch.ones(STEPS, DEPTH, 2, dtype=torch.bool)))
    assert torch.equal(static.latents, run(model, "ddim").latents)


# ---- training ------------------------------------------------------------------------

def random_batches(model, n: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(n, *model.spec.latent_shape, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def eval_loss(model, layers, rho: float = 0.0):
    """Loss and hard lazy ratio at the two trainable indices (1, 3), on a fixed batch."""
    x0, y = next(random_batches(model, 8, seed=123))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    with frozen(model), torch.no_grad():
        outs = [lazy_learning_loss(model, Diffusion(STEPS), layers, x0, y, t, rho, rho, noise) for t in (1, 3)]
    lazy = sum(float(o["attn_lazy"] + o["mlp_lazy"]) for o in outs) / 4
    return sum(float(o["mse"]) for o in outs) / 2, lazy


def test_training_lowers_the_loss_and_only_trains_even_indices():
    model = tiny_dit(seed=1)
    before, _ = eval_loss(model, LazyLayers(STEPS, DEPTH, HIDDEN))
    layers, _ = train_lazy_layers(model, random_batches(model), LazyTrainConfig(steps=STEPS, iters=30, batch_size=8, lr=1e-2, rho_attn=0.0, rho_mlp=0.0))
    after, _ = eval_loss(model, layers)
    assert after < 0.5 * before
    assert layers.weight[1::2].abs().max() == 0  # the official recipe never touches odd-index layers
    assert all(p.requires_grad for p in model.parameters() if p is not model.pos_embed)  # the model is left as it was


def test_laziness_rises_with_rho():
    model = tiny_dit(seed=1)
    ratios = []
    for rho in (0.0, 3e-4, 3e-2):
        config = LazyTrainConfig(steps=STEPS, iters=25, batch_size=8, lr=1e-2, rho_attn=rho, rho_mlp=rho)
        layers, _ = train_lazy_layers(model, random_batches(model), config)
        ratios.append(eval_loss(model, layers)[1])
    assert ratios[0] < ratios[1] < ratios[2], ratios


def test_allsteps_variant_trains_every_index():
    model = tiny_dit(seed=1)
    config = LazyTrainConfig(steps=STEPS, iters=12, batch_size=4, lr=1e-2, all_steps=True, seed=3)
    layers, history = train_lazy_layers(model, random_batches(model, 4), config)
    assert {h["index"] for h in history} - {1, 3, 5}  # some even t drawn
    assert config.method == "lazydit-allsteps"
    assert layers.weight[-1].abs().max() == 0  # index S-1 is the first step: never scored, never trained


def test_static_policy_compiles_as_one_graph_per_distinct_step_pattern():
    model = tiny_dit(shift=3.0)
    pattern = half_lazy_pattern()
    eager = run(model, LazyDiTStaticPolicy.from_schedule(pattern))
    net = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: no host read, no graph break
    net.spec = model.spec
    compiled = sample(net, LABELS, SEEDS, steps=STEPS, cfg_scale=1.5, decode=False,
                      method=LazyDiTStaticPolicy.from_schedule(pattern))
    assert torch.equal(compiled.latents, eager.latents)


# ---- the training command's pipeline -------------------------------------------------

def test_train_to_file_writes_official_weights_tagged_with_method_and_threshold(tmp_path, monkeypatch):
    from lazydit import pipeline

    model = tiny_dit(seed=1)
    monkeypatch.setattr(pipeline, "load_for_training", lambda *a, **k: model)
    config = LazyTrainConfig(steps=STEPS, iters=4, batch_size=4, lr=1e-2, all_steps=True)
    summary = pipeline.train_to_file("tiny", str(tmp_path / "w.pt"), config, "random", calib_images=2, quiet=True)
    payload = torch.load(tmp_path / "w.pt", weights_only=True)
    assert payload["method"] == "lazydit-allsteps" and payload["threshold"] == 0.5
    assert summary["achieved_ratio"] == payload["achieved_ratio"]
    assert len(payload["model"]) == STEPS * DEPTH * 2


def test_zero_layers_above_a_half_threshold_skip_every_branch_after_the_first_step():
    model = tiny_dit()
    out = run(model, LazyDiTPolicy.from_layers(LazyLayers(STEPS, DEPTH, HIDDEN), threshold=0.6))
    assert out.decisions.branch[-1].eq(1).all() and out.decisions.branch[:-1].eq(0).all()
    assert out.decisions.overhead_macs.eq(0).all()  # a zero layer's score needs no computing


def shipped_digits8():
    from harness import load_model

    try:
        return load_model("embedded/digits-8")
    except (ValueError, FileNotFoundError, NotImplementedError, KeyError) as err:
        pytest.skip(f"embedded/digits-8 is not shipped yet: {err}")


def test_on_the_embedded_model_training_lowers_the_loss_and_laziness_rises_with_rho():
    from lazydit.data import training_batches

    model, steps = shipped_digits8(), 10
    x0, y = next(training_batches(model, "digits", 32, seed=5))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))

    def evaluate(layers):  # (mse, hard lazy ratio) over the trainable indices 1, 3, ..., 9
        with frozen(model), torch.no_grad():
            outs = [lazy_learning_loss(model, Diffusion(steps), layers, x0, y, t, 0, 0, noise) for t in range(1, steps, 2)]
        return (sum(float(o["mse"]) for o in outs) / len(outs),
                sum(float(o["attn_lazy"] + o["mlp_lazy"]) for o in outs) / (2 * len(outs)))

    before, _ = evaluate(LazyLayers(steps, model.depth, model.config.hidden_size))
    results = []
    for rho in (0.0, 1e-5, 1e-3):
        config = LazyTrainConfig(steps=steps, iters=20, batch_size=16, lr=1e-2, rho_attn=rho, rho_mlp=rho)
        layers, _ = train_lazy_layers(model, training_batches(model, "digits", 16, seed=0), config)
        results.append(evaluate(layers))
    assert results[0][0] < 0.5 * before
    lazy = [r[1] for r in results]
    assert lazy[0] < lazy[1] < lazy[2], lazy


def test_an_iteration_leaves_the_layers_of_other_step_indices_untouched():
    model = tiny_dit(seed=1)
    layers = LazyLayers(STEPS, DEPTH, HIDDEN)
    snapshots = []
    config = LazyTrainConfig(steps=STEPS, iters=6, batch_size=4, lr=1e-2, rho_attn=1e-2, rho_mlp=1e-2)
    _, history = train_lazy_layers(model, random_batches(model, 4), config, layers=layers,
                                   on_step=lambda it, m: snapshots.append(layers.weight.clone()))
    for it in range(1, len(history)):
        moved = (snapshots[it] != snapshots[it - 1]).flatten(1).any(dim=1).nonzero().flatten().tolist()
        assert moved == [history[it]["index"] - 1]  # Adam's momentum does not drift the unused layers


def test_train_command_passes_the_recipe_to_the_pipeline(monkeypatch, capsys):
    from harness.cli import main
    from lazydit import pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "train_to_file", lambda *a, **k: seen.update(args=a) or {"ok": True})
    argv = ["train", "lazydit", "--model", "embedded/digits-8", "--steps-budget", "20", "--rho-attn", "1e-3",
            "--rho-mlp", "2e-3", "--all-steps", "--target-ratio", "0.3", "--out", "w.pt"]
    assert main(argv) == 0
    model, out, config, data = seen["args"][:4]
    assert (model, out, data) == ("embedded/digits-8", "w.pt", "digits")
    assert (config.steps, config.rho_attn, config.rho_mlp, config.method) == (20, 1e-3, 2e-3, "lazydit-allsteps")
    assert seen["args"][6] == 0.3  # target ratio


def test_shipped_lazy_weights_reproduce_their_recorded_lazy_ratio():
    import json
    from pathlib import Path

    from harness import load_model

    zoo = Path(__file__).resolve().parent.parent / "lazydit" / "zoo"
    entries = json.loads((zoo / "manifest.json").read_text())["lazy_weights"]
    for name, entry in entries.items():
        try:
            model = load_model(entry["model"])
        except (ValueError, FileNotFoundError, NotImplementedError, KeyError) as err:
            pytest.skip(f"{entry['model']} is not shipped yet: {err}")
        out = sample(model, [i % 10 for i in range(16)], list(range(16)), steps=entry["steps"], cfg_scale=1.5,
                     method=entry["method"], method_args={"weights": str(zoo / name), "threshold": entry["threshold"]},
                     decode=False)
        assert laziness(out.decisions).overall == pytest.approx(entry["achieved_ratio"], abs=1e-3), name


def test_shipped_static_schedules_are_what_their_calibration_makes():
    import json
    from pathlib import Path

    from harness import load_model
    from lazydit.pipeline import calibration_set
    from lazydit.static import calibrate_schedule, load_schedule

    zoo = Path(__file__).resolve().parent.parent / "lazydit" / "zoo"
    entries = json.loads((zoo / "manifest.json").read_text())["static_schedules"]
    for name, entry in entries.items():
        model = load_model(entry["model"])
        labels, seeds = calibration_set(model, 64)
        compute = calibrate_schedule(model, str(zoo / entry["weights"]), entry["steps"], labels, seeds,
                                     threshold=entry["threshold"], target_ratio=entry["target_ratio"])
        assert torch.equal(compute, load_schedule(zoo / name)), name
        assert 1 - compute.float().mean().item() == pytest.approx(entry["achieved_ratio"], abs=1e-4), name
