"""Learning-to-Cache: the official rule, router files, router training, the golden fixture and the published MACs."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch

from baselines.l2c import (L2CPolicy, compute_mask, read_router_file, router_logits, save_routers, skip_ratio)
from baselines.l2c_train import L2CTrainConfig, init_routers, train_routers, train_to_file
from conftest import randomize
from harness import build_model, sample
from harness.cache import UnsafeFileError
from harness.cli import main
from harness.cost.macs import MACS_LINEAR, SKIP_RATIO, cost_table, dry_run_decisions, macs_from_log
from harness.inputs import check_method_files
from harness.methods import ATTN, MLP, create_policy
from harness.provenance import sha256_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden" / "l2c" / "ddim10_depth4.pt"
ZOO = ROOT / "baselines" / "zoo"
STEPS, DEPTH = 10, 3
LABELS, SEEDS = [1, 3, 5, 7], [0, 1, 2, 3]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))  # cost tables are not written to the user's cache


def run(model, policy, steps: int = STEPS, **kwargs):
    return sample(model, LABELS, SEEDS, steps=steps, cfg_scale=1.5, method=policy, decode=False, **kwargs)


def random_logits(steps: int = STEPS, depth: int = DEPTH, seed: int = 0) -> torch.Tensor:
    return torch.randn(steps, 2 * depth, generator=torch.Generator().manual_seed(seed)) * 2


# ---- the rule ----------------------------------------------------------------------------

def test_even_steps_follow_the_router_and_odd_steps_compute_everything():
    logits = random_logits()
    mask = compute_mask(logits, 0.5)
    assert mask.shape == (STEPS, DEPTH, 2)
    assert mask[1::2].all()
    assert torch.equal(mask[0::2], (logits[0::2] > 0).view(-1, DEPTH, 2))  # sigmoid(l) > 0.5 iff l > 0


def test_router_entry_2b_is_block_b_attention_and_the_router_index_is_the_step_index(tiny_latent_dit):
    logits = torch.full((STEPS, 2 * DEPTH), 5.0)
    logits[4, 2 * 1 + MLP] = -5.0  # router 4: reuse block 1's MLP
    logits[6, 2 * 2 + ATTN] = -5.0  # router 6: reuse block 2's attention
    branch = run(tiny_latent_dit, L2CPolicy.from_logits(logits)).decisions.branch
    skipped = (branch == 0).all(dim=-1).nonzero().tolist()
    assert skipped == [[4, 1, MLP], [6, 2, ATTN]]


def test_odd_step_count_is_an_error(tiny_latent_dit):
    with pytest.raises(ValueError, match="even step count.*got 9 steps"):
        run(tiny_latent_dit, L2CPolicy.from_logits(random_logits(9)), steps=9)
    with pytest.raises(ValueError, match="even step count"):
        compute_mask(random_logits(5), 0.1)


def test_threshold_above_every_sigmoid_reuses_every_branch_at_every_even_step(tiny_latent_dit):
    out = run(tiny_latent_dit, L2CPolicy.from_logits(random_logits(), threshold=1.0))
    branch = out.decisions.branch
    assert branch[1::2].eq(1).all() and branch[0::2].eq(0).all()
    assert out.decisions.lazy_ratio()["all"] == pytest.approx(0.5)
    assert not torch.equal(out.latents, run(tiny_latent_dit, "ddim").latents)


def test_threshold_zero_computes_everything_and_equals_ddim_bit_for_bit(tiny_latent_dit):
    out = run(tiny_latent_dit, L2CPolicy.from_logits(random_logits(), threshold=0.0))
    assert out.decisions.branch.eq(1).all()
    assert torch.equal(out.latents, run(tiny_latent_dit, "ddim").latents)


def test_a_reused_branch_never_runs(tiny_latent_dit):
    """Block 0's MLP reused at step 0: it runs at step 1 only (its gate, from step 0, is checked by the golden test)."""
    logits = torch.full((2, 2 * DEPTH), 5.0)
    logits[0, MLP] = -5.0
    policy = L2CPolicy.from_logits(logits)
    captured = []
    mlp = tiny_latent_dit.blocks[0].mlp
    handle = mlp.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        run(tiny_latent_dit, policy, steps=2)
    finally:
        handle.remove()
    assert len(captured) == 1  # computed at step 1 only
    assert policy.log.branch[0, 0, MLP].eq(0).all()


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), True])
def test_threshold_out_of_range_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold"):
        L2CPolicy.from_logits(random_logits(), threshold=threshold)


