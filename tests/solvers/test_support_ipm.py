"""The interior point on a neuron's support (solvers/support_ipm.py) against Clarabel on its whole program."""

import numpy as np
import pytest
from scipy.optimize import linprog

from instances import random_problem
from solvers import LayerProblem, acceptance, samples, solve, support_ipm
from solvers.arrays import backend
from solvers.problem import column_l1
from solvers.samples import SampleBlocks
from solvers.support_ipm import LayerX, solve_on_support


def _neuron(problem, m=0, tau=1e-9):
    P = problem.shape[1]
    upper = np.zeros(P) if problem.upper is None else problem.upper[m]
    l1 = np.ones(problem.shape[0]) if problem.l1_weights is None else problem.l1_weights[:, m]
    return dict(y=problem.Y[m], omega=problem.omega[m], upper=upper, eps=float(np.atleast_1d(problem.eps)[m]),
                cost=l1, tau=tau)


def _wrong_support(optimum, seed):
    """Weights on the optimum's support less its two smallest weights plus three others: a support the ADMM
    could have found, which the working set must mend."""
    rng = np.random.default_rng(seed)
    support = np.flatnonzero(np.abs(optimum) > 1e-8 * np.abs(optimum).max())
    kept = support[np.argsort(np.abs(optimum[support]))[2:]]
    extra = rng.choice(np.setdiff1d(np.arange(optimum.size), support), 3, replace=False)
    weights = np.zeros_like(optimum)
    weights[kept] = optimum[kept]
    weights[extra] = 1e-3
    return weights


def _solved(problem, weights, gap_allowed=1e-4):
    X = LayerX(SampleBlocks.on_device(backend("cpu"), problem.X), backend("cpu"), np.linalg.norm(problem.X, axis=1))
    return solve_on_support(_neuron(problem), X, weights, gap_allowed)


@pytest.mark.parametrize("seed, activation, cascade", [(0, "relu", False), (1, "relu", True), (2, "linear", False)])
def test_the_working_set_reaches_the_optimum_and_its_bound_proves_it(seed, activation, cascade):
    problem = random_problem(seed, N=30, P=300, M=1, per_neuron=True, activation=activation, cascade=cascade)
    reference = solve(problem, backend="cvxpy", solver="CLARABEL")
    optimum = float(np.abs(reference.U[:, 0]).sum())
    weights, bound = _solved(problem, _wrong_support(reference.U[:, 0], seed))
    objective = float(np.abs(weights).sum())
    assert bound <= optimum * (1 + 1e-7)  # weak duality: a lower bound, up to Clarabel's optimum's accuracy
    # An interior point's duals hold its gap to 1e-9 in total, but each weight's |(X lam)_i| = c_i to about 1e-5,
    # which the bound's scaling into the box takes off (the ADMM's gap tolerance is 5e-3)
    assert objective - bound <= 1e-4 * objective
    assert objective == pytest.approx(optimum, rel=1e-5)
    measured = problem.evaluate(weights[:, None])
    assert float(np.asarray(measured["fit"])[0]) <= problem.eps[0]
    assert measured["max_violation"] <= 0.0
    assert np.sum(weights != 0) == np.sum(np.abs(reference.U[:, 0]) > 1e-8 * np.abs(reference.U[:, 0]).max())


def test_a_bound_stopped_early_is_still_a_lower_bound(monkeypatch):
    problem = random_problem(3, N=30, P=300, M=1, per_neuron=True)
    optimum = float(np.abs(solve(problem, backend="cvxpy", solver="CLARABEL").U[:, 0]).sum())
    two_weights = np.ones(problem.shape[0]) * (np.arange(problem.shape[0]) < 2)  # no u on them fits y
    weights, bound = _solved(problem, two_weights)  # the support grows by the fit's error until one does
    assert bound <= optimum * (1 + 1e-7)
    assert float(np.abs(weights).sum()) == pytest.approx(optimum, rel=1e-5)
    monkeypatch.setattr(support_ipm, "MAX_SOLVES", 1)
    assert _solved(problem, two_weights) is None  # no solve left after the support grew
    weights, bound = _solved(problem, _wrong_support(solve(problem, backend="cvxpy", solver="CLARABEL").U[:, 0], 3))
    assert bound <= optimum * (1 + 1e-7)
    assert float(np.abs(weights).sum()) - bound > 1e-3 * optimum  # not proven: the loop was cut short


