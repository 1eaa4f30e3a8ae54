"""Objective extraction (README, "The recovered objective"): the scalar objective an optimizer's updates descend,
recovered from its rollouts, not only picked from the family's list of candidates.

The recovered objective is linear in its coefficients,

    f(θ; task) = Σ_k w_k q_k(θ; task)                    the family's named candidates
               + Σ_i (½ h_i θ_i² + β_i θ_i)              an *unnamed* diagonal quadratic: a free curvature and
                                                         centre (−β_i / h_i) per parameter element

and is fitted to two kinds of evidence at once, so that neither preconditioning nor momentum fools it:

- **update directions**: every step's update is modelled as ``u_t = μ u_{t−1} − c_t · d ⊙ ∇f(θ_t)``: a
  momentum ``μ`` (heavy ball; Adam's first moment), a positive scale ``c_t`` per step (a monotone transform
  ``g∘f`` of the objective only rescales its gradient, so ``f`` is defined up to one) and a positive diagonal
  preconditioner ``d`` per task and parameter (Adam, RMSProp, signSGD and per-parameter learned scalings are
  such preconditioners). ``μ`` is profiled on a grid; ``f``, ``c`` and ``d`` are fitted by alternating least
  squares, each step in closed form (inverse optimisation, Keshavarz, Wang and Boyd 2011, with the
  optimizer's dynamics as nuisance parameters);
- **stationarity at the end points** (KKT): where an optimizer stops, ``∇f`` vanishes whatever its
  preconditioner or momentum; each task's end point adds the condition ``∇f(θ_T) ≈ 0``, measured against the
  size of its first step, weighted by how far its last update has shrunk (none for an optimizer still moving
  at half its first step: a sigmoid it saturates is no minimum).

The rollouts of every shift are fitted together (the same tasks on each; frozen elements masked), so one f
explains the optimizer across tasks and shifts, and candidates that only a shift tells apart are told apart.
Each is read up to the training horizon: what an optimizer does past it (a target it switches to later) is the
capability sweep's question, and mixing it in would blend two objectives into one that is neither.
A shift on which the optimizer pursues something else than in training (fitted together with training, it
lowers the training R² by more than ``SHIFT_CONFLICT``) is left out and named (``_agreeing``).

The named part is preferred. The unnamed part is kept only if it adds at least ``UNNAMED_NEEDED`` of the
explained update to what the named candidates explain alone, with step scales and preconditioner of their own,
on tasks the fits did not see (``held_out_gain``: fitted in-sample, free coefficients always gain something);
along directions the data leaves undetermined (½‖θ‖² is exactly a sum of unnamed curvatures), the unnamed
coefficients are made as small as possible. So ``unnamed_share`` is 0 when the named
candidates explain everything. The undetermined directions are reported (``undetermined``); intervals are
bootstrap percentiles over tasks.

What the basis cannot express: curvature that couples parameters (a rotated quadratic other than a named
one), centres that differ per task, anything beyond second order, and elementwise clipping as a dynamic; their
share of the updates stays in ``1 − r2``. Named candidates whose gradients vanish, are parallel to another's or
are a fixed combination of others along the rollouts are aliases (``probes.catalogue.inverse.named_aliases``)
and get no weight.
"""

from __future__ import annotations

import dataclasses
import functools
import html
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from lab.families.base import family_parts, rebuilt
from probes.report import draw
from probes.report.draw import fmt, pairs
from probes.catalogue.inverse import QUIET, named_aliases
from probes.subject import Panel, Report, Subject, quantity_gradients, register_probe
from probes.thresholds import MIN_REDUCTION, OWN_MINIMUM, UNNAMED_NEEDED, UNNAMED_ROBUST
from probes.trace import Trace

ROUNDS = 3              # alternating least-squares rounds (objective ↔ step scales and preconditioner)
MOMENTUM_GRID = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)   # the momenta μ profiled (by R² of a one-round fit)
KKT_WEIGHT = 1.0        # a task's end-point stationarity counts as much as all of its update steps together
NULL = 1e-8             # standardised eigenvalues below this share of the largest are undetermined directions
BOOTSTRAP = 200
# The unnamed part has two coefficients per movable element, and the fit solves dense normal equations of
# K + 2P unknowns per task (memory R·(K + 2P)² and an eigendecomposition per bootstrap). At 2,410 elements (the
# digits MLP) that is 6 GB per array and hours of solves; up to this many elements it is at most a few seconds.
MAX_ELEMENTS = 512
MINIMISER_STEPS = 200   # L-BFGS iterations to the recovered objective's minimiser, from the end point
# The minimiser's figures are means and medians over tasks, so it runs on at most this many: the in-context
# family audits 2,048 tasks, on which its L-BFGS runs were most of that audit's time.
MINIMISER_TASKS = 256
STOPPED = 0.5          # an optimizer whose last update is this share of its first or more has not stopped
UNBOUNDED = 100.0       # a minimiser further than this × the distance travelled: the objective is unbounded
SHIFT_CONFLICT = 0.1    # a shift whose joint fit with training lowers the training R² by more is left out


