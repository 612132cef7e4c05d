"""The runner: executes a suite's cells and appends one record per cell.

Per cell: sample with the method policy (`harness.sample`), then quality, fidelity to the
full-compute DDIM reference, MACs from the decision log, latency (method and full DDIM at
the same steps, interleaved, so the speedup is a ratio within one run), memory, laziness
and provenance. Cells whose config hash is already recorded are skipped with `resume`;
a failed cell is reported and the run goes on, then ends with a non-zero status.

Each measurement goes through one small adapter function below, the only place that
knows the entry point of `harness.metrics` / `harness.cost`.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import hashlib
import os
import re
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from harness.cell_files import check_cells, input_files, inputs_changed, relative_args, resolve_args, resolve_path
from harness.devices import is_program_device, torch_device
from harness.execution import ExecutionMode, cell_settings, compiled_model, torch_dtype
from harness.methods import DecisionLog, Policy, create_policy
from harness.models import build_model, load_model
from harness.registry import Registry
from harness.sampling import SampleOutput, sample
from harness.store import RECORDS_FILE, RecordStore
from harness.suite import SCHEMA_VERSION, Cell, Suite

RECORD_SCHEMA = SCHEMA_VERSION
FULL_COMPUTE = "ddim"
SEED_DERIVATION = "numpy.random.SeedSequence([suite_seed, i]).generate_state(1, uint32)[0] >> 1"
MAX_KEPT_BYTES = 256 << 20  # DDIM outputs kept in memory as fidelity references for the rest of the run

# Quality evaluators: name -> fn(images uint8 NHWC, labels, model, cell, reference path, **evaluator_args) -> {metric: value}.
EVALUATORS: Registry[Callable[..., dict[str, float]]] = Registry("quality evaluator")


# ----------------------------------------------------------------------------------------
#                    Adapters: one per measurement (the wiring to harness.metrics/cost)
# ----------------------------------------------------------------------------------------

@EVALUATORS.register("domain")
def domain_quality(images: np.ndarray, labels: list[int], model: nn.Module, cell: Cell, reference: str | None,
                   **options: Any) -> dict[str, float]:
    """Domain FID / KID / precision / recall / conditional accuracy of the embedded models."""
    from harness.metrics.domain import FLOOR_KEY, domain_metrics, floor_available, floor_metrics

    out = domain_metrics(images, model.spec.name, labels=labels, **options)
    # The real-data floor of the same size, with the full-compute cells (seed sets beyond the floor digits: none).
    if cell.method == FULL_COMPUTE and floor_available(model.spec.name, len(images), cell.seed_index):
        out[FLOOR_KEY] = floor_metrics(model.spec.name, len(images), cell.seed_index, **options)
    return out


@EVALUATORS.register("inception")
def inception_quality(images: np.ndarray, labels: list[int], model: nn.Module, cell: Cell, reference: str | None,
                      **options: Any) -> dict[str, float]:
    """FID / sFID / IS / precision / recall against an ADM reference batch."""
    from harness.metrics.quality import compute_quality_metrics

    return compute_quality_metrics(images, reference=reference, device=cell.device, **options)


def default_evaluator(cell: Cell) -> str | None:
    """Embedded models use the domain evaluator, real models Inception; random weights none."""
    if cell.evaluator:
        return cell.evaluator
    if cell.random_init:
        return None
    from harness.models.zoo import is_embedded

    return "domain" if is_embedded(cell.model) else "inception"


def fidelity_metrics(out: SampleOutput, model: nn.Module, cell: Cell, same_run: SampleOutput | None) -> dict[str, Any]:
    """PSNR / SSIM of the images and MSE of the latents against full compute (same seeds, labels, steps, sampler, eta).

    The reference is this run's DDIM cell with the same seeds, steps, sampler and eta when there is one, else
    `full_compute_reference`, sampled once and cached by content hash.
    """
    from harness.metrics.fidelity import FullComputeReference, compute_fidelity_metrics, full_compute_reference

    if same_run is not None:
        reference = FullComputeReference("same-run ddim cell", same_run.latents, same_run.images)
    else:
        reference = full_compute_reference(model, cell.class_labels(model.spec.num_classes), cell.image_seeds(),
                                           cell.steps, cell.cfg_scale, decode=out.images is not None,
                                           device=cell.device, dtype=torch_dtype(cell.dtype), batch_size=cell.batch_size,
                                           sampler=cell.sampler, eta=cell.eta)
    metrics = compute_fidelity_metrics(out.images, out.latents, reference)
    if out.images is not None and reference.images is not None:
        from harness.metrics.fidelity_ci import fidelity_intervals

        metrics.update(fidelity_intervals(out.images, reference.images, domain=default_evaluator(cell) == "domain"))
    return metrics


def macs_metrics(model: nn.Module, decisions: DecisionLog) -> dict[str, float]:
    """MACs per image in both conventions, from the decision log and the model's per-branch cost table."""
    from harness.cost import cost_table, macs_from_log

    return macs_from_log(cost_table(model), decisions)


