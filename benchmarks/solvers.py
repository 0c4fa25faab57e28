"""Layer-1 benchmark of LeNet-300-100 on MNIST: our ADMM against CVXPY + SCS and the published algorithm.

One run, same data, same process:
  - "admm": nettrim's ADMM on the CPU (the product);
  - "cvxpy-scs": CVXPY + SCS per neuron, timed on a seeded sample of neurons and scaled to the layer; its l1 is
    compared with the ADMM's l1 on the same neurons;
  - "published": the same ADMM code in the published configuration (solvers.PUBLISHED_OPTIONS: rho = 1 on
    c0-scaled data, stop on ||dU||, return the soft-thresholded iterate), float64 as the authors' NumPy code.
The layer: 784 pixels + bias -> 300 ReLU neurons, P calibration images (seeded), per-neuron budgets
eps_m = g ||y_m||. Writes JSON and a markdown table (benchmarks/results/).

    python benchmarks/solvers.py                 # P = 10,000, g = 0.05 (about 15 minutes with the published run)
    python benchmarks/solvers.py --quick         # seconds: a small P and few neurons, for the test suite
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this file's folder would shadow the `solvers` package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402

import solvers  # noqa: E402
from benchmarks.results_files import benchmark_parser, write_results  # noqa: E402
from nettrim.datasets import load_mnist  # noqa: E402
from nettrim.zoo import trained_lenet_300_100  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def layer_one_problem(samples: int, g: float, seed: int, epochs: int) -> solvers.LayerProblem:
    model = trained_lenet_300_100(epochs=epochs, seed=seed, schedule="constant")  # as measured in docs/benchmarks.md
    images, _ = load_mnist("train")
    chosen = np.random.default_rng(seed).choice(len(images), samples, replace=False)
    X = np.vstack([images[chosen].T.astype(np.float64), np.ones((1, samples))])
    layer = model[0]
    W = np.vstack([layer.weight.detach().numpy().T, layer.bias.detach().numpy()[None]]).astype(np.float64)
    Y = np.maximum(W.T @ X, 0)
    return solvers.LayerProblem(X, Y, solvers.relative_budget(Y, g, per_neuron=True), original_weights=W)


def summary(problem: solvers.LayerProblem, result: solvers.LayerResult, seconds: float) -> dict:
    """The numbers of one run; every one is measured on the returned U."""
    eps = np.asarray(problem.eps)
    live = eps > 0
    response_ratio = np.asarray(result.response_error)[live] / eps[live]
    return {
        "seconds": round(seconds, 3),
        "status": result.status,
        "iterations": result.iterations,
        "l1": result.objective,
        "nonzeros": result.nonzeros,
        "kept_fraction": result.nonzeros / result.U.size,
        "max_fit_over_eps": float(np.max(np.asarray(result.fit)[live] / eps[live])),
        "max_violation_over_max_y": result.max_violation / float(np.abs(problem.Y).max()),
        "max_response_error_over_eps": float(response_ratio.max()),
        "neurons_over_budget_1e-3": int(np.sum(response_ratio > 1 + 1e-3)),
        "neuron_status": result.info.get("neuron_status"),
    } | _certified_gap(result)


def _certified_gap(result: solvers.LayerResult) -> dict:
    """The ADMM's certified lower bound on the optimal l1 (weak duality) and the gap it proves, when it gives one."""
    if result.certified_gap is None:
        return {}
    return {"l1_lower_bound": result.l1_lower_bound, "certified_gap": result.certified_gap}


def sub_problem(problem: solvers.LayerProblem, neurons: np.ndarray) -> solvers.LayerProblem:
    return solvers.LayerProblem(problem.X, problem.Y[neurons], problem.eps[neurons], problem.activation,
                                original_weights=problem.original_weights[:, neurons])