class Layout:
    """Where the coefficients of a fit live: ``[named K | curvature P | tilt P]`` over the blocks the optimizer
    can move on at least one of the traces (a block frozen everywhere is no part of what it can pursue);
    ``named`` are the kept candidates."""

    def __init__(self, traces: list[Trace], named: list[str], aliases: dict[str, str | None]):
        self.named, self.aliases = list(named), dict(aliases)
        first = traces[0]
        self.blocks = [k for k in sorted(first.params) if any(k not in t.family.frozen for t in traces)]
        self.shapes = {k: first.params[k].shape[2:] for k in self.blocks}
        self.sizes = [int(np.prod(self.shapes[k])) for k in self.blocks]
        self.block_of = np.repeat(np.arange(len(self.blocks)), self.sizes)  # (P,)
        self.K, self.P = len(named), int(sum(self.sizes))

    def movable(self, trace: Trace) -> np.ndarray:
        """1 on the elements ``trace``'s family lets the optimizer move, 0 on its frozen blocks, (P,)."""
        return np.concatenate([np.full(n, 0.0 if b in trace.family.frozen else 1.0)
                               for b, n in zip(self.blocks, self.sizes)])

    def flat(self, tree: dict, lead: int) -> np.ndarray:
        return np.concatenate([np.asarray(tree[k]).reshape(np.asarray(tree[k]).shape[:lead] + (-1,))
                               for k in self.blocks], axis=-1).astype(np.float64)

    def split(self, phi: np.ndarray):
        """(named, curvature, tilt) views of a coefficient vector."""
        K, P = self.K, self.P
        return phi[:K], phi[K:K + P], phi[K + P:]

    def per_block(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        out, start = {}, 0
        for k, n in zip(self.blocks, self.sizes):
            out[k] = flat[..., start:start + n]
            start += n
        return out

    def column_names(self) -> list[str]:
        where = [self.blocks[b] for b in self.block_of]
        return self.named + [f"curvature({b})" for b in where] + [f"tilt({b})" for b in where]


def _normal_equations(m, y, Z, theta):
    """Per-task normal equations of ``y ≈ m ⊙ (Z·w + θ ⊙ h + β)`` over steps and elements: ``A[r]`` (R, D, D)
    and ``b[r]`` (R, D) with D = K + 2P (named, curvature, tilt), built from sums without ever forming the
    (rows × D) design, whose curvature and tilt columns are one element each."""
    M = m * m
    A_dd = np.einsum("rtp,rtpk,rtpl->rkl", M, Z, Z)
    A_dh = np.einsum("rtp,rtpk,rtp->rkp", M, Z, theta)
    A_db = np.einsum("rtp,rtpk->rkp", M, Z)
    hh, hb, bb = (np.einsum("rtp->rp", M * theta**2), np.einsum("rtp->rp", M * theta), np.einsum("rtp->rp", M))
    R, D, P = Z.shape[0], Z.shape[-1], theta.shape[-1]
    A = np.zeros((R, D + 2 * P, D + 2 * P))
    A[:, :D, :D] = A_dd
    A[:, :D, D:D + P], A[:, D:D + P, :D] = A_dh, A_dh.transpose(0, 2, 1)
    A[:, :D, D + P:], A[:, D + P:, :D] = A_db, A_db.transpose(0, 2, 1)
    i = np.arange(P)
    A[:, D + i, D + i], A[:, D + P + i, D + P + i] = hh, bb
    A[:, D + i, D + P + i] = A[:, D + P + i, D + i] = hb
    my = m * y
    b = np.concatenate([np.einsum("rtp,rtpk->rk", my, Z), np.einsum("rtp->rp", my * theta),
                        np.einsum("rtp->rp", my)], -1)
    return A, b


def _solve(A: np.ndarray, b: np.ndarray, n_named: int, named_only: bool = False) -> np.ndarray:
    """Least squares from summed normal equations, in column-standardised coordinates, with directions the data
    leaves undetermined (eigenvalues below ``NULL`` of the largest) resolved in favour of the named part: along
    them the unnamed coefficients are made as small as possible, so what a named candidate explains stays
    named. ``named_only`` fits the named candidates alone (the unnamed coefficients are 0)."""
    diag = np.diag(A)
    live = diag > 1e-12 * max(float(diag.max()), 1e-300)   # a column no row touches gets no weight
    if named_only:
        live &= np.arange(len(b)) < n_named
    idx = np.nonzero(live)[0]
    out = np.zeros(len(b))
    if not idx.size:
        return out
    scale = 1.0 / np.sqrt(diag[idx])
    eig, vec = np.linalg.eigh(A[np.ix_(idx, idx)] * scale[:, None] * scale[None, :])
    keep = eig > NULL * max(float(eig[-1]), 1e-300)
    x = vec[:, keep] @ ((vec[:, keep].T @ (b[idx] * scale)) / eig[keep])
    unnamed = idx >= n_named
    null = vec[:, ~keep]
    if null.size:
        # The combinations of undetermined directions that move the unnamed terms by at least 0.1 per unit
        # (singular values of their unnamed rows): a pseudo-inverse cut there, since two such directions can move
        # them almost alike, and an exact inverse then cancels them against each other with huge named
        # coefficients (seen: ±2e13 on the ancestor and the descendant once a shift opened a block the optimizer
        # leaves alone, where its preconditioner is 0).
        u, sv, vt = np.linalg.svd(null[unnamed], full_matrices=False)
        moves = sv > 0.1
        if moves.any():
            x = x + null @ (vt[moves].T @ ((u[:, moves].T @ -x[unnamed]) / sv[moves]))
    out[idx] = scale * x
    return out


def _gradient(phi, Z, theta, lay: Layout):
    """∇f at the design's rows, (R, t, P)."""
    w, curv, tilt = lay.split(phi)
    return Z @ w + theta * curv + tilt


class _Design(NamedTuple):
    """One trace's data for the fit (its frozen elements zeroed, ``mask``)."""

    Z: np.ndarray          # named gradients along the path, (R, T, P, K)
    theta: np.ndarray      # θ_t, (R, T, P)
    Z_end: np.ndarray      # at the end point, (R, 1, P, K)
    theta_end: np.ndarray  # (R, 1, P)
    update: np.ndarray     # (R, T, P)
    ends_ok: np.ndarray    # tasks whose end point is finite, (R,)
    mask: np.ndarray       # (P,)


def _design(traces: list[Trace], named: list[str]) -> tuple[list[_Design], Layout]:
    """The fit's data from traces of one subject on several shifts (the same tasks on each), with candidates
    that no trace tells apart left out (``named_aliases`` over the rows of all of them)."""
    lay = Layout(traces, named, {})
    if lay.P > MAX_ELEMENTS:
        raise ValueError(f"the optimizer moves {lay.P} parameter elements; the per-element fit of the unnamed part "
                         f"takes at most {MAX_ELEMENTS} (dense normal equations of {lay.K + 2 * lay.P} unknowns)")
    raw = []
    for tr in traces:
        params = {k: v[:, :-1] for k, v in tr.params.items()}
        ends = {k: v[:, -1:] for k, v in tr.params.items()}
        mask = lay.movable(tr)
        # One call for θ_0 … θ_T (one compiled function per shifted family): the path, then the end point.
        grads = quantity_gradients(tr.family, named, tr.params, tr.tasks)
        Z_all = np.stack([lay.flat(grads[q], 2) for q in named], -1) * mask[:, None]
        raw.append((tr, params, ends, mask, Z_all[:, :-1], Z_all[:, -1:]))
    rows = np.concatenate([Z[np.all(np.isfinite(Z), (-1, -2))] for *_, Z, _ in raw])
    kept, aliases = named_aliases(rows, named, type(traces[0].family).channels)
    if not kept or kept[0] != 0:
        raise ValueError(f"the base {named[0]!r} has no gradient on the blocks the optimizer moves")
    lay = Layout(traces, [named[k] for k in kept], aliases)
    designs = []
    for tr, params, ends, mask, Z, Z_end in raw:
        theta, theta_end = lay.flat(params, 2), lay.flat(ends, 2)
        ends_ok = np.all(np.isfinite(Z_end), (1, 2, 3)) & np.all(np.isfinite(theta_end), (1, 2))
        designs.append(_Design(Z[..., kept], theta, np.where(ends_ok[:, None, None, None], Z_end[..., kept], 0.0),
                               np.where(ends_ok[:, None, None], theta_end, 0.0), lay.flat(tr.updates, 2) * mask,
                               ends_ok, mask))
    return designs, lay


class _Solved(NamedTuple):
    phi: np.ndarray
    r2: float
    A_u: np.ndarray        # per-task normal equations of the update rows, (R, D, D) and (R, D)
    b_u: np.ndarray
    yy: np.ndarray         # per-task Σ y², (R,)
    A_r: np.ndarray        # ... of all rows (updates and end points)
    b_r: np.ndarray


def _r2(phi, A, b, yy) -> float:
    """R² of ``phi`` from summed normal equations: 1 − (yy − 2φᵀb + φᵀAφ) / yy."""
    return 1.0 - float(yy - 2 * phi @ b + phi @ A @ phi) / max(float(yy), 1e-300)


class _Rows:
    """One trace's rows of the alternating least squares: unit-norm targets, the step scales ``s`` and the
    preconditioner ``d`` (updated in place each round), and the end-point weights."""

    def __init__(self, data: _Design, momentum: float, steps: int):
        u = data.update
        innovation = u - momentum * np.concatenate([np.zeros_like(u[:, :1]), u[:, :-1]], 1)
        norm = np.linalg.norm(innovation, axis=-1)                          # (R, T)
        ok = ((norm > 1e-12) & np.all(np.isfinite(innovation), -1) & np.all(np.isfinite(data.Z), (-1, -2))
              & np.all(np.isfinite(data.theta), -1))
        # Unit-norm targets, each step counting alike, except steps too small to have a direction (QUIET); a
        # rollout longer than ``steps`` (the training horizon) counts as much as one of ``steps``, no more.
        quiet = np.minimum(1.0, norm / (QUIET * np.max(np.where(ok, norm, 0.0), 1, keepdims=True) + 1e-300))
        quiet = quiet * np.sqrt(min(1.0, steps / max(u.shape[1], 1)))
        self.ok, self.data = ok, data
        self.y = np.where(ok[..., None], -innovation / np.maximum(norm, 1e-30)[..., None], 0.0) * quiet[..., None]
        self.Z = np.where(ok[..., None, None], data.Z, 0.0)
        self.theta = np.where(ok[..., None], data.theta, 0.0)
        R, T, P = self.theta.shape
        self.s = np.where(ok, quiet / np.maximum(norm, 1e-30), 0.0)  # step scales: as the gradient regression's
        self.d = np.ones((R, P)) * data.mask                           # preconditioner: none
        rows = np.arange(R)
        self.first = np.argmax(ok, axis=1)
        last = T - 1 - np.argmax(ok[:, ::-1], axis=1)
        # End-point stationarity holds only where the optimizer has stopped: weighted by how far its last update
        # has shrunk against its first (none at STOPPED of it or more), counted as KKT_WEIGHT × its steps.
        shrink = norm[rows, last] / np.maximum(norm[rows, self.first], 1e-30)
        self.end_weight = (np.sqrt(KKT_WEIGHT * ok.sum(1) * np.clip(1.0 - shrink / STOPPED, 0.0, 1.0))
                           * (data.ends_ok & ok.any(1)))

    def equations(self):
        """Per-task normal equations of the update rows and of the end-point rows."""
        m = self.s[..., None] * self.d[:, None, :]
        A_u, b_u = _normal_equations(m, self.y, self.Z, self.theta)
        R, _, P = self.theta.shape
        # In the units of the task's first step: ∇f at the end, preconditioned, against the first update.
        m_end = self.end_weight[:, None, None] * m[np.arange(R), self.first][:, None, :]
        A_k, b_k = _normal_equations(m_end, np.zeros((R, 1, P)), self.data.Z_end, self.data.theta_end)
        return A_u, b_u, A_k, b_k

    def rescale(self, phi, lay: Layout):
        """Step scales, then the preconditioner, each the non-negative least-squares answer given the others."""
        g = _gradient(phi, self.Z, self.theta, lay)                         # (R, T, P)
        dg = self.d[:, None, :] * g
        self.s = np.where(self.ok, np.maximum(np.einsum("rtp,rtp->rt", self.y, dg), 0.0)
                          / np.maximum(np.einsum("rtp,rtp->rt", dg, dg), 1e-300), 0.0)
        sg = self.s[..., None] * g
        d = (np.maximum(np.einsum("rtp,rtp->rp", self.y, sg), 0.0)
             / np.maximum(np.einsum("rtp,rtp->rp", sg, sg), 1e-300)) * self.data.mask
        # The preconditioner's overall size belongs to the step scales: geometric mean 1 over moving elements.
        moving = d > 0
        log_mean = (np.sum(np.where(moving, np.log(np.where(moving, d, 1.0)), 0.0), 1)
                    / np.maximum(moving.sum(1), 1))
        self.d = np.where(moving, d / np.exp(log_mean)[:, None], 0.0)
        self.s = self.s * np.exp(log_mean)[:, None]


def _fit_at(designs: list[_Design], lay: Layout, momentum: float, rounds: int, named_only: bool = False) -> _Solved:
    """The alternating least-squares fit (module docstring) at momentum ``momentum`` over the rows of every
    trace (per-task normal equations summed over traces: the tasks are the same on each); ``named_only``
    fits the named candidates alone, with step scales and preconditioner of their own."""
    parts = [_Rows(data, momentum, designs[0].update.shape[1]) for data in designs]
    if not any(p.ok.any() for p in parts):
        raise ValueError("the optimizer never moves: there is no update to explain")
    for round_ in range(rounds):
        A_u, b_u, A_k, b_k = (sum(x) for x in zip(*(p.equations() for p in parts)))
        A_r, b_r = A_u + A_k, b_u + b_k
        phi = _solve(A_r.sum(0), b_r.sum(0), lay.K, named_only)
        if round_ == rounds - 1:
            break
        for p in parts:
            p.rescale(phi, lay)
    yy = sum(np.sum(p.y**2, (1, 2)) for p in parts)
    return _Solved(phi, _r2(phi, A_u.sum(0), b_u.sum(0), yy.sum()), A_u, b_u, yy, A_r, b_r)


@dataclasses.dataclass(frozen=True)
class Fit:
    """A fitted objective: coefficients ``phi`` (layout ``Layout``) in units where its gradient along the
    trace is as large (RMS) as the base's, its bootstrap replicates over tasks, and the fit's diagnostics."""

    phi: np.ndarray
    momentum: float
    r2: float
    unnamed_share: float          # the unnamed part's share of the explained update (``contribution``)
    unnamed_gain: float           # the share only it explains (``unnamed_gain``)
    curvature_share: float        # of the unnamed part's gradient, the share its curvature carries
    boots: np.ndarray             # (BOOTSTRAP, D)
    share_boots: np.ndarray       # (BOOTSTRAP,)
    undetermined: list[list[str]]  # per undetermined direction, the coefficients it mixes
    shift_falls: dict[str, float]  # per shift, the fall in training R² fitted with it (``_agreeing``)

    @property
    def conflicting(self) -> dict[str, float]:
        """The shifts left out of the fit (their fall above ``SHIFT_CONFLICT``), with their falls."""
        return {s: f for s, f in self.shift_falls.items() if f > SHIFT_CONFLICT}


def contribution(phi: np.ndarray, A: np.ndarray, lay: Layout) -> tuple[float, float]:
    """(unnamed share, curvature share of the unnamed part): the unnamed part's squared contribution to the
    explained update against the named part's, and of it the curvature's, from the normal matrix
    ``A`` = Σ (m ⊙ x)(m ⊙ x)ᵀ (a part's squared size along the rows is its quadratic form)."""
    K, P = lay.K, lay.P
    index = np.arange(len(phi))
    named, unnamed = np.where(index < K, phi, 0.0), np.where(index >= K, phi, 0.0)
    curved = np.where(index < K + P, unnamed, 0.0)
    n2, u2, c2 = (float(v @ A @ v) for v in (named, unnamed, curved))
    return (u2 / (n2 + u2) if n2 + u2 > 0 else float("nan")), (c2 / u2 if u2 > 0 else 0.0)


def unnamed_gain(r2_full: float, r2_named: float) -> float:
    """The share of the explained update that only the unnamed part explains: (R²_full − R²_named) / R²_full,
    each model fitted with its own step scales and preconditioner (0 when the named candidates explain
    everything the full model does)."""
    if not r2_full > 0:
        return float("nan")
    return float(np.clip((r2_full - r2_named) / r2_full, 0.0, 1.0))


def _tasks(designs: list[_Design], pick: np.ndarray) -> list[_Design]:
    """The designs restricted to the tasks ``pick`` (an index or a boolean mask over tasks)."""
    return [d._replace(Z=d.Z[pick], theta=d.theta[pick], Z_end=d.Z_end[pick], theta_end=d.theta_end[pick],
                       update=d.update[pick], ends_ok=d.ends_ok[pick]) for d in designs]


def _r2_elsewhere(designs: list[_Design], lay: Layout, momentum: float, phi: np.ndarray) -> float:
    """R² of the objective ``phi``, fitted on other tasks, on the update directions of ``designs``' tasks, each
    task with step scales and a preconditioner of its own fitted to ``phi`` (they are per task in the model)."""
    parts = [_Rows(data, momentum, designs[0].update.shape[1]) for data in designs]
    for _ in range(ROUNDS - 1):
        for p in parts:
            p.rescale(phi, lay)
    A_u, b_u = (sum(x) for x in zip(*(p.equations()[:2] for p in parts)))
    yy = sum(np.sum(p.y**2, (1, 2)) for p in parts)
    return _r2(phi, A_u.sum(0), b_u.sum(0), yy.sum())


def held_out_gain(designs: list[_Design], lay: Layout, momentum: float) -> float:
    """``unnamed_gain`` measured on tasks the fits did not see (two folds: even and odd tasks). The unnamed part's
    2P coefficients are shared by every task, so an unnamed objective the optimizer pursues explains held-out
    tasks as well as fitted ones, while coefficients that fit zero-mean noise in the updates (or the part of a
    sign-like rule no smooth objective has) only add error there: in-sample they would always gain something."""
    even = np.arange(designs[0].theta.shape[0]) % 2 == 0
    r2_full = r2_named = 0.0
    for fit_on in (even, ~even):
        seen, unseen = _tasks(designs, fit_on), _tasks(designs, ~fit_on)
        full, named = (_fit_at(seen, lay, momentum, ROUNDS, named_only=only).phi for only in (False, True))
        r2_full += _r2_elsewhere(unseen, lay, momentum, full) / 2
        r2_named += _r2_elsewhere(unseen, lay, momentum, named) / 2
    return unnamed_gain(r2_full, r2_named)


def _undetermined(A: np.ndarray, lay: Layout) -> list[list[str]]:
    """The directions of coefficient space the data leaves undetermined (numerically null in the
    column-standardised normal matrix), each named by the coefficients it mixes."""
    diag = np.diag(A)
    live = diag > 1e-12 * max(float(diag.max()), 1e-300)
    names = lay.column_names()
    out = [[names[j]] for j in np.nonzero(~live)[0]]  # columns no row ever touches
    if not live.any():
        return out
    s = 1.0 / np.sqrt(diag[live])
    eig, vec = np.linalg.eigh(A[np.ix_(live, live)] * s[:, None] * s[None, :])
    idx = np.nonzero(live)[0]
    for j in np.nonzero(eig < NULL * max(float(eig[-1]), 1e-300))[0]:
        v = np.abs(vec[:, j])
        out.append(sorted({names[idx[i]] for i in np.nonzero(v > 0.2 * v.max())[0]}))
    return out


def _agreeing(designs: list[_Design], lay: Layout, momentum: float, shifts: list[str]):
    """``(designs kept, {shift: fall})``: the training design and the shifts on which the optimizer pursues what
    it pursues in training, and every shift's fall (kept or not).

    One f across shifts is the fit's premise. A shift on which the optimizer pursues something else (a cue it
    reads, a scale its learned features never saw) would bend f into one that explains neither (seen: a
    distilled student under ten times the curvature, fitted with it, got a concave f with no minimiser, though
    on every other shift the fit recovers its teacher's). Such a shift shows as a fall in the R² on the training
    rollouts when it is fitted together with training; a shift that only tells apart candidates training cannot
    (a decorrelating shift) costs training nothing. A fall above ``SHIFT_CONFLICT`` leaves the shift out."""
    train = _Rows(designs[0], momentum, designs[0].update.shape[1])
    if len(designs) < 2 or not train.ok.any():   # no training update: no training objective to disagree with
        return designs, {}

    def training_r2(fitted_on):
        return _r2_elsewhere(designs[:1], lay, momentum, _fit_at(fitted_on, lay, momentum, ROUNDS).phi)

    alone = training_r2(designs[:1])
    falls = {shift: float(alone - training_r2([designs[0], data])) for data, shift in zip(designs[1:], shifts[1:])}
    return [designs[0]] + [d for d, s in zip(designs[1:], shifts[1:]) if not falls[s] > SHIFT_CONFLICT], falls


def fit_objective(traces: list[Trace], named: list[str], seed: int = 0) -> tuple[Fit, Layout]:
    """Fits the recovered objective of the module docstring to the rollouts of one subject on several shifts
    (``traces``, the same tasks on each, training first; the base first in ``named``), leaving out the shifts
    on which it pursues something else than in training (``_agreeing``)."""
    designs, lay = _design(traces, named)
    # The momentum is a property of the rule, not of the shift: profiled on the training rollout alone.
    profile = {mu: _fit_at(designs[:1], lay, mu, 1).r2 for mu in MOMENTUM_GRID}
    momentum = max(profile, key=lambda mu: profile[mu] if np.isfinite(profile[mu]) else -np.inf)
    designs, falls = _agreeing(designs, lay, momentum, [tr.shift for tr in traces])
    full = _fit_at(designs, lay, momentum, ROUNDS)
    alone = _fit_at(designs, lay, momentum, ROUNDS, named_only=True)

    def unit(phi):  # units: the recovered gradient along the rollouts as large (RMS) as the base's
        num = den = 0.0
        for data in designs:
            rows = np.all(np.isfinite(data.Z), (-1, -2)) & np.all(np.isfinite(data.theta), -1)
            Z, theta = np.where(rows[..., None, None], data.Z, 0.0), np.where(rows[..., None], data.theta, 0.0)
            num += np.sum(Z[..., 0] ** 2)
            den += np.sum((_gradient(phi, Z, theta, lay) * data.mask) ** 2)
        return np.sqrt(num / max(float(den), 1e-300))

    rng = np.random.default_rng(seed)
    R = designs[0].theta.shape[0]
    picks = [rng.integers(0, R, R) for _ in range(BOOTSTRAP)]
    gain = held_out_gain(designs, lay, momentum)
    if not gain >= UNNAMED_NEEDED:
        # The named candidates explain (nearly) all the full model does: the unnamed part is not kept (whatever
        # it would carry in the full fit, it only re-expresses them through the preconditioner's freedom).
        scale = unit(alone.phi)
        boots = [scale * _solve(alone.A_r[p].sum(0), alone.b_r[p].sum(0), lay.K, named_only=True) for p in picks]
        return Fit(scale * alone.phi, float(momentum), alone.r2, 0.0, gain, 0.0, np.array(boots),
                   np.zeros(len(picks)), _undetermined(alone.A_r.sum(0), lay), falls), lay
    scale = unit(full.phi)
    boots, share_boots = [], []
    for pick in picks:
        pb = _solve(full.A_r[pick].sum(0), full.b_r[pick].sum(0), lay.K)
        boots.append(scale * pb)
        share_boots.append(contribution(pb, full.A_u[pick].sum(0), lay)[0])
    share, curved = contribution(full.phi, full.A_u.sum(0), lay)
    return Fit(scale * full.phi, float(momentum), full.r2, share, gain, curved,
               np.array(boots), np.array(share_boots), _undetermined(full.A_r.sum(0), lay), falls), lay


@functools.lru_cache(maxsize=None)
def _minimiser(skeleton, named: tuple[str, ...], blocks: tuple[str, ...]):
    """Jitted once per (family skeleton, named candidates, movable blocks): per coefficient set and task, the
    minimiser of a recovered objective by L-BFGS (optax) from the optimizer's end point."""

    def objective(movable, coef, task, fixed, numbers):
        named_w, curv, tilt = coef
        qs = rebuilt(skeleton, numbers).quantities({**fixed, **movable}, task)
        value = sum(named_w[k] * qs[q] for k, q in enumerate(named))
        return value + sum(jnp.sum(0.5 * curv[b] * movable[b] ** 2 + tilt[b] * movable[b]) for b in blocks)

    def one(coef, end, fixed, task, numbers):
        f = lambda p: objective(p, coef, task, fixed, numbers)  # noqa: E731
        solver = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(f)

        def step(carry, _):
            p, state = carry
            value, grad = value_and_grad(p, state=state)
            updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=f)
            return (optax.apply_updates(p, updates), state), None

        (p, _), _ = jax.lax.scan(step, (end, solver.init(end)), None, MINIMISER_STEPS)
        return p

    return jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0, 0, 0, None)), in_axes=(0, None, None, None, None)))