def test_router_count_and_depth_must_fit_the_run(tiny_latent_dit):
    with pytest.raises(ValueError, match=r"holds 20 routers of 6 logits .* this run has 10 steps and depth 3"):
        run(tiny_latent_dit, L2CPolicy.from_logits(random_logits(20)))
    with pytest.raises(ValueError, match=r"holds 10 routers of 8 logits .*depth 3"):
        run(tiny_latent_dit, L2CPolicy.from_logits(random_logits(depth=4)))


def test_missing_router_argument_is_one_clear_error():
    with pytest.raises(ValueError, match=r"needs method_args\['router'\]"):
        create_policy("l2c", {})


# ---- router files ------------------------------------------------------------------------

@pytest.mark.parametrize("steps, skipped", [(50, 23.71), (20, 22.14)])
def test_official_router_files_load_without_unpickling_and_give_the_published_skip_ratio(steps, skipped):
    path = FIXTURES / f"DDIM{steps}_router.pt"
    payload = read_router_file(path)  # its argparse options load as an allow-listed Namespace
    assert payload["args"].num_sampling_steps == steps
    logits = router_logits(payload["routers"], path)
    assert logits.shape == (steps, 56)
    assert round(100 * skip_ratio(logits, 0.1), 2) == skipped


def test_harness_router_file_round_trips_as_plain_data_with_its_identity(tmp_path):
    logits = random_logits()
    path = tmp_path / "routers.pt"
    save_routers(logits, path, model_name="embedded/digits-8", image_size=8, steps=STEPS, method="l2c", args={"lam": 1e-3})
    raw = torch.load(path, weights_only=True)  # no allow-list needed: nothing pickled
    assert sorted(raw["routers"]) == sorted(f"{i}.prob" for i in range(STEPS))
    assert raw["model_name"] == "embedded/digits-8" and raw["method"] == "l2c" and raw["args"] == {"lam": 1e-3}
    assert torch.equal(router_logits(read_router_file(path)["routers"]), logits)
    policy = create_policy("l2c", {"router": str(path), "threshold": 0.5})
    assert torch.equal(policy.logits, logits)


def test_a_file_of_another_method_is_refused(tmp_path):
    path = tmp_path / "lazy.pt"
    save_routers(random_logits(), path, method="lazydit")
    with pytest.raises(ValueError, match="'lazydit' file, not an L2C router"):
        create_policy("l2c", {"router": str(path)})


def test_malformed_router_entries_are_refused(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"routers": {"0.prob": torch.zeros(4), "2.prob": torch.zeros(4)}}, path)
    with pytest.raises(ValueError, match=r"'0.prob' .. '\{N-1\}.prob'"):
        create_policy("l2c", {"router": str(path)})
    torch.save({"routers": {"0.prob": torch.zeros(4), "1.prob": torch.zeros(6)}}, path)
    with pytest.raises(ValueError, match="same even number"):
        create_policy("l2c", {"router": str(path)})
    torch.save({"routers": {"0.prob": "high", "1.prob": "low"}}, path)
    with pytest.raises(ValueError, match="not a tensor of logits"):
        create_policy("l2c", {"router": str(path)})
    torch.save({"routers": {"0.prob": torch.tensor([0.0, float("nan")])}}, path)
    with pytest.raises(ValueError, match="NaN or infinite"):
        create_policy("l2c", {"router": str(path)})


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.marker),))


def test_a_pickled_payload_in_a_router_file_never_runs(tmp_path):
    _Payload.marker = str(tmp_path / "ran")
    path = tmp_path / "evil.pt"
    torch.save({"routers": {"0.prob": torch.zeros(4), "1.prob": torch.zeros(4)}, "args": _Payload()}, path)
    with pytest.raises(UnsafeFileError):
        create_policy("l2c", {"router": str(path)})
    assert not (tmp_path / "ran").exists()


def test_a_router_for_another_model_or_step_count_is_one_error_naming_both(tmp_path):
    path = tmp_path / "digits-8.pt"
    save_routers(random_logits(depth=6), path, model_name="embedded/digits-8", image_size=8, steps=STEPS, method="l2c")
    check_method_files({"router": str(path)}, "embedded/digits-8", 8, STEPS)
    with pytest.raises(ValueError, match="'embedded/digits-8'.*'embedded/digits-16'"):
        check_method_files({"router": str(path)}, "embedded/digits-16", 16, STEPS)
    with pytest.raises(ValueError, match="10 steps.*20 steps"):
        check_method_files({"router": str(path)}, "embedded/digits-8", 8, 20)
    with pytest.raises(ValueError, match="'embedded/digits-8'.*'embedded/digits-16'"):  # the Python API too
        sample(build_model("embedded/digits-16"), [1], [0], steps=STEPS, method="l2c", method_args={"router": str(path)},
               decode=False)


