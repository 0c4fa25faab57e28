"""Restore neurons' budgets on the supports their sparse iterates found: a polish on the found support (the
published ADMM returns an infeasible sparse iterate: Aghasi, Abdi and Romberg, "Fast Convex Pruning of Deep
Neural Networks", SIAM J. Math. Data Sci. 2020).

Near the optimum the ADMM's sparse iterate w (support S) has an l1 within a fraction of a percent of the optimum,
but it still exceeds the Omega^c bound by about 1e-3 max|Y| on a few dozen samples, and that last part of the
way takes the iteration most of its time. A correction d on S makes the violated samples A of Omega^c hold with a
margin tau and keeps the fit within the budget:

    x_p^T (w + d) = v_p - tau  (p in A),   ||r + X_{S,Omega}^T d|| <= target,   r = (X^T w - y)_Omega.

It is found in two parts. d0 = B (B^T B)^{-1} (v_A - tau - X_A^T w), B = X_{S,A}, is the smallest correction that
meets the equalities. If the fit of w + d0 is over the target, conjugate gradients minimize the fit over
corrections e with B^T e = 0 (the equalities stay met), starting from e = 0 and stopping at the first point of
their path that meets the target: the CG iterates of a least-squares problem grow in norm monotonically
(Steihaug 1983), so that point is a small correction too. Each CG step costs two products with X_{S,Omega}.
Correcting A can push other samples over their bound: they join A and the correction is repeated.

All candidate neurons of a check are repaired together, as one batched computation: a correction on S is a
vector of length N that is zero off S, so X_{S,Omega}^T d is the full product d^T X masked to Omega, and the k
neurons' products are one matrix product; their violated sets are padded to the largest one. The host learns
only, once per round and every few CG steps, whether any neuron is still working: the synchronizations do not
grow with the number of neurons.

Only the corrections' effect d^T X is computed here, in X's precision; the responses of w are given exactly (the
caller measured them in float64), so the float32 data of a float32 solve leave an error of about 1e-7 of the
correction's effect, far below tau.
"""

from __future__ import annotations

import math

from array_api_compat import device as _device

from .samples import SampleBlocks

#: CG steps between two looks (synchronizations) at whether any neuron is still stepping.
STEPS_PER_LOOK = 8


def repair_on_supports(be, X, response, Y, omega, upper, W, target, tau: float, row_scale, rounds: int = 4,
                       max_steps: int = 100):
    """(weights, ok): for each of k neurons, weights with the support of its column of W that keep
    x_p^T w' <= v_p - tau on Omega^c and fit <= target, and whether they were found.

    X: the layer input with its rows divided by row_scale (N,) (the ADMM's equilibrated data, an
    samples.SampleBlocks in float32 or float64: the corrections are smallest in those coordinates); W (N, k),
    float64, and its responses (k, P) measured in float64 are in the layer's coordinates, as are the weights
    returned; Y, omega (k, P), upper (k, P) or the scalar 0, target (k,): the fit each neuron must reach on Omega.
    A neuron is not ok when no correction on its support meets both (as many violated samples as weights, a fit
    out of reach, dependent constraints).
    """
    xp = be.xp
    support = W != 0
    failed = ~xp.any(support, axis=0)
    outside = ~omega
    violated = xp.zeros(omega.shape, dtype=xp.bool, device=be.device)
    weights = W
    for _ in range(rounds):
        fit = _fit(xp, response, Y, omega)
        new = outside & ~violated & (response > upper - tau / 2)  # the corrected ones sit at upper - tau
        working = (xp.any(new, axis=1) | (fit > target)) & ~failed
        violated = violated | (new & working[:, None])
        counts = xp.sum(xp.astype(violated, xp.int64), axis=1)
        failed = failed | (working & (counts >= xp.sum(xp.astype(support, xp.int64), axis=0)))
        working = working & ~failed
        any_working, widest = be.scalars(xp.any(working), xp.max(xp.where(working, counts, 0)))
        if not any_working:
            break
        B, shift = _constraints(be, X, violated, support, int(widest), upper - tau - response)
        inverse, independent = _gram_inverse(xp, B)
        failed = failed | (working & ~independent)
        working = working & independent
        correction = xp.where(working[:, None], _smallest_correction(xp, B, inverse, shift), 0.0)
        residual = xp.where(omega, response - Y, 0.0) + xp.where(omega, _response_of(X, correction), 0.0)
        over = working & (xp.linalg.vector_norm(residual, axis=1) > target)
        step, reached = _within_target(be, X, omega, residual, support, B, inverse, (1 - 1e-6) * target, over,
                                       max_steps)
        failed = failed | (over & ~reached)
        correction = xp.where((working & ~failed)[:, None], correction + step, 0.0)
        weights = weights + correction.T / row_scale[:, None]
        response = response + _response_of(X, correction)
    ok = ~failed & ~xp.any(outside & (response > upper), axis=1) & (_fit(xp, response, Y, omega) <= target)
    return weights, ok