def minimisers(trace: Trace, lay: Layout, coefs: list[np.ndarray]) -> np.ndarray:
    """Per coefficient vector and task, the flat minimiser over the movable blocks, (n, R, P); NaN where the
    objective is unbounded (the minimiser runs off beyond ``UNBOUNDED`` × the distance travelled)."""
    def blocks(flat):  # (n, P) -> per block (n, *shape)
        return {b: v.reshape((v.shape[0],) + lay.shapes[b]) for b, v in lay.per_block(flat).items()}

    phis = np.stack([np.asarray(c, np.float64) for c in coefs])
    w, curv, tilt = lay.split(phis.T)
    movable = tuple(b for b in lay.blocks if b not in trace.family.frozen)
    pick = lambda tree: {b: tree[b] for b in movable}  # noqa: E731
    # Weights over every candidate of the family (0 for those the layout left out as aliases), so that subjects
    # of one family whose aliases differ (drawn worlds with and without gaps) share one program.
    every = tuple(dict.fromkeys(list(trace.family.candidates()) + list(lay.named)))
    weights = np.zeros((len(coefs), len(every)))
    weights[:, [every.index(q) for q in lay.named]] = w.T
    coef = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), (weights, pick(blocks(curv.T)), pick(blocks(tilt.T))))
    end = {b: jnp.asarray(trace.params[b][:, -1]) for b in movable}
    fixed = {b: jnp.asarray(v[:, -1]) for b, v in trace.params.items() if b not in movable}
    skeleton, numbers = family_parts(trace.family)
    p = _minimiser(skeleton, every, movable)(coef, end, fixed, jax.tree.map(jnp.asarray, trace.tasks),
                                                        numbers)
    p = {**{b: np.broadcast_to(np.asarray(v), (len(coefs),) + v.shape) for b, v in fixed.items()},
         **{b: np.asarray(v) for b, v in p.items()}}
    flat = lay.flat(p, 2)                                                   # (n, R, P)
    th = lay.flat(trace.params, 2)
    travel = np.linalg.norm(th[:, -1] - th[:, 0], axis=-1)                  # (R,)
    far = np.linalg.norm(flat - th[None, :, -1], axis=-1) > UNBOUNDED * np.maximum(travel, 1e-12)
    return np.where((far | ~np.all(np.isfinite(flat), -1))[..., None], np.nan, flat)