def test_weighted_objective_and_a_support_too_large_to_solve(monkeypatch):
    plain = random_problem(4, N=30, P=300, M=1, per_neuron=True)
    problem = LayerProblem(plain.X, plain.Y, plain.eps, "relu", original_weights=plain.original_weights,
                           l1_weights=np.random.default_rng(4).uniform(0.5, 2.0, (plain.shape[0], 1)))
    reference = solve(problem, backend="cvxpy", solver="CLARABEL")
    optimum = float(problem.l1_weights[:, 0] @ np.abs(reference.U[:, 0]))
    weights, bound = _solved(problem, _wrong_support(reference.U[:, 0], 4))
    assert float(problem.l1_weights[:, 0] @ np.abs(weights)) == pytest.approx(optimum, rel=1e-6)
    assert bound <= optimum * (1 + 1e-7)
    monkeypatch.setattr(support_ipm, "MAX_SUPPORT", 5)
    assert _solved(problem, _wrong_support(reference.U[:, 0], 4)) is None


def _refusing_every_repair(monkeypatch):
    """Every repair fails (as when the repaired l1 misses the gap tolerance), and is tried at every check; the
    solves below pass gap_patience=20, after which such neurons are solved on their supports, whatever they cost."""
    def refused(self, positions, chosen, weights, response):
        failed = self.xp.zeros(len(chosen), dtype=self.xp.bool, device=self.be.device)
        return self.xp.take(weights, self.be.asarray(chosen), axis=1), failed

    monkeypatch.setattr(acceptance.Acceptance, "_repaired", refused)
    monkeypatch.setattr(acceptance, "REPAIR_WAIT_CHECKS", 1)
    monkeypatch.setattr(support_ipm, "SUPPORT_COST", np.inf)  # every support affordable at once


def _solved_on_supports(problem, **options):
    """Each neuron is solved on its support after FAILED_REPAIRS checks and ends optimal at the optimum."""
    reference = solve(problem, backend="cvxpy", solver="CLARABEL")
    result = solve(problem, **options)
    assert result.info["solved_on_supports"] == problem.shape[2]
    assert list(result.info["neuron_statuses"]) == ["optimal"] * problem.shape[2]
    l1 = column_l1(result.U)
    assert l1 == pytest.approx(column_l1(reference.U), rel=1e-5)
    assert np.all(l1 - np.asarray(result.info["l1_lower_bound"]) <= 1e-4 * l1)
    assert np.all(problem.columns_within_budget(result.U, 0.0, 0.0))
    return result


@pytest.mark.parametrize("seed", [5, 6])
def test_the_iteration_hands_its_stuck_neurons_to_the_interior_point(monkeypatch, seed):
    _refusing_every_repair(monkeypatch)
    _solved_on_supports(random_problem(seed, N=30, P=300, M=3, per_neuron=True), dtype="float32", gap_patience=20)


def test_stuck_neurons_on_the_device(monkeypatch, device):
    _refusing_every_repair(monkeypatch)
    problem = random_problem(7, N=30, P=300, M=3, per_neuron=True, cascade=True)
    _solved_on_supports(problem, device=device, dtype="float32", gap_patience=20)