def _fit(xp, response, Y, omega):
    return xp.linalg.vector_norm(xp.where(omega, response - Y, 0.0), axis=1)


def _constraints(be, X, violated, support, width: int, gap):
    """B (k, N, width): each neuron's violated samples' columns of X on its support (padding columns zero), and
    the shifts (k, width) its correction must make there (padding 0)."""
    xp = be.xp
    k = violated.shape[0]
    if width == 0:
        return xp.zeros((k, X.shape[0], 0), dtype=xp.float64, device=be.device), xp.zeros(
            (k, 0), dtype=xp.float64, device=be.device)
    order = xp.argsort(xp.astype(violated, xp.int8), axis=1, descending=True, stable=True)[:, :width]
    valid = xp.arange(width, device=be.device)[None, :] < xp.sum(xp.astype(violated, xp.int64), axis=1)[:, None]
    columns = xp.reshape(X.columns(xp.reshape(order, (-1,))), (X.shape[0], k, width))
    B = xp.permute_dims(xp.astype(columns, xp.float64), (1, 0, 2))
    B = B * xp.astype(support.T, xp.float64)[:, :, None] * xp.astype(valid, xp.float64)[:, None, :]
    return B, xp.where(valid, xp.take_along_axis(gap, order, axis=1), 0.0)


def _gram_inverse(xp, B):
    """((B^T B)^{-1}, independent): per neuron the inverse (padding columns' diagonal set to 1: their shifts are 0;
    None without columns) and whether its columns are independent (eigenvalues above 1e-14 of the largest)."""
    if B.shape[2] == 0:
        return None, xp.ones(B.shape[0], dtype=xp.bool, device=_device(B))
    gram = xp.permute_dims(B, (0, 2, 1)) @ B
    identity = xp.eye(B.shape[2], dtype=B.dtype, device=_device(B))[None, ...]
    padding = xp.sum(B * B, axis=1) == 0
    eigenvalues, eigenvectors = xp.linalg.eigh(gram + identity * xp.astype(padding, B.dtype)[:, None, :])
    large = eigenvalues > 1e-14 * xp.max(eigenvalues, axis=1, keepdims=True)
    inverse = (eigenvectors / xp.where(large, eigenvalues, 1.0)[:, None, :]) @ xp.permute_dims(eigenvectors, (0, 2, 1))
    return inverse, xp.all(large, axis=1)


def _smallest_correction(xp, B, inverse, shift):
    """The least-norm d (k, N) with B_j^T d_j = shift_j for every neuron j."""
    if inverse is None:
        return xp.zeros((B.shape[0], B.shape[1]), dtype=xp.float64, device=_device(B))
    return (B @ (inverse @ shift[:, :, None]))[:, :, 0]


def _response_of(X, D):
    """D X (k, P) in float64 for corrections D (k, N), with the product in X's precision (X is not cast)."""
    xp = X.be.xp
    return xp.astype(X.left_times(xp.astype(D, X.device_dtype)), xp.float64)


def _gradient_of(X, R, support):
    """(X R^T)^T (k, N) in float64, zero off each neuron's support, with the product in X's precision."""
    xp = X.be.xp
    product = X.times_transposed(xp.astype(R, X.device_dtype))[0]
    return xp.where(support.T, xp.astype(product.T, xp.float64), 0.0)


def _spread(xp, values, mask, axis: int):
    """An array whose positions `mask` along `axis` hold `values` (in order) and whose others hold zeros."""
    count = values.shape[axis]
    slot = xp.where(mask, xp.cumulative_sum(xp.astype(mask, xp.int64)) - 1, count)
    shape = list(values.shape)
    shape[axis] = 1
    padding = xp.zeros(tuple(shape), dtype=values.dtype, device=_device(values))
    return xp.take(xp.concat([values, padding], axis=axis), slot, axis=axis)


