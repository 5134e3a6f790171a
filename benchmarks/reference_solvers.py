"""Time the reference's routes to the diffusion on CPU: dense solve, GMRES and the random walk.

For each N, P = transition_matrix(f) with features f [N, 64] and a seed s [N, 21] (K = 21,
VOC's classes), mu = 0.9. Measures closed_form(method="dense"), closed_form(method="iterative")
and random_walk for T = 5 steps (one DifNet walk per step) and for the T at which mu^T reaches
the solvers' tolerance. Prints a table and writes reference_solvers.{json,md} to --output-dir.

    python benchmarks/reference_solvers.py    # N in 1024 4096 9216, float32 and float64
    python benchmarks/reference_solvers.py --sizes 1024 --dtypes float32 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy
import scipy

from reference import attainable_residual, closed_form, random_walk, transition_matrix

FEATURE_DIM = 64
CLASSES = 21
CASCADE_STEPS = 5
LARGEST_REPEATED_DENSE = 4096  # larger dense solves run once: 2/3 N^3 flops on two cores
COLUMNS = {
    "n": "N",
    "dtype": "dtype",
    "dense_s": "dense solve (ms)",
    "iterative_s": "GMRES (ms)",
    "iterative_rel_error": "GMRES rel. error",
    "walk_cascade_s": f"walk T={CASCADE_STEPS} (ms)",
    "walk_converged_steps": "T to tol",
    "walk_converged_s": "walk T to tol (ms)",
    "walk_converged_rel_error": "walk rel. error",
}


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of `repeats` calls of `fn`, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def relative_error(value: numpy.ndarray, reference: numpy.ndarray) -> float:
    """max |value - reference| / max |reference|, in float64."""
    difference = numpy.abs(value.astype(numpy.float64) - reference.astype(numpy.float64))
    return float(difference.max() / numpy.abs(reference).max())


def measure(n: int, dtype: str, mu: float, tol: float, repeats: int, seed: int) -> dict[str, Any]:
    """One row of the table: every route at size `n` in `dtype`."""
    rng = numpy.random.default_rng(seed)
    features = (rng.standard_normal((n, FEATURE_DIM)) * FEATURE_DIM**-0.25).astype(dtype)
    P = transition_matrix(features)
    s = rng.standard_normal((n, CLASSES)).astype(dtype)
    effective_tol = max(tol, attainable_residual(P.dtype, mu))
    steps = math.ceil(math.log(effective_tol) / math.log(mu))
    dense_repeats = repeats if n <= LARGEST_REPEATED_DENSE else 1

    dense_s, dense = median_seconds(lambda: closed_form(P, s, mu), dense_repeats)
    iterative_s, iterative = median_seconds(
        lambda: closed_form(P, s, mu, method="iterative", tol=tol), repeats
    )
    cascade_s, _ = median_seconds(lambda: random_walk(P, s, mu, CASCADE_STEPS), repeats)
    converged_s, walked = median_seconds(lambda: random_walk(P, s, mu, steps), repeats)
    return {
        "n": n,
        "dtype": dtype,
        "dense_s": dense_s,
        "dense_repeats": dense_repeats,
        "iterative_s": iterative_s,
        "iterative_tol": effective_tol,
        "iterative_rel_error": relative_error(iterative, dense),
        "walk_cascade_s": cascade_s,
        "walk_converged_steps": steps,
        "walk_converged_s": converged_s,
        "walk_converged_rel_error": relative_error(walked, dense),
        "repeats": repeats,
    }


def format_cell(key: str, value: Any) -> str:
    if key.endswith("_s"):
        return f"{1e3 * value:.1f}"  # seconds in the JSON, milliseconds in the table
    if key.endswith("_error"):
        return f"{value:.1e}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = "| " + " | ".join(COLUMNS.values()) + " |"
    rule = "| " + " | ".join("---" for _ in COLUMNS) + " |"
    body = ["| " + " | ".join(format_cell(k, row[k]) for k in COLUMNS) + " |" for row in rows]
    return "\n".join([header, rule, *body])


def environment() -> dict[str, Any]:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 9216])
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "float64"], default=["float32", "float64"])
    parser.add_argument("--mu", type=float, default=0.9)
    parser.add_argument(
        "--tol", type=float, default=1e-6, help="GMRES relative residual (raised to what the dtype can reach)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing; the median is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    title = (
        f"Reference solvers on CPU, median of {args.repeats} runs (dense solve once above "
        f"N={LARGEST_REPEATED_DENSE}); K={CLASSES}, d={FEATURE_DIM}, mu={args.mu}, "
        f"GMRES tol={args.tol:g} (floored per dtype); errors relative to the dense solve."
    )
    print(title, *markdown_table([]).splitlines(), sep="\n", flush=True)
    rows = []
    for n in args.sizes:
        for dtype in args.dtypes:
            rows.append(measure(n, dtype, args.mu, args.tol, args.repeats, args.seed))
            print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)

    settings = {
        "mu": args.mu,
        "tol": args.tol,
        "feature_dim": FEATURE_DIM,
        "classes": CLASSES,
        "seed": args.seed,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(), "settings": settings, "rows": rows}
    (args.output_dir / "reference_solvers.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = markdown_table(rows)
    markdown = f"# Reference solvers\n\n{title}\n\n{table}\n"
    (args.output_dir / "reference_solvers.md").write_text(markdown)
    print(f"wrote {args.output_dir / 'reference_solvers.json'} and reference_solvers.md")


if __name__ == "__main__":
    main()