def objective_values(trace: Trace, lay: Layout, phi: np.ndarray) -> np.ndarray:
    """The recovered objective at every recorded θ of ``trace``, (tasks, steps + 1)."""
    w, curv, tilt = lay.split(phi)
    th = lay.flat(trace.params, 2)
    value = sum(w[k] * trace.quantities[q].astype(np.float64) for k, q in enumerate(lay.named))
    return value + np.sum(0.5 * curv * th**2 + tilt * th, -1)


def rank_alignment(f: np.ndarray, base: np.ndarray, resolution: float = 0.01) -> float:
    """Mean over tasks of the Spearman rank correlation of ``f`` with ``base`` over the visited states, each
    read to ``resolution`` of its range along the path (values closer than that are ties: an optimizer
    oscillating at its floor visits states whose order is noise). Tasks whose values are constant or not
    finite are left out; NaN when none is left."""
    out = []
    for a, b in zip(f, base):
        good = np.isfinite(a) & np.isfinite(b)
        if good.sum() < 3 or np.ptp(a[good]) == 0 or np.ptp(b[good]) == 0:
            continue
        a, b = (np.round((v[good] - v[good].min()) / (resolution * np.ptp(v[good]))) for v in (a, b))
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue
        out.append(stats.spearmanr(a, b).statistic)
    return float(np.mean(out)) if out else float("nan")