def timed_run_metrics(model: nn.Module, decisions: DecisionLog) -> dict[str, Any]:
    """What the timed run itself computed: its MACs, skip ratio and MACs-implied speedup over full compute (a)."""
    from harness.cost.macs import MACS_ALL, MACS_ALL_FULL, SKIP_RATIO

    macs = macs_metrics(model, decisions)
    return {"timed_macs": macs, "timed_skip_ratio": macs[SKIP_RATIO],
            "macs_implied_speedup": macs[MACS_ALL_FULL] / macs[MACS_ALL]}


def latency_metrics(run_method: Callable[[], Any], run_ddim: Callable[[], Any] | None, cell: Cell) -> dict[str, Any]:
    """The method's latency and, interleaved in the same run, full DDIM's at the same steps; speedup = ratio."""
    from harness.cost.latency import compare_latency

    fns = {"method": run_method, **({"ddim": run_ddim} if run_ddim else {})}
    scope = "end_to_end" if cell.latency.decode else "sampler"
    lats = compare_latency(fns, cell.device, cell.latency.warmup, cell.latency.repeats, scope, cell.mode)
    out = {**lats["method"].to_dict(), "speedup": 1.0}
    if run_ddim:
        out["ddim"] = lats["ddim"].to_dict()
        out["speedup"] = lats["ddim"].median_s / lats["method"].median_s
    return out


@contextlib.contextmanager
def memory_metrics(device: str) -> Iterator[dict[str, Any]]:
    """Peak RSS and, on CUDA, peak allocated memory of the code inside (filled on exit)."""
    from harness.cost.memory import track_peak_memory

    out: dict[str, Any] = {}
    with track_peak_memory(device) as peak:
        yield out
    out.update(peak.to_dict())


def provenance(cell: Cell, model: nn.Module, ctx: "RunContext") -> dict[str, Any]:
    """Versions, device, threads, TF32, git state, the command, the suite file's and the cell's hashes, its files' sha256."""
    from harness.provenance import collect_provenance, results_exclusions

    out = collect_provenance(files=input_files(cell, ctx.base_dir, model), device=torch_device(cell.device),
                             exclude=results_exclusions(ctx.results_dir))
    out.update(config_hash=cell.config_hash(), command=ctx.command, suite_sha256=ctx.suite_sha256)
    out.update(evaluator_provenance(cell, model))
    return out


def evaluator_provenance(cell: Cell, model: nn.Module) -> dict[str, Any]:
    """Hashes of the quality evaluator's feature extractor and reference statistics."""
    evaluator = default_evaluator(cell) if cell.measures("quality") else None
    if evaluator == "domain":
        from harness.metrics.domain import domain_provenance

        return domain_provenance(model.spec.name)
    return {}


def load_cell_model(cell: Cell, base_dir: Path | None) -> nn.Module:
    """The cell's model: random init, a checkpoint (path relative to the suite file or cwd), or embedded."""
    size = {"image_size": cell.resolution} if cell.resolution is not None else {}
    if cell.random_init:  # adaLN-Zero perturbed: every block has a residual, as in a trained model
        from harness.models.random_weights import perturb_zero_linears

        model = perturb_zero_linears(build_model(cell.model, **size))
    elif cell.checkpoint:
        model = load_model(cell.model, resolve_path(cell.checkpoint, base_dir), image_size=cell.resolution)
    else:
        model = load_model(cell.model)
    if cell.resolution is not None and model.spec.image_size != cell.resolution:
        raise ValueError(f"{cell.model} has resolution {model.spec.image_size}; the suite asks for {cell.resolution}")
    return model.eval()


# ----------------------------------------------------------------------------------------
#                                       One cell
# ----------------------------------------------------------------------------------------

