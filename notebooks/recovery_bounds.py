# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Exact recovery of a sparse neuron: the sample-complexity phase transition
#
# One neuron with Gaussian inputs $x_p \sim N(0, I_N)$, a true weight vector $w^*$ with $s$ nonzeros, and
# responses $y_p = \mathrm{relu}(w^{*T} x_p)$. Net-Trim at $\epsilon = 0$ solves
#
# $$\min \|u\|_1 \quad \text{s.t.} \quad u^T x_p = y_p \ (y_p > 0), \qquad u^T x_p \le 0 \ (y_p = 0).$$
#
# The NIPS paper (Theorem 3) proves that $w^*$ is the unique solution with probability at least $1 - N^{1-\mu}$
# once $P \ge (11 s + 7)\,\mu \log N$; the journal version sharpens this to $P = O(s \log(N/s))$. This is a
# compressed-sensing phase transition: below, the empirical probability of exact recovery over a grid of $s$ and
# $P$, with both curves drawn over it, then a noisy variant.
#
# What is measured: for each $(s, P)$, the fraction of trials whose solution $u$ has
# $\|u - w^*\| \le 10^{-3} \|w^*\|$, with the ADMM at tight tolerance (all trials of one $P$ are the neurons of
# one layer program), cross-checked against CVXPY + Clarabel on a few points.

# %%
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import solvers