def test_an_official_router_is_checked_against_the_options_it_was_trained_with():
    with torch.device("meta"):
        model = build_model("DiT-XL/2", image_size=512)
    policy = create_policy("l2c", {"router": str(FIXTURES / "DDIM50_router.pt")})
    with pytest.raises(ValueError, match="'DiT-XL/2', 256 px, 50 steps; this run is model 'DiT-XL/2', 512 px"):
        dry_run_decisions(policy, model, 50)


# ---- router training ---------------------------------------------------------------------

def fixed_batches(model, n: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, *model.spec.latent_shape, generator=gen)
    y = torch.randint(0, model.spec.num_classes, (n,), generator=gen)
    while True:
        yield x0, y


def test_training_without_penalty_lowers_the_loss_and_only_sampled_routers_move(tiny_latent_dit):
    config = L2CTrainConfig(steps=4, lam=0.0, iters=20, batch_size=4, lr=0.5, label_dropout=0.0)
    logits, history = train_routers(tiny_latent_dit, fixed_batches(tiny_latent_dit), config)
    for index in (1, 3):  # the routed step is index - 1
        mse = [h["mse"] for h in history if h["index"] == index]
        assert mse[-1] < 0.2 * mse[0], (index, mse)
    init = torch.stack(list(init_routers(4, DEPTH, config.seed))).detach()
    assert torch.equal(logits[1::2], init[1::2])  # odd routers are never consulted, so never trained
    assert not torch.equal(logits[0::2], init[0::2])
    assert torch.sigmoid(logits[0::2]).mean() > torch.sigmoid(init[0::2]).mean() + 0.1  # more of each branch runs


def test_a_large_penalty_drives_routers_to_the_clamp(tiny_latent_dit):
    config = L2CTrainConfig(steps=2, lam=10.0, iters=8, batch_size=4, lr=5.0, label_dropout=0.1)
    logits, _ = train_routers(tiny_latent_dit, fixed_batches(tiny_latent_dit), config)
    assert logits.abs().max() <= 5.0
    assert torch.equal(logits[0], torch.full_like(logits[0], -5.0))
    assert skip_ratio(logits, 0.1) == 0.5


