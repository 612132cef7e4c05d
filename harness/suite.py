"""Suite specs: a TOML file -> typed `Suite` -> the cells of a sweep.

A suite names axes (models x resolutions x step budgets x methods with parameters x
devices x dtypes x batch sizes x seed sets); `Suite.cells()` expands them into `Cell`s,
each with a config hash that identifies its record. Image i of a cell draws its noise
from a seed derived from (the cell's suite seed, i), so every method and step budget of
a suite sees the same images' noise, whatever the batch size.
"""
from __future__ import annotations

import dataclasses
import itertools
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from harness.cache import content_hash
from harness.cluster.config import SlurmConfig

SCHEMA_VERSION = 1
SUITES_DIR = Path(__file__).resolve().parent / "suites"
METRIC_GROUPS = ("quality", "fidelity", "macs", "latency", "memory")
DTYPES = ("float32", "tf32", "bfloat16", "float16")  # tf32: float32 tensors, TF32 matmuls (this cell only)
DEVICE_KINDS = ("cpu", "cuda", "mps")
TEMPLATE_KEYS = ("model", "model_slug", "resolution", "steps", "seed")


# ----------------------------------------------------------------------------------------
#                           from_dict / to_dict for typed dataclasses
# ----------------------------------------------------------------------------------------

class SpecError(ValueError):
    """An invalid suite spec; the message names the key and the accepted values."""


