"""The files a suite's cells read: where they are, what they hash to, and the checks before a run.

Relative paths in a suite (checkpoints, reference statistics, method files such as lazy
weights) are looked up next to the suite file first. `check_cells` reads every file the
cells of a run will read (without running code in them) before the first cell starts, so a
missing, unreadable, unsafe or mismatched file fails the run before any work, never after
other cells ran for minutes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.suite import Cell


def resolve_path(path: str, base_dir: Path | None) -> str:
    """A relative path is looked up next to the suite file first, then as given."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and base_dir is not None and (base_dir / candidate).exists():
        return str(base_dir / candidate)
    return str(candidate)


def resolve_args(args: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """Method arguments with relative file paths (e.g. lazy weights) looked up next to the suite file first."""
    return {k: resolve_path(v, base_dir) if isinstance(v, str) and v else v for k, v in args.items()}


def relative_args(params: dict[str, Any], cell: Cell, base_dir: Path | None) -> dict[str, Any]:
    """A policy's parameters with the file paths it was given put back as the suite wrote them (no machine paths)."""
    resolved = resolve_args(cell.method_args, base_dir)
    return {k: cell.method_args[k] if k in resolved and isinstance(v, str) and v == resolved[k] else v
            for k, v in params.items()}


def checkpoint_file(cell: Cell, base_dir: Path | None) -> str | None:
    """The weights file a cell will load (None: random init); raises naming what is missing."""
    from harness.models import zoo
    from harness.models.checkpoints import resolve_checkpoint

    if cell.random_init:
        return None
    if cell.checkpoint:
        return str(resolve_checkpoint(cell.model, resolve_path(cell.checkpoint, base_dir), cell.resolution))
    if not zoo.is_embedded(cell.model):
        raise ValueError(f"model {cell.model!r} needs a checkpoint: set models.checkpoint (or random_init = true)")
    entry = zoo.shipped_models().get(zoo.canonical_name(cell.model))
    if entry is None:
        raise FileNotFoundError(f"embedded model {cell.model!r} is not shipped in {zoo.ZOO_DIR / zoo.MANIFEST}")
    return str(zoo.ZOO_DIR / entry["file"])


def input_files(cell: Cell, base_dir: Path | None, model: Any = None) -> dict[str, str | None]:
    """role -> path of the files a cell's numbers depend on beyond its config (weights, reference, method files)."""
    if model is not None:
        checkpoint = getattr(model, "checkpoint_path", None)
    else:
        try:
            checkpoint = checkpoint_file(cell, base_dir)
        except (FileNotFoundError, ValueError):
            checkpoint = None  # the run itself says what is missing
    args = resolve_args(cell.method_args, base_dir)
    return {"checkpoint": checkpoint,
            "reference": resolve_path(cell.reference, base_dir) if cell.reference else None,
            **{f"method_{k}": v for k, v in args.items() if isinstance(v, str) and v and Path(v).is_file()}}


def inputs_changed(cell: Cell, record: dict[str, Any], base_dir: Path | None) -> list[str]:
    """Roles whose file differs from the one the record was measured with (a stale record to re-run)."""
    from harness.provenance import file_hashes

    recorded = record.get("provenance", {}).get("files_sha256", {})
    now = file_hashes(input_files(cell, base_dir))
    return sorted(role for role, sha in now.items() if recorded.get(role) != sha)


def cell_image_size(cell: Cell) -> int | None:
    """The cell's decoded image size when known without loading weights (None: the checkpoint decides)."""
    from harness.models import zoo

    if cell.resolution is not None:
        return cell.resolution
    return zoo.EMBEDDED_ARCHS[zoo.canonical_name(cell.model)]["input_size"] if zoo.is_embedded(cell.model) else None


def check_cells(cells: list[Cell], base_dir: Path | None) -> None:
    """Reads every file the cells will read and builds every policy, before any cell runs.

    Checks: the checkpoint and reference statistics exist and are readable; each method's
    files load without running code and pass the method's own checks; files that record
    what they are for match the cell's model, image size and step count. Raises one
    ValueError / OSError naming the cell and the file.
    """
    from harness.inputs import check_method_files, check_readable
    from harness.methods import create_policy

    done: set[tuple] = set()
    for cell in cells:
        args = resolve_args(cell.method_args, base_dir)
        key = (cell.model, cell.resolution, cell.checkpoint, cell.random_init, cell.reference, cell.method,
               json.dumps(args, sort_keys=True, default=str), str(cell.steps))
        if key in done:
            continue
        done.add(key)
        try:
            checkpoint = checkpoint_file(cell, base_dir)
            if checkpoint is not None:
                check_readable(checkpoint, "checkpoint")
            if cell.reference and cell.measures("quality"):
                check_readable(resolve_path(cell.reference, base_dir), "reference statistics")
            create_policy(cell.method, args)
            check_method_files(args, cell.model, cell_image_size(cell), cell.steps)
        except OSError as err:
            raise type(err)(f"cell {cell.cell_id()}: {err}") from None
        except (ValueError, LookupError) as err:
            raise ValueError(f"cell {cell.cell_id()}: {err}") from None