QUICK = os.environ.get("NETTRIM_QUICK") == "1"
FIGURES = Path(os.environ.get("NETTRIM_FIGURES", Path.cwd().parent / "docs" / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
N = 40 if QUICK else 150
TRIALS = 4 if QUICK else 24
SPARSITIES = np.unique(np.linspace(2, N // 6, 5 if QUICK else 12).astype(int))
SAMPLE_COUNTS = np.unique(np.linspace(N // 10, 3 * N, 5 if QUICK else 16).astype(int))
OPTIONS = dict(dtype="float64", rel_tol=1e-7, abs_tol=1e-10, max_iter=4000 if QUICK else 20000)
rng = np.random.default_rng(0)
started = time.perf_counter()


def sparse_weights(s: int, count: int) -> np.ndarray:
    """count columns, each with s standard normal entries at random positions."""
    W = np.zeros((N, count))
    for column in range(count):
        W[rng.choice(N, s, replace=False), column] = rng.standard_normal(s)
    return W


def recovered(U: np.ndarray, W: np.ndarray) -> np.ndarray:
    return np.linalg.norm(U - W, axis=0) <= 1e-3 * np.linalg.norm(W, axis=0)


# %% [markdown]
# ## The phase transition
# For every $P$ one Gaussian $X$ and, as neurons of one layer program, `TRIALS` draws of $w^*$ for each $s$.

# %%
success = np.zeros((len(SPARSITIES), len(SAMPLE_COUNTS)))
cross_check = []
for j, P in enumerate(SAMPLE_COUNTS):
    X = rng.standard_normal((N, P))
    W = np.hstack([sparse_weights(s, TRIALS) for s in SPARSITIES])
    Y = np.maximum(W.T @ X, 0)
    problem = solvers.LayerProblem(X, Y, np.zeros(W.shape[1]), "relu")
    result = solvers.solve(problem, **OPTIONS)
    success[:, j] = recovered(result.U, W).reshape(len(SPARSITIES), TRIALS).mean(axis=1)
    if j in (len(SAMPLE_COUNTS) // 3, 2 * len(SAMPLE_COUNTS) // 3):  # two columns checked against Clarabel
        columns = rng.choice(W.shape[1], 3, replace=False)
        small = solvers.LayerProblem(X, Y[columns], np.zeros(3), "relu")
        reference = solvers.solve(small, backend="cvxpy")
        cross_check.append((int(P), recovered(result.U[:, columns], W[:, columns]).tolist(),
                            recovered(reference.U, W[:, columns]).tolist()))
print("ADMM vs Clarabel (recovered?) on sampled neurons:", cross_check)
assert all(ours == theirs for _, ours, theirs in cross_check), "the ADMM and Clarabel disagree"

# %% [markdown]
# The heatmap with the two curves: $(11 s + 7)\,\mu \log N$ with $\mu = 1$ (the NIPS bound, a sufficient
# condition, so it lies above the transition) and $C s \log(N/s)$ with $C$ fitted to the empirical 50% level.

# %%
s_grid = np.linspace(SPARSITIES.min(), SPARSITIES.max(), 100)
half = np.array([np.interp(0.5, row, SAMPLE_COUNTS) if row.max() >= 0.5 else np.nan for row in success])
ok = np.isfinite(half)
C = float(np.median(half[ok] / (SPARSITIES[ok] * np.log(N / SPARSITIES[ok])))) if ok.any() else np.nan
figure, axis = plt.subplots(figsize=(6.5, 4.5))
image = axis.pcolormesh(SAMPLE_COUNTS, SPARSITIES, success, shading="nearest", cmap="viridis", vmin=0, vmax=1)
axis.plot((11 * s_grid + 7) * np.log(N), s_grid, "w--", label=r"$(11s+7)\,\log N$ (NIPS, $\mu=1$)")
axis.plot(C * s_grid * np.log(N / s_grid), s_grid, "r-", label=rf"${C:.2f}\, s \log(N/s)$ (fitted)")
axis.set(xlim=(0, SAMPLE_COUNTS[-1] * 1.03), ylim=(SPARSITIES[0] - 0.5, SPARSITIES[-1] + 0.5),
         xlabel="samples P", ylabel="nonzeros s",
         title=f"exact recovery probability, N = {N}, {TRIALS} trials per cell")
axis.legend(loc="lower right", fontsize=8)
figure.colorbar(image, label="P(recovered)")
figure.tight_layout()
figure.savefig(FIGURES / "recovery_phase_transition.png", dpi=110)

# %% [markdown]
# The transition is sharp and follows $s \log(N/s)$; the NIPS curve is a valid but loose sufficient condition
# (every cell to its right recovers).

# %% [markdown]
# ## Noisy responses
# $y_p = \mathrm{relu}(w^{*T} x_p) + \sigma z_p$ (on the active samples), with the budget $\epsilon$ set to a
# multiple of the noise norm $\sigma \sqrt{|\Omega|}$: the relative recovery error against the noise level, at a
# sample count well above the transition.

# %%
s, P = int(SPARSITIES[len(SPARSITIES) // 2]), int(SAMPLE_COUNTS[-1])
noise_levels = np.array([0.0, 0.01, 0.03, 0.1] if QUICK else [0.0, 0.003, 0.01, 0.03, 0.1, 0.3])
factors = [1.0, 1.5, 2.0]
X = rng.standard_normal((N, P))
W = sparse_weights(s, TRIALS)
clean = np.maximum(W.T @ X, 0)
errors = np.zeros((len(factors), len(noise_levels)))
for j, sigma in enumerate(noise_levels):
    noisy = np.where(clean > 0, np.maximum(clean + sigma * rng.standard_normal(clean.shape), 1e-12), 0.0)
    noise_norm = np.linalg.norm(noisy - clean, axis=1)
    for i, factor in enumerate(factors):
        problem = solvers.LayerProblem(X, noisy, factor * noise_norm, "relu")
        U = solvers.solve(problem, **OPTIONS).U
        errors[i, j] = np.median(np.linalg.norm(U - W, axis=0) / np.linalg.norm(W, axis=0))
figure, axis = plt.subplots(figsize=(6, 4))
for i, factor in enumerate(factors):
    axis.plot(noise_levels[1:], errors[i, 1:], "o-", label=rf"$\epsilon = {factor}\,\|$noise$\|$")
axis.plot(noise_levels[1:], noise_levels[1:], "k:", label=r"$\sigma$")
axis.set(xscale="log", yscale="log", xlabel=r"noise level $\sigma$", ylabel=r"median $\|u - w^*\| / \|w^*\|$",
         title=f"noisy recovery, N = {N}, s = {s}, P = {P}")
axis.legend(fontsize=8)
figure.tight_layout()
figure.savefig(FIGURES / "recovery_noise.png", dpi=110)
print("noise-free error:", errors[:, 0])
print(f"total time {time.perf_counter() - started:.0f} s")

# %% [markdown]
# The recovery error grows linearly with the noise level (a stable recovery, as the journal version proves), and
# a larger budget trades fit for sparsity (every budget here keeps $w^*$ feasible).
