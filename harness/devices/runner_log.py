"""Parsing the log of ExecuTorch's `executor_runner` (examples/portable/executor_runner).

The runner prints, among other lines (log prefixes such as `I 00:00:00.123 executorch:...] `
vary by build and are ignored):

    Model loaded in 12.5 ms
    Iteration 0 of 10: 3.25 ms
    Model executed successfully 10 time(s) in 32.5 ms.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
LOADED = re.compile(rf"Model loaded in {_NUMBER} ms")
ITERATION = re.compile(rf"Iteration (\d+) of (\d+): {_NUMBER} ms")
EXECUTED = re.compile(rf"Model executed successfully (\d+) time\(s\) in {_NUMBER} ms")


@dataclass(frozen=True)
class RunnerTimings:
    """The runner's own timings: load, each execution, and the total it reports."""

    load_ms: float | None
    iterations_ms: list[float]
    executions: int
    total_ms: float
    per_iteration: bool  # False: the log had only the total, spread evenly over the executions


def parse_runner_log(text: str) -> RunnerTimings:
    """The timings in an `executor_runner` log; ValueError (one line) when there are none.

    Per-iteration lines are used when present; otherwise the total over `executions` is
    spread evenly (the only figure older runners print).
    """
    done = EXECUTED.findall(text)
    if not done:
        last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "<no output>")
        raise ValueError(f"the runner printed no 'Model executed successfully N time(s) in X ms' line; last line: {last!r}")
    executions, total = int(done[-1][0]), float(done[-1][1])
    loaded = LOADED.findall(text)
    iterations = [float(ms) for _, _, ms in ITERATION.findall(text)]
    if iterations and len(iterations) != executions:
        raise ValueError(f"the runner printed {len(iterations)} 'Iteration' lines for {executions} executions")
    return RunnerTimings(load_ms=float(loaded[-1]) if loaded else None,
                         iterations_ms=iterations or [total / executions] * executions,
                         executions=executions, total_ms=total, per_iteration=bool(iterations))
