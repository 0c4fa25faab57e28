"""Anderson acceleration (type II, per neuron, safeguarded) of a fixed-point iteration zeta <- T(zeta).

ADMM is a fixed-point iteration in zeta = (relaxed point + scaled dual): the whole state (Z, Dz, W, Dw) is
(Proj(zeta_z), zeta_z - Proj(zeta_z), soft(zeta_w), zeta_w - soft(zeta_w)). Anderson acceleration replaces
T(zeta_k) by the combination of the last `memory` images whose residuals g = T(zeta) - zeta cancel best:

    gamma = argmin ||g_k - dG gamma||,    zeta_{k+1} = T(zeta_k) - dF gamma

(dG, dF: differences of consecutive residuals and images), one small least-squares problem per neuron, since
the neurons are independent programs (Walker & Ni 2011; Zhang, O'Donoghue & Boyd 2020 for the safeguard SCS
uses). Its normal equations need dG^T dG and dG^T g_k; each step adds one difference d = g_k - g_{k-1} and
measures only its products with the memory, dG^T d: the Gram matrix gets d's row and column, and
dG^T g_k = dG^T g_{k-1} + dG^T d but for d's own slot, whose d^T g_k is measured (a slot's entry is updated
this way at most `memory` - 1 times before it is measured afresh). One pass over the memory a step, not two.

Safeguard: when the residual after an accelerated step grew by more than `safeguard` times, that neuron falls back
to the plain image of the previous point and its memory is cleared. Progress guard: a neuron whose residual at the
plain steps (the checks) has not halved in STALLED_STEPS of them iterates plainly from then on; accelerated steps
that each shrink the residual a little can stall it (measured on squeeze-and-excitation layers with 8 samples
beside a bias row 1e11 times cheaper than the other weights: 10,000 iterations against 1,400 plain).
Vectors of neuron m are row m of zeta_z (M x P) with column m of zeta_w (N x M).
"""

from __future__ import annotations

from array_api_compat import device as device_of

from .arrays import assign_difference, replace_rows, squared_norms

#: Plain steps (checks) without the residual halving after which a neuron stops being accelerated.
STALLED_STEPS = 20