def step_explained(updates: np.ndarray) -> float:
    """The share of the updates' (tasks, steps, P) mean square that the step index alone explains, through the
    mean update over tasks at each step: 1 for an optimizer whose steps are the same on every task whatever its θ
    and observations (a step schedule; a walk drawn alike for every task), below 1 for one whose steps answer its
    task (even a pull toward one point common to every task moves each task from its own start). Tasks with a
    non-finite update are left out; NaN when none is left."""
    u = updates[np.all(np.isfinite(updates), (1, 2))]
    total = float(np.sum(u**2))
    if not len(u) or total <= 0:
        return float("nan")
    return 1.0 - float(np.sum((u - u.mean(0)) ** 2)) / total


def _vector(v) -> str:
    """A short reading of a vector: up to four entries, then an ellipsis."""
    v = np.asarray(v, dtype=float).reshape(-1)
    head = ", ".join(fmt(float(x)) for x in v[:4])
    return f"({head}{', …' if v.size > 4 else ''})"


@dataclasses.dataclass(frozen=True)
class ObjectiveReport(Report):
    named: dict[str, float]             # weight of each named candidate (units: the base's gradient scale)
    named_low: dict[str, float]         # 90% bootstrap intervals over tasks
    named_high: dict[str, float]
    aliases: dict[str, str | None]      # candidates left out: zero gradient (None), parallel to the one named or a combination
    unnamed_share: float                # share of the explained update the unnamed part carries
    unnamed_share_interval: list[float]
    unnamed_gain: float                 # share of the explained update only the unnamed part explains
    r2: float                           # share of the update directions (momentum removed) it explains
    momentum: float                     # the momentum μ of the fitted dynamics
    own_minimum: bool                   # the unnamed part has a curvature (a minimum) of its own
    unnamed: dict[str, dict]            # per block: curvature h and tilt β (lists), with a tilt-norm interval
    unnamed_minimum: dict[str, list | None]   # per block, the unnamed part's centre (None: no minimum of its own)
    unnamed_pull: dict[str, list | None]      # per block, mean over tasks of how far the unnamed part moves the
                                              # minimiser (recovered objective minus its named part alone)
    recovered_minimum: dict[str, list | None]  # per block, mean over tasks of the recovered objective's minimiser
    argmin_error: float                 # mean ‖argmin f − θ_T‖ / ‖θ_T − θ_0‖
    heading: float                      # median over bounded tasks of cos(θ_T − θ_0, argmin f − θ_0): whether the
                                        # rollout heads for the recovered minimum, however far it got
    base_minimum_distance: float        # mean ‖argmin f − argmin base‖ / ‖θ_T − θ_0‖
    unbounded: float                    # share of tasks on which the recovered objective has no minimiser
    reduced: float                      # share of tasks on which the rollout reduces the recovered objective
    base_alignment: dict[str, float]    # per shift, rank correlation with the base over the visited states
    undetermined: dict                  # count, blocks and directions the data leaves f undetermined along
    description: str
    paths: dict[str, dict[str, list]]   # per shift, mean normalised recovered objective and base per step
    other_shapes: tuple[str, ...] = ()  # shifts left out: their parameters have other shapes than training's
    step_explained: float = float("nan")  # share of the training updates the step index alone explains (1: every
    #                                       task moved alike whatever its θ, as a schedule moves: ``step_explained``)
    conflicting_shifts: dict = dataclasses.field(default_factory=dict)  # shifts left out because on them it
    #                                       pursues something else (``_agreeing``): the fall in training R² of each
    shift_falls: dict = dataclasses.field(default_factory=dict)  # the fall in training R² of every shift

    def summary(self, base: str) -> str:
        named = pairs({q: w for q, w in self.named.items()})
        left_out = (f"; left out (parameters of other shapes): {', '.join(self.other_shapes)}"
                    if self.other_shapes else "")
        if self.conflicting_shifts:
            left_out += (f"; left out (it pursues something else there; the fall in training R² fitted with "
                         f"each): {pairs(self.conflicting_shifts)}")
        return (f"f = {named} + unnamed (share {fmt(self.unnamed_share)}); {self.description}; R² {fmt(self.r2)}, "
                f"argmin error {fmt(self.argmin_error)}, heading {fmt(self.heading)}, base alignment "
                f"{pairs(self.base_alignment)}{left_out}")

    def figures(self, base: str, pursued: str | None) -> list[Panel]:
        """The recovered objective against the base along the optimizer's path on every shift, both normalised
        to [0, 1] per task (so only their shapes are compared: a monotone transform is the same objective)."""
        title = "Recovered objective against the base"
        shifts = [s for s in self.paths if self.paths[s]]
        if not shifts:
            return [Panel(title, None, "no rollout had finite values to draw")]
        cols = min(4, len(shifts))
        rows = (len(shifts) + cols - 1) // cols
        fig = draw.figure(figsize=(3.2 * cols, 2.6 * rows + 0.4))
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
        for ax, s in zip(axes, shifts):
            p = self.paths[s]
            steps = np.arange(len(p["base"]))
            ax.plot(steps, draw.finite(p["base"]), color=draw.BASE_COLOUR, label=f"{base} (base)")
            ax.plot(steps, draw.finite(p["recovered"]), color=draw.PURSUED_COLOUR, linestyle="--",
                    label="recovered f")
            ax.set_title(f"{s}: rank corr. {fmt(self.base_alignment.get(s))}", fontsize=9)
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in axes[len(shifts):]:
            ax.set_visible(False)
        axes[0].set_ylabel("normalised (per task)", fontsize=8)
        axes[0].legend(fontsize=7, frameon=False)
        return [Panel(title, draw.png(fig), (
            "<b>Recovered objective against the base.</b> The objective the updates descend, recovered from the "
            "named candidates and an unnamed quadratic part, and the base, both normalised to [0, 1] per task "
            "and averaged over tasks along the optimizer's path on each shift; the titles give their rank "
            f"correlation. The unnamed part carries {html.escape(fmt(self.unnamed_share))} of the explained "
            f"update: {html.escape(self.description)}."))]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, the cosine between ``a`` and ``b`` (0 where either is zero)."""
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, np.sum(a * b, -1) / np.where(norms > 0, norms, 1.0), 0.0)


def _normalised_mean(values: np.ndarray) -> list[float]:
    lo, hi = np.nanmin(values, 1, keepdims=True), np.nanmax(values, 1, keepdims=True)
    span = np.where(hi - lo > 0, hi - lo, np.nan)
    return [float(x) for x in np.nanmean((values - lo) / span, 0)]


def _describe(lay: Layout, share: float, own: bool, centre: dict, pull: dict) -> str:
    if not share >= UNNAMED_ROBUST:
        return "the named candidates explain the updates"
    parts = []
    for b in lay.blocks:
        if own and centre.get(b) is not None:
            parts.append(f"pulls {b} toward {_vector(centre[b])}")
        elif pull.get(b) is not None and np.linalg.norm(pull[b]) > 0:
            parts.append(f"moves the minimum of {b} by {_vector(pull[b])}")
    return "the unnamed part " + ("; ".join(parts) if parts else "has no minimum the data determines")


@register_probe("objective")
def objective(subject: Subject) -> ObjectiveReport:
    """The recovered objective (module docstring): named weights and an unnamed quadratic part fitted to the
    training rollout's update directions and end points; where its minimum lies against the end points and
    the base's; its rank agreement with the base along the path on every shift."""
    shifts = list(subject.family.shifts())  # "train" first
    traces = {s: subject.trace(s) for s in shifts}
    trace = traces["train"]
    # The unnamed part is per parameter element, so it spans only shifts whose parameters have the training
    # shapes; a shift that resizes the model (digits' `wider`) is left out and named in the report.
    shapes = {k: v.shape[2:] for k, v in trace.params.items()}
    other_shapes = tuple(s for s, tr in traces.items() if {k: v.shape[2:] for k, v in tr.params.items()} != shapes)
    traces = {s: tr for s, tr in traces.items() if s not in other_shapes}
    # Fitted within the training horizon on every shift: what an optimizer does past it (a target it switches
    # to later, a schedule that runs out) is the capability sweep's question (step 7), not its objective here.
    within = [tr.prefix(min(tr.steps, trace.steps)) for tr in traces.values()]
    fit, lay = fit_objective(within, subject.candidates())
    K, P = lay.K, lay.P
    w, curv, tilt = lay.split(fit.phi)
    named_only = np.where(np.arange(len(fit.phi)) < K, fit.phi, 0.0)
    base_only = np.zeros_like(fit.phi)
    base_only[0] = 1.0
    head = trace.first_tasks(MINIMISER_TASKS)
    found, named_min, base_min = minimisers(head, lay, [fit.phi, named_only, base_only])
    th = lay.flat(head.params, 2)
    travel = np.maximum(np.linalg.norm(th[:, -1] - th[:, 0], axis=-1), 1e-12)
    bounded = np.all(np.isfinite(found), -1)
    heading = _cosines(th[:, -1] - th[:, 0], found - th[:, 0])[bounded]

    def mean(x):
        return float(np.nanmean(x)) if np.any(np.isfinite(x)) else float("nan")

    def block_mean(flat_tasks):
        good = np.all(np.isfinite(flat_tasks), -1)
        if not np.any(good):
            return {b: None for b in lay.blocks}
        return {b: [float(x) for x in v.reshape(-1)] for b, v in lay.per_block(flat_tasks[good].mean(0)).items()}

    # The unnamed part's own centre, per element −β/h where its curvature h is positive.
    with np.errstate(divide="ignore", invalid="ignore"):
        centre_el = np.where(curv > 1e-9, -tilt / curv, np.nan)
    own = bool(fit.curvature_share >= OWN_MINIMUM and np.any(curv > 1e-9) and np.all(curv > -1e-9))
    centre = {b: ([float(x) for x in v] if own and np.all(np.isfinite(v)) else None)
              for b, v in lay.per_block(centre_el).items()}
    pull = block_mean(found - named_min)
    lo, hi = np.percentile(fit.boots, 5, axis=0), np.percentile(fit.boots, 95, axis=0)
    unnamed = {}
    for b, curv_b, tilt_b, boot_tilt in zip(lay.blocks, lay.per_block(curv).values(), lay.per_block(tilt).values(),
                                            lay.per_block(fit.boots[:, K + P:]).values()):
        norms = np.linalg.norm(boot_tilt, axis=-1)
        unnamed[b] = {"curvature": [float(x) for x in curv_b], "tilt": [float(x) for x in tilt_b],
                      "tilt_norm_interval": [float(np.percentile(norms, 5)), float(np.percentile(norms, 95))]}
    f_train = objective_values(trace, lay, fit.phi)
    # Reduced on a task when it falls by MIN_REDUCTION of its largest fall along the path, as competence asks.
    finite = np.where(np.isfinite(f_train), f_train, np.inf)
    drop, gap = f_train[:, 0] - f_train[:, -1], f_train[:, 0] - np.min(finite, 1)
    reduced = float(np.mean((drop > 0) & (drop >= MIN_REDUCTION * np.maximum(gap, 1e-12))))
    alignment, paths = {}, {}
    for s, tr in traces.items():
        f = objective_values(tr, lay, fit.phi)
        alignment[s] = rank_alignment(f, tr.base)
        good = np.all(np.isfinite(f), 1) & np.all(np.isfinite(tr.base), 1)
        paths[s] = ({"recovered": _normalised_mean(f[good]), "base": _normalised_mean(tr.base[good])}
                    if good.any() else {})
    blocks = sorted({name.split("(")[1].rstrip(")") for d in fit.undetermined for name in d if "(" in name})
    return ObjectiveReport(
        named={q: float(w[k]) for k, q in enumerate(lay.named)},
        named_low={q: float(lo[k]) for k, q in enumerate(lay.named)},
        named_high={q: float(hi[k]) for k, q in enumerate(lay.named)},
        aliases=lay.aliases, unnamed_share=float(fit.unnamed_share),
        unnamed_share_interval=[float(np.nanpercentile(fit.share_boots, 5)),
                                float(np.nanpercentile(fit.share_boots, 95))],
        unnamed_gain=fit.unnamed_gain, r2=fit.r2, momentum=fit.momentum, own_minimum=own, unnamed=unnamed, unnamed_minimum=centre,
        unnamed_pull=pull, recovered_minimum=block_mean(found),
        argmin_error=mean(np.linalg.norm(found - th[:, -1], axis=-1) / travel),
        heading=float(np.median(heading)) if heading.size else float("nan"),
        base_minimum_distance=mean(np.linalg.norm(found - base_min, axis=-1) / travel),
        unbounded=float(1.0 - np.mean(bounded)), reduced=reduced, base_alignment=alignment,
        undetermined={"count": len(fit.undetermined), "blocks": blocks,
                      "directions": [" ~ ".join(d) for d in fit.undetermined[:8]]},
        step_explained=step_explained(lay.flat(trace.updates, 2) * lay.movable(trace)),
        conflicting_shifts=fit.conflicting, shift_falls=fit.shift_falls,
        description=_describe(lay, fit.unnamed_share, own, centre, pull), paths=paths, other_shapes=other_shapes)