def _within_target(be, X, omega, residual, support, B, inverse, target, running, max_steps: int):
    """(e, reached): for each neuron `running`, the first point e on the CG path of min ||residual + (e^T X)_Omega||
    over corrections on its support orthogonal to its columns of B whose fit is <= target, and whether the path
    reached one (within max_steps); e = 0 for the others. `inverse`: (B^T B)^{-1} (_gram_inverse).

    The path is followed for the running neurons alone, on X's rows in the union of their supports and its columns
    in the union of their Omegas (gathered once from a resident X; a streamed X is used whole): each CG step costs
    two products with that part of X, for all of them together."""
    xp = be.xp
    neurons = xp.nonzero(running)[0]
    rows, samples = xp.any(xp.take(support, neurons, axis=1), axis=1), xp.any(xp.take(omega, neurons, axis=0), axis=0)
    if X.resident is None:  # streamed: the blocks are not gathered
        rows, samples = xp.ones_like(rows), xp.ones_like(samples)
        part = X
    else:
        row_index, sample_index = xp.nonzero(rows)[0], xp.nonzero(samples)[0]
        part = SampleBlocks.on_device(be, xp.take(xp.take(X.resident, row_index, axis=0), sample_index, axis=1))

    def restrict(array, neuron_axis, row_axis=None, sample_axis=None):
        array = xp.take(array, neurons, axis=neuron_axis)
        if row_axis is not None and X.resident is not None:
            array = xp.take(array, row_index, axis=row_axis)
        if sample_axis is not None and X.resident is not None:
            array = xp.take(array, sample_index, axis=sample_axis)
        return array

    e, reached = _conjugate_gradients(
        be, part, restrict(omega, 0, sample_axis=1), restrict(residual, 0, sample_axis=1), restrict(support, 1, 0),
        restrict(B, 0, 1), None if inverse is None else restrict(inverse, 0), restrict(target, 0), max_steps)
    return _spread(xp, _spread(xp, e, rows, axis=1), running, axis=0), _spread(xp, reached, running, axis=0)


def _conjugate_gradients(be, X, omega, residual, support, B, inverse, target, max_steps: int):
    """_within_target's CG path for every neuron of the arguments (X the operator, the others restricted to it),
    in units of each neuron's residual norm (the path is linear in the residual and target: the products run in
    X's precision, and float32 overflowed on responses of 1e-11)."""
    xp = be.xp
    unit = xp.sqrt(xp.sum(residual * residual, axis=1))
    unit = xp.where(unit > 0, unit, 1.0)
    residual, target = residual / unit[:, None], target / unit

    def projected(v):  # onto the complement of span(B_j): the equalities B_j^T e = 0 stay met
        if inverse is None:
            return v
        return v - (B @ (inverse @ (xp.permute_dims(B, (0, 2, 1)) @ v[:, :, None])))[:, :, 0]

    def dot(a, b):
        return xp.sum(a * b, axis=1)

    running = xp.ones(residual.shape[0], dtype=xp.bool, device=be.device)
    e = xp.zeros((residual.shape[0], X.shape[0]), dtype=xp.float64, device=be.device)
    reached = xp.zeros(running.shape, dtype=xp.bool, device=be.device)
    gradient = projected(_gradient_of(X, residual, support))
    direction = -gradient
    squared_target = target * target
    steps_per_look = 1 if be.on_host else STEPS_PER_LOOK  # on the host a look is free
    for step_number in range(max_steps):
        change = xp.where(omega, _response_of(X, direction), 0.0)
        curvature = dot(change, change)
        running = running & (curvature > 0)
        curvature = xp.where(running, curvature, 1.0)
        longest = -dot(gradient, direction) / curvature  # the step to the minimum along `direction`
        # ||residual + a change||^2 = target^2 at the smallest a > 0, when it is reached before `longest`
        b, c = dot(residual, change), dot(residual, residual) - squared_target
        discriminant = b * b - curvature * c
        reach = xp.where(discriminant >= 0, (-b - xp.sqrt(xp.maximum(discriminant, 0.0))) / curvature, math.inf)
        arrives = running & (reach <= longest)
        length = xp.where(arrives, xp.maximum(reach, 0.0), xp.where(running, longest, 0.0))
        e = e + length[:, None] * direction
        reached = reached | arrives
        running = running & ~arrives
        residual = residual + xp.where(running, longest, 0.0)[:, None] * change
        previous = dot(gradient, gradient)
        gradient = projected(_gradient_of(X, residual, support))
        ratio = dot(gradient, gradient) / xp.where(previous > 0, previous, 1.0)
        direction = xp.where(running[:, None], -gradient + ratio[:, None] * direction, 0.0)
        if (step_number + 1) % steps_per_look == 0 and not be.scalars(xp.any(running))[0]:
            break
    return e * unit[:, None], reached