@pytest.mark.parametrize("flag, value, match", [
    ("--steps-budget", "9", "even step count"), ("--iters", "0", "--iters=0"), ("--lam", "-1", "--lam=-1.0"),
    ("--lr", "0", "--lr=0.0"), ("--label-dropout", "1", "--label-dropout=1.0"), ("--data", "nope", "unknown training data"),
])
def test_bad_training_arguments_fail_before_any_work(tmp_path, capsys, flag, value, match):
    out = tmp_path / "r.pt"
    argv = {"--model": "embedded/digits-8", "--steps-budget": "10", "--lam": "1e-3", "--out": str(out)} | {flag: value}
    assert main(["train", "l2c", *[s for kv in argv.items() for s in kv]]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_official_lambda_is_the_default_only_where_the_readme_gives_one():
    assert L2CTrainConfig(steps=50).penalty == 1e-6 and L2CTrainConfig(steps=20).penalty == 5e-6
    with pytest.raises(ValueError, match="no official lambda for 12 steps.*pass --lam"):
        L2CTrainConfig(steps=12).check()


def test_trained_file_records_its_identity_and_runs_on_its_model(tmp_path):
    out = tmp_path / "digits-8-ddim2.pt"
    summary = train_to_file("embedded/digits-8", str(out), L2CTrainConfig(steps=2, lam=1e-3, iters=2, batch_size=4),
                            quiet=True)
    payload = torch.load(out, weights_only=True)
    assert {k: payload[k] for k in ("model_name", "image_size", "steps", "method")} == \
        {"model_name": "embedded/digits-8", "image_size": 8, "steps": 2, "method": "l2c"}
    assert payload["args"]["iters"] == 2 and summary["skip_ratio"] == round(payload["skip_ratio"], 4)
    model = build_model("embedded/digits-8")
    sample(model, [1], [0], steps=2, method="l2c", method_args={"router": str(out)}, decode=False)


# ---- faithfulness: the official code's output (tests/fixtures/golden/l2c/PROVENANCE.md) ----------

def test_matches_the_official_inference_on_random_weights(tmp_path):
    golden = torch.load(GOLDEN, weights_only=True)
    model = randomize(build_model("DiT-S/2", image_size=64, depth=4, hidden_size=64, num_heads=4, num_classes=10),
                      seed=0, std=0.05)
    assert sum(p.double().abs().sum() for p in model.parameters()).item() == pytest.approx(golden["weights_abs_sum"].item())
    path = tmp_path / "DDIM10_router.pt"  # the official layout, as the fixture's router was given to load_ranking
    torch.save({"routers": {f"{i}.prob": row for i, row in enumerate(golden["router_logits"])}}, path)
    latents = {}
    assert golden["thresholds"].tolist() == pytest.approx([0.0, 0.1, 0.5])
    for threshold, key in ((0.0, "0.0"), (0.1, "0.1"), (0.5, "0.5")):
        out = sample(model, golden["labels"].tolist(), golden["seeds"].tolist(), steps=10, cfg_scale=1.5,
                     method="l2c", method_args={"router": str(path), "threshold": threshold}, decode=False)
        branch = out.decisions.branch
        assert torch.equal(branch.amin(-1), branch.amax(-1))  # one decision for every row
        assert torch.equal(branch[..., 0].to(torch.int8), golden[f"computed_{key}"]), threshold
        reference = golden[f"latents_{key}"]
        tol = 1e-6 * reference.abs().max().item()  # float32 vs float64 DDIM coefficients (PROVENANCE.md)
        torch.testing.assert_close(out.latents, reference, rtol=1e-5, atol=tol)
        latents[key] = out.latents
    assert (latents["0.1"] - latents["0.5"]).abs().max() > 100 * 1e-6 * latents["0.5"].abs().max()  # the test can fail


def test_noise_of_the_golden_run_is_the_harness_seeding():
    from harness.sampling import initial_noise

    golden = torch.load(GOLDEN, weights_only=True)
    assert torch.equal(initial_noise(golden["seeds"].tolist(), (4, 8, 8)), golden["noise"])


# ---- published cost ------------------------------------------------------------------------

def meta_dit_xl() -> torch.nn.Module:
    with torch.device("meta"):
        return build_model("DiT-XL/2", image_size=256)


def test_official_ddim50_router_skips_23_71_percent_and_costs_4_36_tmacs_on_dit_xl2_256():
    model = meta_dit_xl()
    policy = create_policy("l2c", {"router": str(FIXTURES / "DDIM50_router.pt")})
    result = macs_from_log(cost_table(model), dry_run_decisions(policy, model, 50, images=1, cfg=True))
    assert round(100 * result[SKIP_RATIO], 2) == 23.71
    assert round(result[MACS_LINEAR] / 1e12, 2) == 4.36


def test_macs_command_prints_the_published_l2c_figures(capsys):
    argv = ["macs", "--model", "DiT-XL/2", "--image-size", "256", "--steps", "50", "--method", "l2c",
            "--method-args", json.dumps({"router": str(FIXTURES / "DDIM50_router.pt")}), "--dry-run"]
    assert main(argv) == 0
    assert "23.71%" in capsys.readouterr().out
    assert main(argv + ["--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert round(record[MACS_LINEAR] / 1e12, 2) == 4.36 and round(100 * record[SKIP_RATIO], 2) == 23.71


# ---- shipped routers -----------------------------------------------------------------------

def zoo_entries() -> dict:
    return json.loads((ZOO / "manifest.json").read_text())["l2c_routers"]


def test_shipped_routers_match_their_manifest():
    entries = zoo_entries()
    for model in ("digits-8", "digits-16"):
        for steps in (10, 50):
            assert f"{model}-ddim{steps}-router.pt" in entries
    for name, entry in entries.items():
        path = ZOO / name
        assert sha256_file(path) == entry["sha256"], name
        payload = read_router_file(path)
        check_method_files({"router": str(path)}, entry["model"], entry["image_size"], entry["steps"])
        logits = router_logits(payload["routers"], path)
        assert round(skip_ratio(logits, 0.1), 4) == entry["skip_ratio"], name
        assert entry["skip_ratio"] > 0.1, name  # a meaningful share skipped at the default threshold


def test_package_data_ships_the_router_zoo():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "zoo/*" in config["tool"]["setuptools"]["package-data"]["baselines"]