@dataclass
class RunContext:
    """What cells of one run share: where files and results are, the command, loaded models, references."""

    base_dir: Path | None = None  # the suite file's folder: relative paths are looked up there first
    results_dir: Path | None = None
    command: str | None = None  # the command line that started the run
    suite_sha256: str | None = None  # of the suite file
    models: dict[tuple, nn.Module] = field(default_factory=dict)
    references: dict[tuple, SampleOutput] = field(default_factory=dict)
    # how a cell's images are sampled: `sample_cell`, or e.g. sharded across ranks (harness.cluster.shards)
    sample_images: Callable[..., SampleOutput] | None = None
    compiled: dict[tuple, nn.Module] = field(default_factory=dict)

    def model(self, cell: Cell) -> nn.Module:
        key = (cell.model, cell.resolution, cell.checkpoint, cell.random_init)
        if key not in self.models:
            torch.manual_seed(0)  # random-init models are the same in every run
            self.models[key] = load_cell_model(cell, self.base_dir)
        return self.models[key]

    def runnable(self, cell: Cell, model: nn.Module) -> nn.Module:
        """What the cell samples with: the model, or its regionally compiled twin (built once per run) in a
        "compile" mode (graphs are captured per call, in `measure`)."""
        mode = ExecutionMode.parse(cell.mode)
        if mode.kind != "compile":
            return model
        key = (id(model), mode.compile_mode, cell.compile_backend)
        if key not in self.compiled:
            self.compiled[key] = compiled_model(model, mode.compile_mode, cell.compile_backend or "inductor")
        return self.compiled[key]


def reference_key(cell: Cell) -> tuple:
    return (cell.model, cell.resolution, cell.checkpoint, cell.random_init, str(cell.steps), cell.seed,
            cell.num_samples, cell.cfg_scale, cell.sampler, cell.eta, cell.device, cell.dtype, cell.mode)


def cell_sampling(model: nn.Module, cell: Cell, n: int | None = None, decode: bool = True) -> dict[str, Any]:
    """`sample`'s arguments, the method aside, for the cell's first `n` images (default all)."""
    n = cell.num_samples if n is None else n
    return dict(class_labels=cell.class_labels(model.spec.num_classes, n), seeds=cell.image_seeds(n), steps=cell.steps,
                cfg_scale=cell.cfg_scale, sampler=cell.sampler, eta=cell.eta, device=torch_device(cell.device),
                dtype=torch_dtype(cell.dtype), decode=decode, batch_size=min(cell.batch_size, n))


def sample_cell(model: nn.Module, cell: Cell, method: str | Policy, args: dict[str, Any] | None = None,
                n: int | None = None, decode: bool = True) -> SampleOutput:
    """Samples the cell's first `n` images (default all) with `method` (a name or a ready policy)."""
    return sample(model, method=method, method_args=args, **cell_sampling(model, cell, n, decode))


def run_cell(cell: Cell, ctx: RunContext) -> dict[str, Any]:
    """Runs one cell and returns its record (DESIGN.md "Records").

    Args:
        cell: the cell to run.
        ctx: what the run's cells share (loaded models, DDIM references, the suite file's folder, the command).
    """
    started = dt.datetime.now(dt.timezone.utc)
    model = ctx.model(cell)
    args = resolve_args(cell.method_args, ctx.base_dir)
    policy = create_policy(cell.method, args)
    with cell_settings(cell.dtype, cell.threads, cell.device) as execution:  # TF32 and threads for this cell only
        net = ctx.runnable(cell, model)
        wall = time.perf_counter()
        decode = cell.measures("quality") or cell.measures("fidelity")  # cost-only cells need no VAE
        with memory_metrics(torch_device(cell.device)) as memory:
            out = (ctx.sample_images or sample_cell)(net, cell, policy, decode=decode)
        laziness = {**out.decisions.laziness(), **({"target": policy.target_ratio} if policy.target_ratio is not None else {})}
        metrics = {"sampling_wall_s": time.perf_counter() - wall, "laziness": laziness,
                   **({"memory": memory} if cell.measures("memory") else {}), **measure(cell, ctx, model, policy, out, net)}
    metrics["execution"] = {**execution, **ExecutionMode.parse(cell.mode).to_dict(), "compile_backend": cell.compile_backend,
                            "host_syncs": policy.host_syncs}
    finished = dt.datetime.now(dt.timezone.utc)
    return {
        "schema": RECORD_SCHEMA, "status": "ok", "suite": cell.suite, "cell_id": cell.cell_id(),
        "config_hash": cell.config_hash(), "variant_hash": cell.variant_hash(), "cell": cell.to_dict(),
        "method_parameters": relative_args(policy.parameters(), cell, ctx.base_dir), "model_info": model_info(model),
        "method_info": {"name": policy.name, "paper": policy.paper, "code": policy.code,
                        "faithfulness": policy.faithfulness, "batch_coupled": policy.batch_coupled,
                        "host_syncs_per_step": policy.host_syncs / max(1, policy.run.num_steps) if policy.run else None},
        "seeds": {"suite_seed": cell.seed, "count": cell.num_samples, "derivation": SEED_DERIVATION,
                  "first": cell.image_seeds(min(4, cell.num_samples)), "labels": "i mod num_classes",
                  "sha256": hashlib.sha256(str(cell.image_seeds()).encode()).hexdigest()},
        "metrics": metrics, "provenance": provenance(cell, model, ctx),
        "timestamps": {"started": started.isoformat(), "finished": finished.isoformat(),
                       "wall_s": (finished - started).total_seconds()},
    }


