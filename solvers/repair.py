"""Restore one neuron's budget on the support its sparse iterate found (the "polish" of NETTRIM.md section 4).

Near the optimum the ADMM's sparse iterate w (support S) has an l1 within a fraction of a percent of the optimum,
but it still exceeds the Omega^c bound by about 1e-3 max|Y| on a few dozen samples, and that last part of the
way takes the iteration most of its time. On S, with r = (X^T w - y) on Omega and A the violated samples of
Omega^c, the correction d is the smallest one that makes the violated constraints hold with a margin tau and
keeps the fit within the budget:

    minimize ||d||^2   s.t.   x_p^T (w + d) = v_p - tau  (p in A),   ||r + X_{S,Omega}^T d|| <= target.

Its solutions for a multiplier mu of the fit constraint are d(mu) = argmin ||r + X^T d||^2 + mu ||d||^2 subject
to the equalities: one eigendecomposition of H = X_{S,Omega} X_{S,Omega}^T and an |A| x |A| system per mu;
the fit of d(mu) grows with mu, so a bisection on log mu finds the largest mu whose fit meets the target.
Correcting A can push other samples over their bound: they join A and the correction is repeated.
"""

from __future__ import annotations

import numpy as np


def repair_on_support(xp, X, y, omega, upper, w, target: float, tau: float, rounds: int = 4):
    """Weights w' with the support of w, x_p^T w' <= v_p - tau on Omega^c and fit <= target, or None.

    X (N, P) float64 (the coordinates of w); y, omega, upper: the neuron's rows (upper a row or the scalar 0);
    target: the fit to reach on Omega; tau: the margin below the bound. None when no correction on the support
    meets both (more violated samples than weights, or a fit out of reach).
    """
    support = xp.flatnonzero(w)
    if support.size == 0:
        return None
    X_support = X[support]
    X_omega = X_support[:, omega]
    eigenvalues, Q = xp.linalg.eigh(X_omega @ X_omega.T)
    eigenvalues = xp.maximum(eigenvalues, 0)
    flat = X_support.ravel()
    mu_scale = float(flat @ flat) / support.size  # mean ||x_i||^2 over all samples, on S
    if not mu_scale > 0:
        return None
    outside = ~omega
    violated = xp.zeros(omega.shape, dtype=bool)
    weights = w[support].copy()
    for _ in range(rounds):
        response = weights @ X_support
        new = outside & ~violated & (response > upper - tau / 2)  # the corrected ones sit at upper - tau
        residual = response[omega] - y[omega]
        if not bool(new.any()) and float(xp.linalg.norm(residual)) <= target:
            break
        violated |= new
        if int(violated.sum()) >= support.size:
            return None
        B = Q.T @ X_support[:, violated]
        c = Q.T @ (X_omega @ residual)
        shift = (upper[violated] if np.ndim(upper) else upper) - tau - response[violated]

        def rotated_correction(mu, B=B, c=c, shift=shift):  # Q^T d(mu)
            d = 1.0 / (eigenvalues + mu)
            if B.shape[1] == 0:
                return -(d * c)
            half_multiplier = xp.linalg.solve((B * d[:, None]).T @ B, -(shift + B.T @ (d * c)))
            return -(d * (c + B @ half_multiplier))

        def fit(rotated, residual_squared=float(residual @ residual), c=c):
            # ||r + X^T d||^2 = ||r||^2 + 2 c^T Q^T d + sum_i lambda_i (Q^T d)_i^2, with c = Q^T X r: no product with X
            return float(np.sqrt(max(residual_squared + 2 * float(c @ rotated)
                                     + float((eigenvalues * rotated * rotated).sum()), 0.0)))

        low, high = -8.0, 8.0  # log10(mu / mu_scale)
        if fit(rotated_correction(mu_scale * 10**low)) > target:
            return None
        for _ in range(24):  # log10 mu to 1e-6
            middle = (low + high) / 2
            if fit(rotated_correction(mu_scale * 10**middle)) <= target:
                low = middle
            else:
                high = middle
        weights = weights + Q @ rotated_correction(mu_scale * 10**low)
    response = weights @ X_support
    if bool((outside & (response > upper)).any()) or float(xp.linalg.norm(response[omega] - y[omega])) > target:
        return None
    repaired = xp.zeros_like(w)
    repaired[support] = weights
    return repaired