class Anderson:
    def __init__(self, be, memory: int, safeguard: float = 1.0, coupled: bool = False):
        self.be, self.xp, self.memory, self.safeguard, self.coupled = be, be.xp, memory, safeguard, coupled
        self.zeta = None  # the current point (zeta_z, zeta_w)
        self.origin = None  # zeta_0 (start)
        self.previous = None  # (g_z, g_w^T, f_z, f_w^T) at the previous point
        self.dG = self.dF = None  # ((M, memory, P), (M, memory, N)) each
        self.gram = None
        self.projections = None  # (M, memory): dG^T g at the current point
        self.valid = None  # (M, memory): 1 where a slot holds a difference of that neuron's current memory, else 0
        self.identity = self.ridge = None  # constants of the memory, made with it
        self.slot = 0
        self.accelerated = None  # per neuron: was the current point an accelerated one
        self.fallback = None  # plain image of the previous point, used when a step is rejected
        self.fresh = None  # neurons whose previous residual is unknown (after a rejection): record no difference
        self.enabled = None  # per neuron: still accelerated (the progress guard)
        self.reference = self.waiting = None  # per neuron: the residual to halve, and plain steps since it was set

    def _norms(self, g_z, g_wT):
        xp = self.xp
        norms = squared_norms(xp, g_z, 1) + squared_norms(xp, g_wT, 1)
        return xp.zeros_like(norms) + xp.sum(norms) if self.coupled else norms

    def start(self, zeta_z, zeta_w) -> None:
        """The iteration's first point zeta_0, which step_by's first residual is measured from."""
        self.origin = (zeta_z, zeta_w)

    def step(self, f_z, f_w, accelerate: bool):
        """Given the plain image T(zeta_k) = (f_z, f_w), return zeta_{k+1}. f_z and f_w are the caller's
        temporaries: a rejected neuron's rows of them may be overwritten. The first image is taken as it is and
        the memory starts at the second: the first step, a jump unlike the others, made the iterates 1e6 times
        more sensitive to rounding when it was recorded (random cascade layers, X changed by 1e-15: the weights by
        1e-7 against 4e-14, and up to 50% more iterations)."""
        if self.zeta is None:
            self.zeta = (f_z, f_w)
            return f_z, f_w
        return self._step(f_z, f_w.T, f_z - self.zeta[0], f_w.T - self.zeta[1].T, accelerate)

    def step_by(self, g_z, g_w, accelerate: bool):
        """step() given the residual g = T(zeta_k) - zeta_k instead of the image (zeta_0 given to start()): the
        image is zeta_k + g, one pass over the M x P arrays less than a caller forming the image and this
        class the residual."""
        if self.zeta is None:  # the origin is not kept: it is an M x P array
            (origin_z, origin_w), self.origin = self.origin, None
            return self.step(origin_z + g_z, origin_w + g_w, accelerate)
        return self._step(self.zeta[0] + g_z, self.zeta[1].T + g_w.T, g_z, g_w.T, accelerate)

    def _step(self, f_z, f_wT, g_z, g_wT, accelerate: bool):
        xp = self.xp
        norms = self._norms(g_z, g_wT)
        M = f_z.shape[0]
        if self.enabled is None:
            self.enabled = xp.ones(M, dtype=xp.bool, device=device_of(f_z))
            self.reference = xp.full((M,), xp.inf, dtype=norms.dtype, device=device_of(f_z))
            self.waiting = xp.zeros_like(norms)
        if self.dG is None:
            shapes = ((M, self.memory, f_z.shape[1]), (M, self.memory, f_wT.shape[1]))
            self.dG = tuple(xp.zeros(shape, dtype=f_z.dtype, device=device_of(f_z)) for shape in shapes)
            self.gram = xp.zeros((M, self.memory, self.memory), dtype=f_z.dtype, device=device_of(f_z))  # dG dG^T
            self.projections = xp.zeros((M, self.memory), dtype=f_z.dtype, device=device_of(f_z))
            self.dF = (xp.zeros_like(self.dG[0]), xp.zeros_like(self.dG[1]))
            self.valid = xp.zeros((M, self.memory), dtype=f_z.dtype, device=device_of(f_z))
            self.identity = xp.eye(self.memory, dtype=f_z.dtype, device=device_of(f_z))[None, ...]
            # Ridge regularization keeps cleared memory slots and near-collinear ones harmless; it must stay
            # above the working precision (float32) to keep the system solvable.
            self.ridge = max(1e-8, 10 * float(xp.finfo(f_z.dtype).eps))
        rejected = None
        if self.previous is not None:
            if self.accelerated is not None:
                rejected = self.accelerated & (norms > self.safeguard**2 * self.previous[4])
            self._record(self.slot % self.memory, g_z, g_wT, f_z, f_wT)
        self.fresh = None
        if not accelerate:
            rejected = None
            self._watch_progress(norms)
        if rejected is not None and self.be.might_be_true(rejected):  # no sync on a device: where() is cheaper
            self.fresh = rejected
            self.clear(rejected)  # no memory: their gamma is 0, the plain image of the previous point
            back_z, back_wT = self.fallback
            f_z, f_wT = replace_rows(xp, f_z, rejected, back_z), replace_rows(xp, f_wT, rejected, back_wT)
        self.previous = (g_z, g_wT, f_z, f_wT, norms)
        self.fallback = (f_z, f_wT)
        if not accelerate or self.slot == 0:
            new_z, new_wT = f_z, f_wT
            self.accelerated = xp.zeros(M, dtype=xp.bool, device=device_of(f_z))
        else:
            new_z, new_wT = self._extrapolate(f_z, f_wT)
            self.accelerated = self.enabled if rejected is None else self.enabled & ~rejected
        self.zeta = (new_z, new_wT.T)
        return self.zeta

    def _record(self, s: int, g_z, g_wT, f_z, f_wT) -> None:
        """Slot s takes the newest differences; the Gram matrix and dG^T g follow (module docstring)."""
        xp, (dG_z, dG_w), (dF_z, dF_w) = self.xp, self.dG, self.dF
        here = (slice(None), s, slice(None))
        assign_difference(xp, dG_z, here, g_z, self.previous[0])
        assign_difference(xp, dG_w, here, g_wT, self.previous[1])
        assign_difference(xp, dF_z, here, f_z, self.previous[2])
        assign_difference(xp, dF_w, here, f_wT, self.previous[3])
        self._mark_slot(s)
        d_z, d_w = dG_z[:, s, :], dG_w[:, s, :]
        column = (dG_z @ d_z[:, :, None] + dG_w @ d_w[:, :, None])[:, :, 0]
        self.gram[:, s, :] = column
        self.gram[:, :, s] = column
        self.projections = self.projections + column
        self.projections[:, s] = xp.vecdot(d_z, g_z) + xp.vecdot(d_w, g_wT)
        self.slot += 1

    def _watch_progress(self, norms) -> None:
        """The progress guard (module docstring), at a plain step whose squared residuals are `norms`."""
        xp = self.xp
        halved = norms <= 0.25 * self.reference
        self.reference = xp.where(halved, norms, self.reference)
        self.waiting = xp.where(halved, 0.0, self.waiting + 1)
        self.enabled = self.enabled & (self.waiting < STALLED_STEPS)

    def _mark_slot(self, s: int) -> None:
        """Slot s now holds every neuron's newest difference, valid but for the `fresh` neurons'."""
        self.valid[:, s] = 1.0 if self.fresh is None else self.xp.astype(~self.fresh, self.valid.dtype)

    def _extrapolate(self, f_z, f_wT):
        """f - dF gamma, gamma solving the ridge-regularized normal equations over each neuron's valid slots
        (the others' rows and columns of the Gram matrix and right-hand side are zeroed, so their gamma is 0)."""
        xp = self.xp
        valid = self.valid[:, :, None]
        gram = self.gram * valid * self.valid[:, None, :]
        rhs = self.projections[:, :, None] * valid
        if self.coupled:  # one least-squares problem for the whole layer
            gram, rhs = xp.sum(gram, axis=0, keepdims=True), xp.sum(rhs, axis=0, keepdims=True)
        trace = xp.linalg.trace(gram)[:, None, None]
        gamma = xp.linalg.solve(gram + (self.ridge * trace + 1e-30) * self.identity, rhs)
        if self.coupled:
            gamma = xp.broadcast_to(gamma, (f_z.shape[0],) + gamma.shape[1:])
        # gamma = 0, the plain step, for a neuron whose system failed or that is no longer accelerated
        gamma = xp.where(xp.isfinite(gamma) & self.enabled[:, None, None], gamma, 0.0)
        gammaT = xp.permute_dims(gamma, (0, 2, 1))
        return f_z - (gammaT @ self.dF[0])[:, 0, :], f_wT - (gammaT @ self.dF[1])[:, 0, :]

    def clear(self, mask) -> None:
        """Forget the memory of the neurons in mask (after a rejected step, a rho change or a new budget): their
        slots are marked invalid, the differences themselves stay until overwritten."""
        if self.dG is None:
            return
        self.valid = self.xp.where(mask[:, None], 0.0, self.valid)
        if self.accelerated is not None:
            self.accelerated = self.accelerated & ~mask

    def rescale(self, changed, zeta) -> None:
        """A change of rho_m divides the scaled duals, so neuron m's current point becomes its row of `zeta`;
        the changed neurons forget their memory (differences across a rescaling are meaningless). The others
        keep theirs: no neuron's iteration depends on another's."""
        if self.zeta is None or not self.be.might_be_true(changed):
            return
        xp = self.xp
        self.clear(changed)
        self.fresh = changed if self.fresh is None else self.fresh | changed
        self.zeta = (xp.where(changed[:, None], zeta[0], self.zeta[0]),
                     xp.where(changed[None, :], zeta[1], self.zeta[1]))
        if self.reference is not None:  # the residual's scale changed with rho: measure progress afresh
            self.reference = xp.where(changed, xp.inf, self.reference)
            self.waiting = xp.where(changed, 0.0, self.waiting)

    def keep(self, index) -> None:
        """Restrict to the neurons still iterating, at positions `index` (an integer array on the device)."""
        if self.zeta is None:
            return
        xp = self.xp

        def rows(array):
            return None if array is None else xp.take(array, index, axis=0)

        self.zeta = (rows(self.zeta[0]), xp.take(self.zeta[1], index, axis=1))
        if self.dG is not None:
            self.dG = tuple(rows(a) for a in self.dG)
            self.dF = tuple(rows(a) for a in self.dF)
            self.gram, self.valid, self.projections = rows(self.gram), rows(self.valid), rows(self.projections)
        if self.previous is not None:
            self.previous = tuple(rows(a) for a in self.previous)
        if self.fallback is not None:
            self.fallback = tuple(rows(a) for a in self.fallback)
        self.accelerated, self.fresh = rows(self.accelerated), rows(self.fresh)
        self.enabled, self.reference, self.waiting = rows(self.enabled), rows(self.reference), rows(self.waiting)


def memory_or_none(be, memory: int, coupled: bool):
    if memory < 0:
        raise ValueError(f"anderson must be >= 0 (0 disables it), got {memory}")
    return Anderson(be, int(memory), coupled=coupled) if memory else None