def from_dict(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Builds dataclass `cls` from plain data, rejecting unknown keys and wrong types by name."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{where or cls.__name__} must be a table; got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"unknown key {_key(where, unknown[0])!r}; accepted keys: {', '.join(fields)}")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SpecError(f"missing key {_key(where, missing[0])!r}; required keys: {', '.join(missing)}")
    values = {name: _convert(hints[name], value, _key(where, name)) for name, value in data.items()}
    return cls(**values)


def to_dict(obj: Any) -> Any:
    """Plain JSON/TOML-ready data from a dataclass (tuples become lists); `from_dict` inverts it."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Checks `value` against type hint `tp` (tuples, unions, dicts, nested dataclasses)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _convert(option, value, where)
            except SpecError:
                continue
        raise SpecError(f"{where} = {value!r} has the wrong type; accepted: {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise SpecError(f"{where} must be empty")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{where} = {value!r} must be a list; accepted: {_type_name(tp)}")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise SpecError(f"{where} = {value!r} must be a table")
        return {str(k): _convert(args[1], v, _key(where, k)) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise SpecError(f"{where} = {value!r} has the wrong type; accepted: {_type_name(tp)}")


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"list of {_type_name(args[0])}"
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


# ----------------------------------------------------------------------------------------
#                                  Suite spec sections
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelEntry:
    """One model axis entry; path templates may use {model_slug}, {resolution}, ..."""

    name: str
    resolutions: tuple[int, ...] = ()  # empty: the model's native resolution
    checkpoint: str | None = None  # official .pt (a path, or a file name found in $HARNESS_CHECKPOINT_DIR)
    random_init: bool = False  # benchmark costs on random weights (no quality metrics then)
    evaluator: str | None = None  # quality evaluator: "domain" (embedded), "inception" (ImageNet)
    evaluator_args: dict[str, Any] = field(default_factory=dict)  # keyword options of the evaluator, e.g. { prc_neighborhood = 5 }
    reference: str | None = None  # reference statistics for the evaluator (ADM .npz)


@dataclass(frozen=True)
class MethodEntry:
    """One method with fixed args, optional sweeps (cartesian product), its own step budgets and models."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    steps: tuple[int | str, ...] = ()  # empty: the suite's steps
    models: tuple[str, ...] = ()  # empty: every model of the suite (weights files are often model-specific)
    # empty: the suite's. A batch-coupled method's decisions pool over a batch, so its batch size is part of
    # the setting; its latency is timed on the quality run's first batch (same composition).
    batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class LatencyConfig:
    """The latency protocol of a suite: warm-up runs, timed repeats, images per timed run."""

    warmup: int = 1
    repeats: int = 10
    batch: int = 8
    decode: bool = False  # whether the timed run includes decoding to images
    seed_sets: int = 1  # timed in the first N seed sets only: latency does not depend on the seeds


@dataclass(frozen=True)
class CheckConfig:
    """Regression-gate tolerances: quality within k x seed-to-seed spread (at least `quality_floor`)."""

    quality_k: float = 3.0
    quality_floor: float = 1e-6
    speedup_tolerance: float = 0.25
    # Paired differences (method - full-compute DDIM at the same steps, same seed sets) may move by
    # paired_k x the baseline's 95% half-interval (at least quality_floor).
    paired_k: float = 1.0


@dataclass(frozen=True)
class Suite:
    """A sweep: the axes, how much to sample, what to measure, and how to gate it."""

    name: str
    models: tuple[ModelEntry, ...]
    methods: tuple[MethodEntry, ...]
    steps: tuple[int | str, ...]
    description: str = ""
    seeds: tuple[int, ...] = (0,)  # seed sets: each is an axis value; >= 2 measure seed-to-seed spread
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[str, ...] = ("float32",)
    batch_sizes: tuple[int, ...] = (64,)
    samplers: tuple[str, ...] = ("ddim",)  # "ddim" and / or "ddpm"
    etas: tuple[float, ...] = (0.0,)  # DDIM's eta (0: deterministic); DDPM cells take none (one cell, eta 0)
    num_samples: int | str = 256  # images per cell; "batch": one batch of the cell's size (cost-only suites)
    cfg_scale: float = 1.5  # >= 1; 1 turns guidance off
    metrics: tuple[str, ...] = METRIC_GROUPS
    primary_metric: str = "fid"  # the quality column of matched-budget comparisons and Pareto plots
    paper_sources: tuple[str, ...] = ()  # rows of published_results.csv this suite reproduces
    latency: LatencyConfig = LatencyConfig()
    check: CheckConfig = CheckConfig()
    modes: tuple[str, ...] = ("eager",)  # execution modes (harness.execution): eager, compile[:MODE], cuda-graph
    threads: tuple[int | str, ...] = ()  # CPU thread counts (an int or "all"); empty: torch's setting, not an axis
    compile_backend: str = "inductor"  # torch.compile's backend for "compile" modes
    slurm: SlurmConfig = SlurmConfig()  # job resources for `harness run --executor slurm` (flags override)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Suite":
        data = dict(data)
        data["models"] = [{"name": m} if isinstance(m, str) else m for m in data.get("models", [])]
        data["methods"] = [{"name": m} if isinstance(m, str) else m for m in data.get("methods", [])]
        suite = from_dict(cls, data)
        suite.validate()
        return suite

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def validate(self) -> None:
        """Checks axis values against what the harness accepts; raises one SpecError."""
        from harness.cost.latency import check_protocol
        from harness.diffusion import parse_steps
        from harness.methods import METHODS
        from harness.models import MODELS

        _require(self.models, "models", "at least one model")
        _require(self.methods, "methods", "at least one method")
        for m in self.models:
            _check_name(MODELS, m.name, "models.name")
        model_names = [m.name for m in self.models]
        for method in self.methods:
            _check_name(METHODS, method.name, "methods.name")
            for name in method.models:
                if name not in model_names:
                    raise SpecError(f"methods.models: {name!r} is not one of the suite's models; accepted: "
                                    f"{', '.join(model_names)}")
            accepted = [f.name for f in dataclasses.fields(METHODS.get(method.name).Config)]
            for key in [*method.args, *method.sweep]:
                if key not in accepted:
                    raise SpecError(f"unknown argument {key!r} for method {method.name!r} in methods.args/sweep; "
                                    f"accepted: {', '.join(accepted) or 'none'}")
        for steps in [*self.steps, *(s for m in self.methods for s in m.steps)]:
            try:
                parse_steps(steps)
            except ValueError as err:
                raise SpecError(f"steps: {err}") from None
        from harness.devices import device_kinds

        for device in self.devices:
            if device.split(":")[0] not in device_kinds():
                raise SpecError(f"unknown device {device!r} in devices; accepted: {', '.join(device_kinds())} "
                                "(cuda:N, android:SERIAL)")
        _check_choices(self.dtypes, DTYPES, "dtypes")
        _check_choices(self.metrics, METRIC_GROUPS, "metrics")
        batch_sizes = [*self.batch_sizes, *(b for m in self.methods for b in m.batch_sizes)]
        if self.num_samples != "batch" and (isinstance(self.num_samples, str) or self.num_samples < 1):
            raise SpecError(f"num_samples = {self.num_samples!r}; accepted: a positive integer or 'batch'")
        if any(b < 1 for b in batch_sizes) or self.latency.batch < 1:
            raise SpecError("num_samples, batch_sizes and latency.batch must be positive integers")
        try:
            check_protocol(self.latency.warmup, self.latency.repeats)
        except ValueError as err:
            raise SpecError(f"latency.{err}") from None
        self._check_values()
        try:
            self.slurm.validate()
        except ValueError as err:
            raise SpecError(str(err)) from None
        self._check_execution()
        for key in ("devices", "dtypes", "batch_sizes", "samplers", "etas", "metrics"):
            _require(getattr(self, key), key, "at least one value")
        cells = self.cells()
        if not cells:
            raise SpecError("the suite has no cells: give steps (suite-wide or per method)")
        _check_unique(cells)

    def _check_values(self) -> None:
        """Guidance, seeds, samplers, etas, resolutions and evaluators, named by key, before any cell runs."""
        import torch

        from harness.inputs import check_cfg_scale, check_sampler, check_seeds
        from harness.models import build_model
        from harness.runner import EVALUATORS

        try:
            check_cfg_scale(self.cfg_scale, "cfg_scale")
            check_seeds(self.seeds, "seeds")
            for sampler in self.samplers:
                for eta in self.etas:
                    check_sampler(sampler, eta, "samplers / etas")
            for model in self.models:
                if model.evaluator is not None:
                    EVALUATORS.get(model.evaluator)
                for resolution in model.resolutions:
                    with torch.device("meta"):  # the architecture only: no memory, no weights
                        build_model(model.name, image_size=resolution)
        except (ValueError, LookupError) as err:
            raise SpecError(str(err)) from None

    def _check_execution(self) -> None:
        """Modes and thread counts, named by key."""
        from harness.execution import ExecutionMode, resolve_threads

        try:
            for mode in self.modes:
                ExecutionMode.parse(mode)
            for threads in self.threads:
                resolve_threads(threads)
        except ValueError as err:
            raise SpecError(f"modes / threads: {err}") from None
        _require(self.modes, "modes", "at least one value")

    def refusals(self) -> list[str]:
        """One line per (method, mode, device) the suite names but the method cannot run in (not expanded)."""
        from harness.execution import mode_refusal

        lines = {mode_refusal(mode, m.name, device) for m in self.methods for mode in self.modes for device in self.devices}
        return sorted(line for line in lines if line)

    # ---- expansion ------------------------------------------------------------------------
    def cells(self) -> list["Cell"]:
        """Every cell of the sweep, in a stable order (models, resolutions, methods, args, steps, ...)."""
        from harness.execution import mode_refusal

        cells = []
        for model, method in itertools.product(self.models, self.methods):
            if method.models and model.name not in method.models:
                continue
            for resolution in model.resolutions or (None,):
                for args, steps in itertools.product(_sweep(method), method.steps or self.steps):
                    for device, dtype, batch, (sampler, eta), (i, seed), mode, threads in itertools.product(
                            self.devices, self.dtypes, method.batch_sizes or self.batch_sizes, self.sampler_settings(),
                            enumerate(self.seeds), self.modes, self.threads or (None,)):
                        if mode_refusal(mode, method.name, device):
                            continue  # listed by `refusals()`
                        values = {"model": model.name, "model_slug": slug(model.name), "resolution": resolution,
                                  "steps": steps, "seed": seed}
                        cells.append(Cell(
                            suite=self.name, model=model.name, resolution=resolution,
                            checkpoint=fill(model.checkpoint, values), random_init=model.random_init,
                            evaluator=model.evaluator, evaluator_args=dict(model.evaluator_args),
                            reference=fill(model.reference, values),
                            steps=steps, method=method.name,
                            method_args={k: fill(v, values) for k, v in args.items()},
                            device=device, dtype=dtype, batch_size=batch,
                            num_samples=batch if self.num_samples == "batch" else self.num_samples,
                            cfg_scale=self.cfg_scale, seed=seed, seed_index=i, metrics=self.metrics,
                            latency=self.latency, sampler=sampler, eta=eta, mode=mode, threads=threads,
                            compile_backend=self.compile_backend if mode.startswith("compile") else None,
                        ))
        return cells

    def sampler_settings(self) -> list[tuple[str, float]]:
        """(sampler, eta) pairs: DDIM with each eta, DDPM once (eta does not apply to it)."""
        return [(s, e) for s in self.samplers for e in (self.etas if s == "ddim" else (0.0,))]


def _sweep(method: MethodEntry) -> list[dict[str, Any]]:
    """The method's argument sets: fixed args combined with every point of its sweep grid."""
    keys = sorted(method.sweep)
    return [{**method.args, **dict(zip(keys, point))} for point in itertools.product(*(method.sweep[k] for k in keys))]


def _require(values: tuple, key: str, what: str) -> None:
    if not values:
        raise SpecError(f"{key} is empty; give {what}")


def _check_unique(cells: list["Cell"]) -> None:
    """Repeated axis values (steps = [5, 5], a model listed twice) would run the same cell twice."""
    seen: set[str] = set()
    for cell in cells:
        if cell.config_hash() in seen:
            raise SpecError(f"cell {cell.cell_id()} appears twice; remove the repeated value from its axes")
        seen.add(cell.config_hash())


def _check_name(registry: Any, name: str, key: str) -> None:
    if name not in registry:
        raise SpecError(f"{key}: {registry.unknown_message(name)}")


def _check_choices(values: tuple[str, ...], accepted: tuple[str, ...], key: str) -> None:
    for value in values:
        if value not in accepted:
            raise SpecError(f"unknown value {value!r} in {key}; accepted: {', '.join(accepted)}")


def slug(name: str) -> str:
    """A file-name-safe form of a model name: "embedded/digits-8" -> "embedded-digits-8"."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def fill(value: Any, values: dict[str, Any]) -> Any:
    """Substitutes {model}, {model_slug}, {resolution}, {steps}, {seed} in a string; other values pass."""
    if not isinstance(value, str) or "{" not in value:
        return value
    try:
        return value.format(**values)
    except (KeyError, IndexError) as err:
        raise SpecError(f"unknown placeholder {err} in {value!r}; accepted: {', '.join(TEMPLATE_KEYS)}") from None


# ----------------------------------------------------------------------------------------
#                                          Cells
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One point of a sweep: everything that determines its numbers."""

    suite: str
    model: str
    resolution: int | None  # None: the model's native resolution
    checkpoint: str | None
    random_init: bool
    evaluator: str | None
    evaluator_args: dict[str, Any]
    reference: str | None
    steps: int | str
    method: str
    method_args: dict[str, Any]
    device: str
    dtype: str
    batch_size: int
    num_samples: int
    cfg_scale: float
    seed: int  # the suite seed of this cell's seed set
    seed_index: int  # the seed set's position in the suite's seeds
    metrics: tuple[str, ...]
    latency: LatencyConfig
    sampler: str = "ddim"
    eta: float = 0.0
    mode: str = "eager"  # harness.execution mode
    threads: int | str | None = None  # CPU threads for the cell; None: torch's setting
    compile_backend: str | None = None  # torch.compile's backend ("compile" modes only)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Cell":
        return from_dict(cls, data, "cell")

    def _hashed(self) -> dict[str, Any]:
        """to_dict() without execution fields at their defaults, so records made before they existed keep their hash."""
        data = self.to_dict()
        for key, default in EXECUTION_DEFAULTS.items():
            if data.get(key) == default:
                data.pop(key)
        return data

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def config_hash(self) -> str:
        """sha256 (16 hex digits) of the cell's canonical JSON: equal hashes, equal configurations."""
        return content_hash({"schema": SCHEMA_VERSION, **self._hashed()})

    def variant_hash(self) -> str:
        """The config hash without the seed set: cells that differ only in seeds share it."""
        data = self._hashed()
        data.pop("seed")
        data.pop("seed_index")
        return content_hash({"schema": SCHEMA_VERSION, **data})

    def cell_id(self) -> str:
        """A readable, unique-within-a-suite name: model@res/method(args)/steps[/sampler]/device/dtype/bs/seed."""
        args = ",".join(f"{k}={v}" for k, v in sorted(self.method_args.items()))
        res = self.resolution if self.resolution is not None else "native"
        sampler = "" if (self.sampler, self.eta) == ("ddim", 0.0) else f"/{self.sampler_label()}"
        execution = "".join(f"/{key}={getattr(self, key)}" for key in ("mode", "threads")
                            if getattr(self, key) != EXECUTION_DEFAULTS[key])
        return (f"{self.model}@{res}/{self.method}({args})/steps={self.steps}{sampler}/{self.device}/{self.dtype}"
                f"/bs={self.batch_size}/seed={self.seed}{execution}")

    def sampler_label(self) -> str:
        """"ddim", "ddim(eta=0.5)" or "ddpm"."""
        return f"ddim(eta={self.eta:g})" if self.sampler == "ddim" and self.eta else self.sampler

    def measures(self, group: str) -> bool:
        """Whether this cell measures metric group `group` (latency: only in the first latency.seed_sets)."""
        if group == "latency":
            return group in self.metrics and self.seed_index < self.latency.seed_sets
        return group in self.metrics

    def image_seeds(self, count: int | None = None) -> list[int]:
        """Per-image seeds: image i uses a seed derived from (suite seed, i) only."""
        return [image_seed(self.seed, i) for i in range(self.num_samples if count is None else count)]

    def class_labels(self, num_classes: int, count: int | None = None) -> list[int]:
        """Balanced labels: image i is conditioned on class i mod num_classes."""
        return [i % num_classes for i in range(self.num_samples if count is None else count)]


EXECUTION_DEFAULTS = {"mode": "eager", "threads": None, "compile_backend": None}


def image_seed(suite_seed: int, index: int) -> int:
    """The seed of image `index` in seed set `suite_seed` (numpy SeedSequence, 31 bits)."""
    state = np.random.SeedSequence([int(suite_seed), int(index)]).generate_state(1, dtype=np.uint32)
    return int(state[0] >> 1)




# ----------------------------------------------------------------------------------------
#                                         Loading
# ----------------------------------------------------------------------------------------

def shipped_suites() -> list[str]:
    """Names of the suites shipped in harness/suites/."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def suite_path(name_or_path: str | Path) -> Path:
    """A suite file: a path to a .toml file, or the name of a shipped suite."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"suite file {str(path)!r} does not exist")
        return path
    shipped = SUITES_DIR / f"{name_or_path}.toml"
    if not shipped.is_file():
        raise SpecError(f"unknown suite {str(name_or_path)!r}; accepted: {', '.join(shipped_suites())} or a path to a .toml file")
    return shipped


def load_suite(name_or_path: str | Path) -> Suite:
    """Parses and validates a suite spec.

    Args:
        name_or_path: a shipped suite's name ("smoke") or the path of a .toml file.
    """
    path = suite_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: invalid TOML: {err}") from None
    try:
        return Suite.from_dict(data)
    except SpecError as err:
        raise SpecError(f"{path.name}: {err}") from None