def measure(cell: Cell, ctx: RunContext, model: nn.Module, policy: Policy, out: SampleOutput,
            net: nn.Module | None = None) -> dict[str, Any]:
    """The cell's metric groups: quality, fidelity, MACs and latency, as the cell asks (`net`: what is timed,
    the model or its compiled twin)."""
    net = model if net is None else net
    is_reference = cell.method == FULL_COMPUTE
    if is_reference and out.latents.nbytes + (0 if out.images is None else out.images.nbytes) <= MAX_KEPT_BYTES:
        ctx.references[reference_key(cell)] = out
    metrics: dict[str, Any] = {}
    if cell.measures("quality"):
        evaluator = default_evaluator(cell)
        reference = resolve_path(cell.reference, ctx.base_dir) if cell.reference else None
        metrics["quality"] = {} if evaluator is None else EVALUATORS.get(evaluator)(
            out.images, cell.class_labels(model.spec.num_classes), model, cell, reference, **cell.evaluator_args)
    if cell.measures("fidelity"):
        metrics["fidelity"] = {"reference": "self"} if is_reference else \
            fidelity_metrics(out, model, cell, ctx.references.get(reference_key(cell)))
    if cell.measures("macs"):
        metrics["macs"] = macs_metrics(model, out.decisions)
    if cell.measures("latency") and is_program_device(cell.device):  # an exported program on a runtime / phone
        from harness.devices.cells import program_latency_metrics

        metrics["latency"] = program_latency_metrics(model, policy, cell)
    elif cell.measures("latency"):
        # A batch-coupled method decides on its batch: time exactly the quality run's first batch.
        images = min(cell.batch_size if policy.batch_coupled else cell.latency.batch, cell.num_samples)
        kwargs = cell_sampling(model, cell, images, cell.latency.decode)  # outside the timer
        timed: dict[str, SampleOutput] = {}
        run_method = lambda: timed.update(out=sample(net, method=policy, **kwargs))  # noqa: E731
        run_ddim = None if is_reference else (lambda: sample(net, method=FULL_COMPUTE, **kwargs))
        if cell.mode == "cuda-graph":  # replays of one captured batch; the schedule's log is the sampling run's
            from harness.graphs import graphed_sampling

            run_method = graphed_sampling(net, policy, None, **kwargs)
            run_ddim = None if is_reference else graphed_sampling(net, FULL_COMPUTE, None, **kwargs)
            timed["out"] = out
        metrics["latency"] = {**latency_metrics(run_method, run_ddim, cell), "images": images,
                              **timed_run_metrics(model, timed["out"].decisions)}
    if policy.batch_coupled:
        metrics["batch_composition"] = {"batch_size": cell.batch_size, "images": "consecutive seeds in order",
                                        "timed": "the quality run's first batch"}
    return metrics


def model_info(model: nn.Module) -> dict[str, Any]:
    spec = model.spec
    return {"name": spec.name, "image_size": spec.image_size, "latent_size": spec.latent_size,
            "in_channels": spec.in_channels, "num_classes": spec.num_classes, "depth": model.depth,
            "hidden_size": model.config.hidden_size, "num_tokens": model.num_tokens,
            "parameters": sum(p.numel() for p in model.parameters())}


