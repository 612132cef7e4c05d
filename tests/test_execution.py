"""Execution modes, precision and threads per cell (harness.execution, harness.graphs), on the CPU.

CUDA graphs cannot run here: their selection and refusal logic is tested; the compile path runs for real.
"""
from __future__ import annotations

import pytest
import torch

from harness.cache import content_hash
from harness.execution import (ExecutionMode, cell_settings, compiled_model, mode_refusal, resolve_threads,
                               torch_dtype)
from harness.graphs import graph_refusal, graphed_sampling
from harness.methods import create_policy
from harness.runner import run_suite
from harness.sampling import sample
from harness.store import RecordStore
from harness.suite import SCHEMA_VERSION, Suite, SpecError
from test_runner import TINY, build_tiny, tiny_suite


# ---- modes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, kind, compile_mode", [("eager", "eager", None), ("compile", "compile", "default"),
                                                      ("compile:reduce-overhead", "compile", "reduce-overhead"),
                                                      ("cuda-graph", "cuda-graph", None)])
def test_mode_parses_kind_and_compile_mode(text, kind, compile_mode):
    assert ExecutionMode.parse(text) == ExecutionMode(kind, compile_mode)


@pytest.mark.parametrize("text, named", [("jit", "'jit'"), ("compile:fast", "'fast'"), ("eager:x", "'eager:x'")])
def test_unknown_mode_is_one_line_naming_value_and_accepted(text, named):
    with pytest.raises(ValueError) as err:
        ExecutionMode.parse(text)
    assert "\n" not in str(err.value) and named in str(err.value) and "max-autotune" in str(err.value)


def test_eager_and_compile_are_never_refused():
    for method in ("ddim", "lazydit", "teacache", "fbcache"):
        assert mode_refusal("eager", method, "cpu") is None and mode_refusal("compile", method, "cuda") is None


def test_cuda_graph_is_refused_off_cuda_and_for_data_dependent_methods():
    assert "CUDA device" in mode_refusal("cuda-graph", "ddim", "cpu")
    for method in ("lazydit", "teacache", "fbcache"):
        line = mode_refusal("cuda-graph", method, "cuda")
        assert line and method in line and "\n" not in line
    for method in ("ddim", "lazydit-static", "l2c", "fora", "taylorseer", "toca", "delta-dit", "ab-cache"):
        assert mode_refusal("cuda-graph", method, "cuda:0") is None


def test_graph_capture_refuses_cpu_dynamic_methods_and_host_noise_before_touching_cuda():
    assert "CUDA device" in graph_refusal(create_policy("ddim"), "cpu")
    assert "host" in graph_refusal(create_policy("fbcache"), "cuda")
    assert "ddpm" in graph_refusal(create_policy("ddim"), "cuda", sampler="ddpm")
    assert "eta=0.5" in graph_refusal(create_policy("ddim"), "cuda", eta=0.5)
    assert graph_refusal(create_policy("fora"), "cuda") is None
    with pytest.raises(ValueError, match="CUDA device"):
        graphed_sampling(build_tiny(), "ddim", None, [0], [0], 2, 1.5, "cpu", torch.float32)


# ---- suite axes ----------------------------------------------------------------------------

def test_suite_expands_modes_and_threads_and_lists_refused_modes():
    suite = Suite.from_dict(tiny_suite(methods=["ddim", "fbcache"], modes=["eager", "compile", "cuda-graph"],
                                       threads=[1, "all"], steps=[2]).to_dict())
    cells = suite.cells()
    assert {(c.mode, c.threads) for c in cells} == {(m, t) for m in ("eager", "compile") for t in (1, "all")}
    assert {c.compile_backend for c in cells if c.mode == "compile"} == {"inductor"}
    assert len(suite.refusals()) == 2 and all("cuda-graph" in line for line in suite.refusals())
    assert all("/mode=" not in c.cell_id() for c in cells if c.mode == "eager")


def test_default_execution_fields_leave_a_cells_hash_as_before_they_existed():
    cell = tiny_suite().cells()[0]
    data = cell.to_dict()
    for key in ("mode", "threads", "compile_backend"):
        data.pop(key)
    assert cell.config_hash() == content_hash({"schema": SCHEMA_VERSION, **data})


@pytest.mark.parametrize("key, value", [("modes", ["fast"]), ("threads", [0]), ("threads", ["most"])])
def test_bad_mode_or_thread_count_is_a_spec_error(key, value):
    with pytest.raises(SpecError, match="modes / threads"):
        tiny_suite(**{key: value})


# ---- precision and threads -----------------------------------------------------------------

