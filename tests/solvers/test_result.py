"""LayerResult.info has a written schema (solvers/result.py: ResultInfo): every key a backend fills is in it."""

import numpy as np
import pytest

import solvers
from solvers.memory import memory_limit_for
from solvers.result import ResultInfo


def problem(per_neuron=True, relu=True, copies=False):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 80))
    if copies:
        X[1] = X[0]
    Z = rng.standard_normal((4, 12)) @ X
    Y = np.maximum(Z, 0) if relu else Z
    eps = 0.1 * (np.linalg.norm(Y, axis=1) if per_neuron else np.linalg.norm(Y))
    return solvers.LayerProblem(X, Y, eps, activation="relu" if relu else "linear")


@pytest.mark.parametrize(("program", "options"), [
    (problem(), {}), (problem(per_neuron=False), {}), (problem(relu=False), {}), (problem(copies=True), {}),
    (problem(), {"reweight": 1}), (problem(), {"memory_limit": memory_limit_for(problem(), 2)}),
    (problem(), {"backend": "cvxpy"})])
def test_every_info_key_is_documented(program, options):
    result = solvers.solve(program, **options)
    assert set(result.info) <= set(ResultInfo.__annotations__), set(result.info) - set(ResultInfo.__annotations__)
