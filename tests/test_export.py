"""ExecuTorch export: the exported sampler is the harness's own (parity with eager), static methods only."""
from __future__ import annotations

import json

import pytest
import torch

from harness.cli import main
from harness.devices.cells import PARITY_RTOL, check_parity
from harness.export import ForwardProgram, check_exportable, forward_inputs, run_program, static_methods
from harness.methods import METHODS, create_policy
from harness.sampling import sample
from method_cases import CASES
from programs import CFG, IMAGES, STEPS, inputs, policy_for, sampler_program, tiny_model


def eager_latents(method: str, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return sample(tiny_model(), labels.tolist(), [0] * IMAGES, steps=STEPS, cfg_scale=CFG, method=policy_for(method),
                  noise=noise, decode=False, batch_invariant=False).latents


@pytest.mark.parametrize("method", ["ddim", "lazydit-static"])
def test_exported_sampler_run_by_the_executorch_runtime_matches_eager_latents(method):
    noise, labels = inputs(seed=11)  # not the noise the program was traced with
    program = run_program(sampler_program(method), [noise, labels])[0]
    parity = check_parity(program, eager_latents(method, noise, labels), method)
    assert parity["max_rel"] <= PARITY_RTOL


def linear_calls(method: str) -> int:
    from harness.export import SamplerProgram

    program = torch.export.export(SamplerProgram(tiny_model(), policy_for(method), STEPS, CFG), inputs())
    graphs = [m.graph for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)]  # no_grad: a sub-graph
    return sum(node.target is torch.ops.aten.linear.default for graph in graphs for node in graph.nodes)


def test_static_schedule_is_baked_into_the_program():
    # SKIP_SCHEDULE reuses one attention (qkv, proj) and one MLP (fc1, fc2) at step index 0: 4 linear layers fewer.
    assert linear_calls("ddim") - linear_calls("lazydit-static") == 4


def test_export_command_writes_sampler_forward_etrecords_and_manifest(tmp_path, monkeypatch):
    from lazydit.static import save_schedule
    from programs import SKIP_SCHEDULE

    monkeypatch.setattr("harness.models.load_model", lambda *args, **kwargs: tiny_model())
    save_schedule(SKIP_SCHEDULE[:1], tmp_path / "schedule.pt")
    out = tmp_path / "lazy.pte"
    code = main(["export", "--model", "tiny", "--method", "lazydit-static", "--method-args",
                 json.dumps({"schedule": str(tmp_path / "schedule.pt")}), "--steps", "1", "--batch", str(IMAGES),
                 "--out", str(out)])  # one step keeps the lowering short
    assert code == 0
    for name in ("lazy.pte", "lazy.etrecord", "lazy.forward.pte", "lazy.forward.etrecord", "lazy.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    manifest = json.loads((tmp_path / "lazy.json").read_text())
    assert manifest["method"] == "lazydit-static" and manifest["steps"] == 1
    assert manifest["programs"]["sampler"]["delegated_subgraphs"] > 0  # XNNPACK runs part of it
    x, t, y = forward_inputs(tiny_model(), IMAGES, cfg=True)
    with torch.no_grad():
        eager = ForwardProgram(tiny_model(), CFG)(x, t, y)
    check_parity(run_program(tmp_path / "lazy.forward.pte", [x, t, y])[0], eager, "forward")


@pytest.mark.parametrize("method", ["lazydit", "teacache", "fbcache", "toca"])
def test_data_dependent_methods_are_refused_with_the_reason(method):
    policy = CASES[method].typical(tiny_model(), None) if method.startswith("lazydit") else create_policy(method)
    with pytest.raises(ValueError, match="decides from the data while sampling") as err:
        check_exportable(policy)
    assert "\n" not in str(err.value) and "lazydit-static" in str(err.value)


def test_export_command_refuses_a_dynamic_method_in_one_line(tmp_path, capsys):
    code = main(["export", "--model", "embedded/digits-8", "--method", "fbcache", "--steps", "4",
                 "--out", str(tmp_path / "f.pte")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'fbcache' cannot be exported" in err
    assert not (tmp_path / "f.pte").exists()


def test_stochastic_samplers_are_refused():
    with pytest.raises(ValueError, match="sampler='ddpm'"):
        check_exportable(create_policy("ddim"), sampler="ddpm")


@pytest.mark.parametrize("method", sorted(CASES))  # the shipped methods (tests may register their own)
def test_static_decisions_flag_agrees_with_the_method_contract_cases(method):
    assert METHODS.get(method).static_decisions == CASES[method].static
    assert (method in static_methods()) == CASES[method].static


@pytest.mark.parametrize("method", sorted(name for name, case in CASES.items() if case.static))
def test_every_static_method_traces_to_a_graph_equal_to_its_eager_sampler(method, tmp_path):
    """The traced program (before lowering, which is method-agnostic) reproduces the eager latents."""
    from harness.export import SamplerProgram
    from method_cases import STEPS as CASE_STEPS

    model, (noise, labels) = tiny_model(), inputs()
    make = CASES[method].typical
    traced = torch.export.export(SamplerProgram(model, make(model, tmp_path), CASE_STEPS, CFG), inputs(seed=5))
    eager = sample(model, labels.tolist(), [0] * IMAGES, steps=CASE_STEPS, cfg_scale=CFG, method=make(model, tmp_path),
                   noise=noise, decode=False, batch_invariant=False).latents
    torch.testing.assert_close(traced.module()(noise, labels), eager, rtol=1e-5, atol=1e-5 * eager.abs().max().item())