def test_tf32_is_float32_with_tf32_matmuls_for_the_cell_only():
    before = torch.backends.cuda.matmul.allow_tf32
    assert torch_dtype("tf32") is torch.float32 and torch_dtype("bfloat16") is torch.bfloat16
    with cell_settings("tf32") as settings:
        assert torch.backends.cuda.matmul.allow_tf32 and settings["tf32"]
    with cell_settings("float32") as settings:
        assert not torch.backends.cuda.matmul.allow_tf32 and not settings["tf32"]
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_threads_are_set_for_the_cell_and_restored():
    before = torch.get_num_threads()
    with cell_settings("float32", 1) as settings:
        assert torch.get_num_threads() == 1 == settings["threads"]
    assert torch.get_num_threads() == before
    assert resolve_threads("all") >= 1 and resolve_threads(None) is None


# ---- compile -------------------------------------------------------------------------------

def test_compiled_twin_shares_parameters_and_leaves_the_model_eager():
    model = build_tiny().eval()
    twin = compiled_model(model, backend="eager")
    assert type(model.blocks[0].attn).__name__ == "Attention"
    assert type(twin.blocks[0].attn).__name__ == "OptimizedModule"
    assert twin.blocks[0].attn.qkv.weight is model.blocks[0].attn.qkv.weight
    kwargs = dict(class_labels=[0, 1], seeds=[0, 1], steps=2, cfg_scale=1.5, decode=False)
    for method, args in (("ddim", None), ("fora", {"interval": 2})):
        assert torch.equal(sample(twin, method=method, method_args=args, **kwargs).latents,
                           sample(model, method=method, method_args=args, **kwargs).latents)


def test_large_dit_blocks_compile_too(one_thread):
    from test_large_dit import tiny

    model = tiny().eval()
    twin = compiled_model(model, backend="eager")
    assert type(twin.layers[0].attention).__name__ == "OptimizedModule"
    kwargs = dict(class_labels=[0, 1], seeds=[0, 1], steps=2, cfg_scale=1.5, decode=False)
    for method in ("ddim", "toca"):  # ToCa reads attention probabilities through the compiled module
        assert torch.equal(sample(twin, method=method, **kwargs).latents, sample(model, method=method, **kwargs).latents)


def test_inductor_compiled_sampling_matches_eager_on_cpu():
    model = build_tiny().eval()
    kwargs = dict(class_labels=[0, 1], seeds=[0, 1], steps=2, cfg_scale=1.5, decode=False)
    eager = sample(model, **kwargs).latents
    compiled = sample(compiled_model(model, "default", "inductor"), **kwargs).latents
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_runner_records_mode_threads_and_precision_per_cell(tmp_path):
    suite = tiny_suite(methods=["ddim", "fora"], steps=[2], modes=["eager", "compile"], threads=[1],
                       dtypes=["tf32"], compile_backend="eager", metrics=["macs", "latency"],
                       latency={"warmup": 1, "repeats": 10, "batch": 1})
    summary = run_suite(suite, tmp_path, progress=False)
    assert summary.failed == [] and summary.ran == 4
    records = RecordStore.for_suite(tmp_path, suite.name).read()
    for record in records:
        execution = record["metrics"]["execution"]
        assert execution["mode"] == record["cell"]["mode"] == record["metrics"]["latency"]["mode"]
        assert execution["threads"] == 1 and execution["tf32"] and execution["dtype"] == "tf32"
        assert execution["host_syncs"] == 0
    assert {r["metrics"]["execution"]["compile_backend"] for r in records} == {None, "eager"}
    assert TINY in records[0]["cell_id"]


# ---- records: tables and provenance ----------------------------------------------------------

def test_table_rows_of_other_modes_and_thread_counts_are_their_own_setup():
    from harness.tables import device_label

    assert device_label({"device": "cuda"}) == "cuda"  # records from before the axes: unchanged labels
    assert device_label({"device": "cuda", "mode": "compile:reduce-overhead", "threads": None}) == "cuda/compile:reduce-overhead"
    assert device_label({"device": "cpu", "mode": "eager", "threads": 2}) == "cpu/threads=2"


def test_gpu_clocks_come_from_nvidia_smi_and_are_none_without_it(tmp_path, monkeypatch):
    from harness.provenance import CLOCK_FIELDS, nvidia_clocks

    monkeypatch.setenv("PATH", str(tmp_path))
    assert nvidia_clocks(0) is None
    fake = tmp_path / "nvidia-smi"  # the narrowest stand-in: the tool's CSV answer
    fake.write_text("#!/bin/sh\necho '1980 MHz, 1980 MHz, 2619 MHz, 2619 MHz, 700.00 W, Enabled'\n")
    fake.chmod(0o755)
    clocks = nvidia_clocks(0)
    assert list(clocks) == list(CLOCK_FIELDS) and clocks["clocks.sm"] == "1980 MHz" and clocks["persistence_mode"] == "Enabled"