def test_the_fit_gram_of_some_rows_a_slice_of_samples_at_a_time(monkeypatch):
    rng = np.random.default_rng(0)
    X, chosen, vector = rng.standard_normal((7, 50)), rng.random(50) < 0.5, rng.standard_normal(50)
    chosen[12:18] = False  # a slice without any of them
    rows = np.array([5, 0, 3])
    monkeypatch.setattr(samples, "ROWS_GRAM_ENTRIES", 20)  # slices of 6 samples
    for blocks in (SampleBlocks.on_host(backend("cpu"), X, 16), SampleBlocks.on_device(backend("cpu"), X)):
        gram, product = blocks.rows_gram(rows, chosen, vector)
        part = X[rows][:, chosen]
        assert np.allclose(gram, part @ part.T, rtol=1e-13, atol=1e-13)
        assert np.allclose(product, part @ vector[chosen], rtol=1e-13, atol=1e-13)


def _dead_neuron(seed, N=20, P=300):
    """A neuron negative on every sample (Y = 0, eps = 0) under cascade's V = w^T Xhat < 0: its program is the
    linear program min ||u||_1 s.t. u^T xhat_j <= v_j."""
    rng = np.random.default_rng(seed)
    Xhat = np.vstack([rng.standard_normal((N - 1, P)), np.ones((1, P))])
    w = rng.standard_normal(N) * (rng.random(N) < 0.5)
    w[-1] = -np.max(w[:-1] @ Xhat[:-1]) - 0.1
    return LayerProblem(Xhat, np.zeros((1, P)), np.zeros(1), "relu", upper=(w @ Xhat)[None, :],
                        original_weights=w[:, None])


def _linear_program_optimum(problem):
    """min ||u||_1 s.t. X^T u <= v in u = u+ - u-, by HiGHS's simplex."""
    X, N = problem.X, problem.shape[0]
    answer = linprog(np.ones(2 * N), A_ub=np.hstack([X.T, -X.T]), b_ub=problem.upper[0], bounds=(0, None),
                     method="highs")
    assert answer.status == 0
    return answer.fun, answer.x[:N] - answer.x[N:]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_dead_neuron_its_cuts_alone(seed):
    problem = _dead_neuron(seed)
    optimum, vertex = _linear_program_optimum(problem)
    weights = np.where(np.abs(vertex) > 1e-9, vertex, 0.0)
    weights[np.flatnonzero(weights == 0)[:2]] = 1e-3  # a support the ADMM could have found
    u, bound = _solved(problem, weights)
    assert bound <= optimum * (1 + 1e-7)
    assert float(np.abs(u).sum()) == pytest.approx(optimum, rel=1e-6)
    assert problem.evaluate(u[:, None])["max_violation"] <= 0.0


def test_a_support_is_solved_when_it_is_cheap_or_as_a_rescue():
    """(2 |S|)^3 <= SUPPORT_COST N P = 12 * 30 * 300: supports of up to 23 of N = 30 weights on P = 300 samples;
    a larger one once the neuron has run the iterations after which it is rescued."""
    weights = np.zeros(30)
    weights[:23] = 1.0
    assert support_ipm.affordable(weights, 300, 600, 1_500)
    weights[23] = 1.0
    assert not support_ipm.affordable(weights, 300, 1_499, 1_500)
    assert support_ipm.affordable(weights, 300, 1_500, 1_500)


def test_each_neuron_is_tried_on_its_support_once_and_only_when_few_are_left(monkeypatch):
    """Support solves that prove nothing are not repeated; of 12 neurons, none is tried while more than
    STRAGGLERS = 4 iterate."""
    _refusing_every_repair(monkeypatch)
    tried, left = [], []
    solve_on_supports = acceptance.Acceptance._solve_on_supports

    def failing(neuron, X, weights, gap_allowed):
        tried.append(neuron["y"].tobytes())
        return None

    def counted(self, positions, weights, gap_allowed):
        left.append(self.s.neurons.size)
        return solve_on_supports(self, positions, weights, gap_allowed)

    monkeypatch.setattr(support_ipm, "solve_on_support", failing)
    monkeypatch.setattr(acceptance.Acceptance, "_solve_on_supports", counted)
    solve(random_problem(9, N=30, P=300, M=12, per_neuron=True), dtype="float32", gap_patience=20, max_iter=3000)
    assert tried and len(tried) == len(set(tried))
    assert max(left) <= acceptance.STRAGGLERS