# ----------------------------------------------------------------------------------------
#                                        The sweep
# ----------------------------------------------------------------------------------------

@dataclass
class RunSummary:
    ran: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    records_path: Path | None = None
    queued: int = 0  # cells left to jobs that are still queued or running (harness.cluster)

    @property
    def ok(self) -> bool:
        return not self.failed


def select_cells(cells: list[Cell], only: str | None) -> list[Cell]:
    """Cells matching every comma-separated term: `field=glob` (e.g. steps=1?, method=lazy*) or a cell-id substring."""
    if not only:
        return cells
    terms = [t.strip() for t in only.split(",") if t.strip()]
    fields = set(cells[0].to_dict()) if cells else set()

    def matches(cell: Cell, term: str) -> bool:
        if not re.match(r"^[a-z_]+=", term):
            return term in cell.cell_id()
        key, pattern = (s.strip() for s in term.split("=", 1))
        if key not in fields:
            raise ValueError(f"unknown field {key!r} in --only {only!r}; accepted: {', '.join(sorted(fields))}")
        return fnmatch.fnmatchcase(str(getattr(cell, key)), pattern)

    return [c for c in cells if all(matches(c, t) for t in terms)]


def cells_to_run(cells: list[Cell], store: RecordStore, resume: bool, base_dir: Path | None) -> list[Cell]:
    """The cells to run: all, or with `resume` those without a record measured with the same files."""
    done = store.latest(store.read()) if resume else {}
    todo = []
    for cell in cells:
        record = done.get(cell.config_hash())
        changed = inputs_changed(cell, record, base_dir) if record is not None else None
        if changed == []:
            continue
        if changed:
            print(f"re-running {cell.cell_id()}: {', '.join(changed)} changed since its record", file=sys.stderr)
        todo.append(cell)
    return todo


def run_suite(suite: Suite, results_dir: str | os.PathLike, only: str | None = None, resume: bool = False,
              progress: bool = True, base_dir: Path | None = None, suite_file: Path | None = None,
              command: str | None = None) -> RunSummary:
    """Runs the suite's (selected) cells, appending one record per finished cell.

    Every file the cells to run will read is checked first (`check_cells`): a bad file stops
    the run before any cell, not after others ran.

    Args:
        suite: the parsed suite.
        results_dir: records go to results_dir/<suite>/records.jsonl.
        only: a cell filter (see `select_cells`).
        resume: skip cells whose config hash already has a record measured with the same files
            (weights, reference, method files: a changed file makes the record stale).
        progress: show a tqdm bar on stderr.
        base_dir: folder that relative paths are looked up in first (default: the suite file's).
        suite_file: the suite's file, hashed into each record.
        command: the command line to record (default: this process's).
    """
    from harness.provenance import sha256_file

    base_dir = base_dir if base_dir is not None or suite_file is None else Path(suite_file).parent
    store = RecordStore.for_suite(results_dir, suite.name)
    cells = select_cells(suite.cells(), only)
    if not cells:
        raise ValueError(f"--only {only!r} selects none of the suite's {len(suite.cells())} cells")
    summary = RunSummary(records_path=store.path)
    todo = cells_to_run(cells, store, resume, base_dir)
    summary.skipped = len(cells) - len(todo)
    store._prepare()  # fail on an unwritable folder before any work
    check_cells(todo, base_dir)
    ctx = RunContext(base_dir=base_dir, results_dir=Path(results_dir), command=command or shlex.join(sys.argv),
                     suite_sha256=sha256_file(suite_file) if suite_file is not None else None)
    bar = tqdm(todo, desc=suite.name, unit="cell", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    for cell in bar:
        bar.set_postfix_str(cell.cell_id(), refresh=True)
        try:
            record = run_cell(cell, ctx)
        except Exception as err:  # noqa: BLE001  a failed cell is reported, the sweep goes on
            summary.failed.append((cell.cell_id(), f"{type(err).__name__}: {err}"))
            tqdm.write(f"FAILED {cell.cell_id()}: {type(err).__name__}: {err}", file=sys.stderr)
            if os.environ.get("HARNESS_TRACEBACK"):
                traceback.print_exc()
            continue
        store.append(record)
        summary.ran += 1
    bar.close()
    store.compact()
    return summary


__all__ = ["run_suite", "run_cell", "select_cells", "RunSummary", "EVALUATORS", "RECORDS_FILE"]