def run(samples: int, g: float, seed: int, epochs: int, scs_neurons: int, published_max_iter: int,
        admm_options: dict) -> dict:
    problem = layer_one_problem(samples, g, seed, epochs)
    N, P, M = problem.shape
    report = {"layer": {"N": N, "P": P, "M": M, "g": g, "budgets": "per neuron, eps_m = g ||y_m||"},
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "numpy": np.__version__},
              "runs": {}}

    print(f"layer 1: N = {N}, P = {P}, M = {M}; ADMM {admm_options} ...", flush=True)
    start = time.perf_counter()
    admm = solvers.solve(problem, **admm_options)
    report["runs"]["admm"] = summary(problem, admm, time.perf_counter() - start) | {"options": admm_options}

    # CVXPY + SCS on a seeded sample of the neurons that are not trivially zero, scaled to the layer.
    live = np.flatnonzero(np.linalg.norm(problem.Y, axis=1) > problem.eps)
    sample = np.sort(np.random.default_rng(seed).choice(live, min(scs_neurons, live.size), replace=False))
    small = sub_problem(problem, sample)
    print(f"ADMM: {admm}\nCVXPY + SCS on {sample.size} neurons ...", flush=True)
    start = time.perf_counter()
    scs = solvers.solve(small, backend="cvxpy", solver="SCS", accuracy="default")
    scs_seconds = time.perf_counter() - start
    admm_on_sample = float(np.abs(admm.U[:, sample]).sum())
    report["runs"]["cvxpy-scs"] = summary(small, scs, scs_seconds) | {
        "neurons_solved": sample.tolist(),
        "seconds_per_neuron": scs_seconds / sample.size,
        "seconds_scaled_to_layer": scs_seconds / sample.size * live.size,
        "admm_l1_on_same_neurons": admm_on_sample,
        "admm_l1_over_scs_l1": admm_on_sample / scs.objective,
    }

    print(f"SCS: {scs}\npublished configuration (max_iter {published_max_iter}) ...", flush=True)
    start = time.perf_counter()
    published = solvers.solve(problem, **solvers.PUBLISHED_OPTIONS, max_iter=published_max_iter, dtype="float64")
    report["runs"]["published"] = summary(problem, published, time.perf_counter() - start) | {
        "max_iter": published_max_iter}

    ours = report["runs"]["admm"]["seconds"]
    report["ratios"] = {
        "scs_layer_seconds_over_admm": report["runs"]["cvxpy-scs"]["seconds_scaled_to_layer"] / ours,
        "published_seconds_over_admm": report["runs"]["published"]["seconds"] / ours,
    }
    return report


def markdown(report: dict) -> str:
    layer = report["layer"]
    lines = [f"Layer 1 of LeNet-300-100 (N = {layer['N']}, M = {layer['M']}, P = {layer['P']:,}, g = {layer['g']}, "
             f"per-neuron budgets), {report['machine']['cpus']} CPU cores.", "",
             "| run | seconds | status | iterations | l1 | nonzeros kept | max fit/eps | max violation/max Y "
             "| neurons over budget |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name, run_ in report["runs"].items():
        seconds = f"{run_['seconds']:.1f}"
        if name == "cvxpy-scs":
            seconds = (f"{run_['seconds_scaled_to_layer']:.0f} (scaled from {len(run_['neurons_solved'])} neurons, "
                       f"{run_['seconds_per_neuron']:.2f} s each)")
        lines.append(f"| {name} | {seconds} | {run_['status']} | {run_['iterations']} | {run_['l1']:.2f} "
                     f"| {run_['kept_fraction']:.1%} | {run_['max_fit_over_eps']:.4f} "
                     f"| {run_['max_violation_over_max_y']:.1e} | {run_['neurons_over_budget_1e-3']} |")
    ratios = report["ratios"]
    scs = report["runs"]["cvxpy-scs"]
    admm = report["runs"]["admm"]
    lines += ["", f"ADMM speed-up: {ratios['scs_layer_seconds_over_admm']:.0f}x over CVXPY + SCS, "
              f"{ratios['published_seconds_over_admm']:.1f}x over the published configuration. "
              f"ADMM l1 / SCS l1 on the same {len(scs['neurons_solved'])} neurons: {scs['admm_l1_over_scs_l1']:.4f}."]
    if "certified_gap" in admm:
        lines.append(f"The ADMM's dual bound proves its l1 within {admm['certified_gap']:.2%} of the optimum (no "
                     f"weights that meet the layer program's constraints have l1 below {admm['l1_lower_bound']:.2f}).")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "P = 400, 2 SCS neurons, 300 published iterations", RESULTS / "solvers.json")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--g", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4, help="training epochs of LeNet-300-100 (cached)")
    parser.add_argument("--scs-neurons", type=int, default=10)
    parser.add_argument("--published-max-iter", type=int, default=10_000)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.scs_neurons, args.published_max_iter = 400, 2, 300
    report = run(args.samples, args.g, args.seed, args.epochs, args.scs_neurons, args.published_max_iter,
                 {"dtype": args.dtype})
    write_results(args.out, report, markdown(report))
    return report


if __name__ == "__main__":
    main()
