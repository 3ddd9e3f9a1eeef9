"""Client drift and convergence experiments: pure compute for notebooks 02 and 03.

Everything here returns numbers, small records or long-form DataFrames; the plots live in
``flu.plots.convergence``.

**Quadratic clients** (notebook 02): F_i(w) = (w - c_i)^T A_i (w - c_i) as least-squares data,
built in ``flu.data.quadratics`` (``Quadratics``, ``quadratic_clients``,
``heterogeneous_quadratics``, ``rotation``, re-exported here); :func:`quadratic_model` is the
matching bias-free linear model, so ``flu.run(quadratic_model(q), q.federation(), loss="mse")``
trains on F_i exactly. :func:`objective_grid`, :func:`landmarks` and :func:`window` prepare contours.

With full-batch local steps (``batch_size=None``) one round of FedAvg, FedProx, FedNova or
SCAFFOLD is an affine map of the server state: :func:`round_map` writes it down (numpy, not the
engine), with its fixed point and spectral radius (the linear rate).

**Logistic regression with the Li et al. constants** (notebook 03): :func:`logistic_problem`,
:func:`constants_table`, :func:`li_experiment` (measured F(w_t) - F* next to the bound of
Li et al. 2020, ICLR, Theorem 1-3) and :func:`li_sweep` over one knob.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .._core import checks as chk
from ..analysis import convergence as cv
from ..data import datasets as fdata
from ..models import nets as fmodels
from ..data import partition as fpart
from ..data.quadratics import Quadratics, heterogeneous_quadratics, quadratic_clients, rotation  # noqa: F401
from ..algorithms.schedules import inverse_time
from ..engine.runner import run
from .._core.labels import method_label as _label

DRIFT_METHODS = ("fedavg", "fedprox", "scaffold", "fednova")


# =============================================================================== quadratic clients

def quadratic_model(q: Quadratics) -> torch.nn.Module:
    """The model matching the quadratic clients ``q``: ``flu.models.linear(d, 1)`` (bias-free,
    float64, zero start), so that its mean squared error on ``q.federation()`` is F_i(w)."""
    if not isinstance(q, Quadratics):
        raise TypeError(f"q must be a flu.data.quadratics.Quadratics, got {type(q).__name__}")
    return fmodels.linear(q.dim, 1, dtype=torch.float64)


def window(points, margin: float = 0.35, *, square: bool = True):
    """``(xlim, ylim)`` around 2-D ``points`` (array (G, 2)) with a relative ``margin``."""
    P = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if P.shape[1] != 2:
        chk.fail("points", "2-D points, an array (G, 2)", P.shape)
    lo, hi = P.min(0), P.max(0)
    mid, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, 1e-3)
    if square:
        half = np.full(2, half.max())
    half = half * (1 + chk.real("margin", margin, low=0))
    return (mid[0] - half[0], mid[0] + half[0]), (mid[1] - half[1], mid[1] + half[1])


def objective_grid(q: Quadratics, xlim, ylim, num: int = 81, *, client: int | None = None, p=None) -> pd.DataFrame:
    """F (or F_i with ``client=i``) on a ``num`` x ``num`` grid: long form ``w1, w2, value``,
    for contour plots (``flu.plots.convergence.plot_contours``)."""
    num = chk.integer("num", num, low=2)
    if q.dim != 2:
        chk.fail("q", "2-D clients for a contour grid", f"dimension {q.dim}")
    g1 = np.linspace(*map(float, xlim), num)
    g2 = np.linspace(*map(float, ylim), num)
    W1, W2 = np.meshgrid(g1, g2)
    W = np.stack([W1.ravel(), W2.ravel()], 1)
    if client is None:
        vals = q.values(W, p)
    else:
        vals = q.client_values(W)[chk.integer("client", client, low=0, high=q.num_clients - 1)]
    return pd.DataFrame({"w1": W[:, 0], "w2": W[:, 1], "value": vals})


# =============================================================================== rounds as affine maps

@dataclass(frozen=True, eq=False)
class RoundMap:
    """One full-participation, full-batch round as the affine map z -> M z + c of the server state z.

    z = x for FedAvg, FedProx and FedNova; z = (x, c_1, ..., c_N) for SCAFFOLD (its control
    variates; c = sum_i p_i c_i). ``fixed_point``: the x part of the solution of z = M z + c;
    ``radius``: the spectral radius of M (iterates converge to the fixed point iff < 1, and the
    distance shrinks like radius^t)."""

    method: str
    M: np.ndarray
    c: np.ndarray
    dim: int
    fixed_state: np.ndarray
    radius: float

    @property
    def fixed_point(self) -> np.ndarray:
        return self.fixed_state[:self.dim]

    def iterate(self, num_rounds: int, x0=None) -> np.ndarray:
        """The iterates x_0 .. x_R (an (R + 1, d) array) from x_0 (default 0) and zero control variates."""
        R = chk.integer("num_rounds", num_rounds, low=0)
        z = np.zeros(len(self.c))
        if x0 is not None:
            z[:self.dim] = np.asarray(x0, dtype=np.float64).reshape(-1)
        out = [z[:self.dim].copy()]
        with np.errstate(over="ignore", invalid="ignore"):  # a map with radius > 1 may overflow: inf is the answer
            for _ in range(R):
                z = self.M @ z + self.c
                out.append(z[:self.dim].copy())
        return np.array(out)


def _local_gd(H, h, x, tau, lr, mu=0.0, shift=None):
    """tau GD steps from x on 1/2 w^T H w - h^T w + <shift, w> + mu/2 ||w - x||^2 (gradient H w - h + ...)."""
    w = x.copy()
    for _ in range(tau):
        g = H @ w - h + mu * (w - x)
        if shift is not None:
            g = g + shift
        w = w - lr * g
    return w


def round_map(q: Quadratics, method: str = "fedavg", local_steps=5, client_lr: float = 0.05, *,
              mu: float = 0.0, server_lr: float = 1.0, l2: float = 0.0, p=None) -> RoundMap:
    """The affine round map of ``method`` on the quadratic clients ``q`` (numpy, from the papers' rules).

    Client i's gradient is H_i w - h_i with H_i = 2 A_i + l2 I, h_i = 2 A_i c_i; it takes
    ``local_steps`` tau_i full-batch GD steps with ``client_lr`` eta from x; delta_i = x - y_i.

    - ``fedavg``: x+ = x - eta_g sum_i p_i delta_i;  ``fedprox``: the same, local steps on
      F_i + mu/2 ||w - x||^2 (Li et al. 2020, MLSys);
    - ``fednova``: x+ = x - eta_g (sum_j p_j tau_j) sum_i p_i delta_i / tau_i (Wang et al. 2020);
    - ``scaffold``: local gradient H_i w - h_i + c - c_i, c_i+ = c_i - c + delta_i / (tau_i eta),
      x+ = x - eta_g sum_i p_i delta_i, c = sum_i p_i c_i (Karimireddy et al. 2020, option II).

    The map is built by evaluating one round on the basis vectors (it is affine), so it is
    exactly what these rules compute, to rounding.
    """
    chk.option("method", method, DRIFT_METHODS)
    N, d = q.num_clients, q.dim
    tau = np.broadcast_to(np.asarray(local_steps), (N,))
    if not np.issubdtype(tau.dtype, np.integer) or (tau < 1).any():
        chk.fail("local_steps", f"a positive int or {N} of them", local_steps)
    lr = chk.real("client_lr", client_lr, low=0, low_open=True)
    mu = chk.real("mu", mu, low=0)
    eta_g = chk.real("server_lr", server_lr, low=0, low_open=True)
    l2 = chk.real("l2", l2, low=0)
    p = q.weights(p)
    H = 2 * q.A + l2 * np.eye(d)
    h = 2 * np.einsum("ijk,ik->ij", q.A, q.centers)
    if method != "fedprox":
        mu = 0.0
    size = d * (N + 1) if method == "scaffold" else d

    def step(z):
        x = z[:d]
        if method == "scaffold":
            ci = z[d:].reshape(N, d)
            c = p @ ci
            deltas = np.stack([x - _local_gd(H[i], h[i], x, int(tau[i]), lr, shift=c - ci[i]) for i in range(N)])
            ci_new = ci - c + deltas / (tau[:, None] * lr)
            return np.concatenate([x - eta_g * p @ deltas, ci_new.ravel()])
        deltas = np.stack([x - _local_gd(H[i], h[i], x, int(tau[i]), lr, mu) for i in range(N)])
        if method == "fednova":
            return x - eta_g * float(p @ tau) * (p / tau) @ deltas
        return x - eta_g * p @ deltas

    return affine_round_map(step, size, method, d)


def affine_round_map(step, size: int, method: str, d: int) -> RoundMap:
    """The :class:`RoundMap` of an affine round ``step(x) = M x + c``, read off from ``step`` at 0
    and at the unit vectors: its fixed point (I - M)^-1 c (NaN when I - M is singular) and its
    spectral radius."""
    c0 = step(np.zeros(size))
    M = np.stack([step(e) - c0 for e in np.eye(size)], axis=1)
    radius = float(np.abs(np.linalg.eigvals(M)).max())
    try:
        fixed = np.linalg.solve(np.eye(size) - M, c0)
    except np.linalg.LinAlgError:
        fixed = np.full(size, np.nan)
    return RoundMap(method, M, c0, d, fixed, radius)


def method_label(method: str, mu: float | None = None) -> str:
    """The canonical plot label: ``"FedAvg"``, ``"FedProx (mu=0.1)"``, ..."""
    return _label(method, {"mu": mu} if method == "fedprox" and mu is not None else None)


def _steps_tuple(local_steps, N):
    tau = np.broadcast_to(np.asarray(local_steps), (N,))
    return tuple(int(t) for t in tau)


def fixed_points(q: Quadratics, methods=DRIFT_METHODS, local_steps=5, client_lr: float = 0.05, *,
                 mu: float = 0.1, server_lr: float = 1.0) -> pd.DataFrame:
    """One row per method: ``method, label, w1 .. wd, radius, dist_to_opt`` (closed form, :func:`round_map`)."""
    rows = []
    for m in methods:
        rm = round_map(q, m, local_steps, client_lr, mu=mu, server_lr=server_lr)
        rows.append(dict(method=m, label=method_label(m, mu), **_coords(rm.fixed_point), radius=rm.radius,
                         dist_to_opt=float(np.linalg.norm(rm.fixed_point - q.w_star))))
    return pd.DataFrame(rows)


def _coords(w) -> dict:
    return {f"w{k + 1}": float(v) for k, v in enumerate(np.asarray(w).reshape(-1))}


def landmarks(q: Quadratics, local_steps=None) -> pd.DataFrame:
    """Points to mark on the contour plot: ``label, kind, w1 .. wd``: the client optima c_i, the
    optimum w* of F and, with ``local_steps``, the surrogate optimum of F~ = sum_i w_i F_i,
    w_i = p_i tau_i / sum_j p_j tau_j (Wang et al. 2020, the small-lr limit of FedAvg's fixed point)."""
    rows = [dict(label=f"client {i} optimum", kind="client optimum", **_coords(c)) for i, c in enumerate(q.centers)]
    rows.append(dict(label="optimum w*", kind="optimum", **_coords(q.w_star)))
    if local_steps is not None:
        w = cv.surrogate_weights(q.p, _steps_tuple(local_steps, q.num_clients))
        rows.append(dict(label="surrogate optimum", kind="surrogate optimum", **_coords(q.minimiser(w))))
    return pd.DataFrame(rows)


def trajectory_table(trajectories: dict, *, objective=None, reference=None) -> pd.DataFrame:
    """Long table ``method, round, w1 .. wD`` (+ ``loss``, ``dist``) from ``{label: trajectory}``.

    A trajectory is a ``History`` (its ``trajectory``, from ``record_params=True``), a list of
    params dicts, or an array (R + 1, D). Parameters are flattened in the dicts' order.
    ``objective``: a function of an (R + 1, D) array giving F per point (e.g. ``q.values``), adds
    ``loss``; ``reference`` (D,): adds ``dist`` = ||w_t - reference|| (e.g. a fixed point or w*).
    """
    if not isinstance(trajectories, dict) or not trajectories:
        chk.fail("trajectories", "a non-empty dict {label: History, list of params or array}", trajectories)
    frames = []
    for label, traj in trajectories.items():
        W = _as_array(label, traj)
        df = pd.DataFrame(W, columns=[f"w{k + 1}" for k in range(W.shape[1])])
        df.insert(0, "round", np.arange(len(W), dtype=np.int64))
        df.insert(0, "method", str(label))
        if objective is not None:
            df["loss"] = np.asarray(objective(W), dtype=np.float64)
        if reference is not None:
            df["dist"] = np.linalg.norm(W - np.asarray(reference, dtype=np.float64).reshape(1, -1), axis=1)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _as_array(label, traj) -> np.ndarray:
    if hasattr(traj, "trajectory"):
        if traj.trajectory is None:
            chk.fail(f"trajectories[{label!r}]", "a History of a run with record_params=True", "trajectory None")
        traj = traj.trajectory
    if isinstance(traj, (list, tuple)) and traj and isinstance(traj[0], dict):
        return np.array([torch.cat([v.detach().reshape(-1).to(torch.float64) for v in t.values()]).numpy()
                         for t in traj])
    W = np.asarray(traj, dtype=np.float64)
    if W.ndim != 2:
        chk.fail(f"trajectories[{label!r}]", "a History, a list of params dicts or an (R + 1, D) array", W.shape)
    return W


def compare_methods(q: Quadratics, methods=DRIFT_METHODS, *, local_steps=5, client_lr: float = 0.05,
                    num_rounds: int = 30, mu: float = 0.1, server_lr: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Train every method with ``flu.run`` on the quadratic clients (exact local GD, full
    participation) and return :func:`trajectory_table` with ``loss`` = F(w_t) and ``dist`` =
    ||w_t - w*||. Labels are :func:`method_label`'s. A diverging run raises ``FloatingPointError``."""

    fed, hists = q.federation(), {}
    for m in methods:
        chk.option("methods", m, DRIFT_METHODS)
        opts = {"mu": mu} if m == "fedprox" else {}
        hists[method_label(m, mu)] = run(quadratic_model(q), fed, m, num_rounds=num_rounds,
                                         local_steps=list(_steps_tuple(local_steps, q.num_clients)),
                                         client_lr=client_lr, batch_size=None, server_lr=server_lr, loss="mse",
                                         eval_every=num_rounds, record_params=True, progress=False, seed=seed,
                                         **opts)
    return trajectory_table(hists, objective=q.values, reference=q.w_star)


def fixed_point_sweep(q: Quadratics, param: str, values, methods=DRIFT_METHODS, **base) -> pd.DataFrame:
    """Closed-form sweep: for each value of ``param`` (``client_lr``, ``mu``, ``server_lr`` or
    ``steps_ratio``, the last making client i take round(tau * ratio^(i/(N-1))) steps with
    tau = ``local_steps``) and each method, the fixed point's distance to w* and the radius.
    Long form ``method, label, <param>, dist_to_opt, radius``; ``base`` sets the other
    :func:`round_map` arguments."""
    chk.option("param", param, ("client_lr", "mu", "server_lr", "steps_ratio"))
    rows = []
    for v in values:
        kw = dict(base)
        if param == "steps_ratio":
            kw["local_steps"] = steps_from_ratio(kw.get("local_steps", 5), v, q.num_clients)
        else:
            kw[param] = v
        fp = fixed_points(q, methods, **kw)
        fp[param] = float(v)
        rows.append(fp[["method", "label", param, "dist_to_opt", "radius"]])
    return pd.concat(rows, ignore_index=True)


def rate_table(traj: pd.DataFrame, fixed: pd.DataFrame, *, rel_floor: float = 1e-11):
    """Measured distance to each method's own fixed point next to the linear rate radius^t.

    ``traj``: :func:`trajectory_table` (``method`` = the labels of ``fixed``); ``fixed``:
    :func:`fixed_points`. Returns ``(measured, theory)``: ``measured`` is ``traj`` with
    ``dist_fixed`` = ||w_t - x_bar||; ``theory`` (``method, round, value``) is C radius^t with C
    chosen so the line meets the measured curve at its last round above ``rel_floor`` times its
    start (where rounding has not taken over): the asymptotic slope is what the radius predicts.
    """
    _need_cols(traj, "traj", ["method", "round", "w1"])
    _need_cols(fixed, "fixed", ["label", "radius", "w1"])
    cols = [c for c in fixed.columns if c.startswith("w") and c[1:].isdigit()]
    measured, theory = [], []
    for r in fixed.itertuples(index=False):
        g = traj[traj["method"] == r.label].sort_values("round").copy()
        if g.empty:
            continue
        target = np.array([getattr(r, c) for c in cols])
        g["dist_fixed"] = np.linalg.norm(g[cols].to_numpy() - target, axis=1)
        measured.append(g)
        d = g["dist_fixed"].to_numpy()
        ok = np.flatnonzero(d > rel_floor * max(d[0], 1e-300))
        if len(ok) and r.radius > 0:
            k = ok[-1]
            t = g["round"].to_numpy()
            theory.append(pd.DataFrame({"method": r.label, "round": t,
                                        "value": d[k] * r.radius ** (t - t[k]).astype(np.float64)}))
    if not measured:
        chk.fail("fixed", "labels matching traj's methods", fixed["label"].tolist())
    return pd.concat(measured, ignore_index=True), (pd.concat(theory, ignore_index=True) if theory else None)


def _need_cols(df, name, cols):
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        chk.fail(name, f"a DataFrame with columns {cols}", list(df.columns))


def steps_from_ratio(local_steps: int, ratio: float, num_clients: int) -> list:
    """Per-client local steps from ``local_steps`` (client 0) up to ``local_steps * ratio`` (the last),
    geometrically: tau_i = round(tau ratio^(i / (N - 1)))."""
    tau = chk.integer("local_steps", local_steps, low=1)
    ratio = chk.real("ratio", ratio, low=1)
    N = chk.integer("num_clients", num_clients, low=1)
    return [max(1, int(round(tau * ratio ** (i / max(N - 1, 1))))) for i in range(N)]


# =============================================================================== logistic regression + Li et al.

def logistic_problem(dataset: str = "wine", *, num_clients: int = 10, alpha: float = 0.5, seed: int = 0):
    """``(federation, model)`` for the convex theory: ``dataset`` (standardised) split over
    ``num_clients`` with ``flu.partition.dirichlet(alpha)``, all data training (no test split),
    float64 inputs, and a zero-initialised bias-free float64 logistic regression
    (``flu.models.logistic(d, K, bias=False)``; one logit for two classes)."""
    ds = fdata.load_dataset(dataset)
    part = fpart.dirichlet(ds.y, num_clients=num_clients, alpha=alpha, seed=seed)
    fed = fdata.federate(ds.X.to(torch.float64), ds.y, part, test_fraction=0.0, seed=seed,
                         name=f"{dataset}, dirichlet(alpha={alpha:g})")
    K = len(ds.classes)
    model = fmodels.logistic(ds.X.shape[1], 1 if K == 2 else K, bias=False, dtype=torch.float64)
    return fed, model


CONSTANT_MEANINGS = {
    "mu": ("$\\mu$", "strong convexity of every $F_i$ (logistic regression: the penalty $\\ell_2$)"),
    "L": ("$L$", "smoothness of every $F_i$ (max over clients)"),
    "kappa": ("$\\kappa = L/\\mu$", "condition number"),
    "Gamma": ("$\\Gamma = F^* - \\sum_i p_i F_i^*$", "heterogeneity: 0 iff the clients share a minimiser"),
    "sigma2": ("$\\sum_i p_i^2 \\sigma_i^2$", "minibatch gradient noise (max over the points estimated at)"),
    "G2": ("$G^2$", "bound on $E\\|g_i\\|^2$ (max over the points estimated at)"),
    "F_star": ("$F^*$", "optimal value of $F$"),
    "mu_F": ("$\\mu_F$", "strong convexity of $F$ itself"),
    "L_F": ("$L_F$", "smoothness of $F$ itself"),
}


def constants_table(constants: cv.Constants, *, sigma2: float | None = None, G2: float | None = None) -> pd.DataFrame:
    """The constants of Li et al.'s theorems as a table ``name, symbol, value, meaning``."""
    vals = dict(mu=constants.mu, L=constants.L, kappa=constants.kappa, Gamma=constants.Gamma,
                sigma2=sigma2, G2=G2, F_star=constants.F_star, mu_F=constants.mu_F, L_F=constants.L_F)
    rows = [dict(name=k, symbol=CONSTANT_MEANINGS[k][0], value=float(v), meaning=CONSTANT_MEANINGS[k][1])
            for k, v in vals.items() if v is not None]
    return pd.DataFrame(rows)


def client_table(constants: cv.Constants, model, federation, *, loss: str = "cross_entropy") -> pd.DataFrame:
    """Per client: ``client, n, p, L_i, F_i_star, F_i_at_opt, gap, grad_norm2_at_opt``.

    ``gap`` = F_i(w*) - F_i* >= 0, so Gamma = sum_i p_i gap_i (with F* = sum_i p_i F_i(w*)): how far
    the global optimum is from what each client could reach alone; ``grad_norm2_at_opt`` =
    ||grad F_i(w*)||^2, non-zero under heterogeneity although sum_i p_i grad F_i(w*) = 0.
    ``constants`` from ``flu.convergence.constants(..., optima=True)`` on the same problem."""
    if constants.w_star is None:
        chk.fail("constants", "computed with optima=True", constants)
    losses, grads = cv.client_objectives(model, constants.w_star, federation, loss, constants.l2)
    g2 = sum((g.reshape(federation.num_clients, -1) ** 2).sum(1) for g in grads.values()).numpy()
    F_at = losses.numpy()
    F_min = np.array(constants.client_F_star)
    return pd.DataFrame({"client": np.arange(federation.num_clients), "n": federation.sizes,
                         "p": np.array(constants.p), "L_i": np.array(constants.L_i), "F_i_star": F_min,
                         "F_i_at_opt": F_at, "gap": F_at - F_min, "grad_norm2_at_opt": g2})


SCHEDULES = ("li", "constant")


def li_experiment(federation, model, *, l2: float = 0.1, local_steps: int = 5, num_rounds: int = 30,
                  schedule: str = "li", client_lr: float | None = None, participation: str = "full",
                  clients_per_round: int | None = None, batch_size: int | None = 8, weights: str = "uniform",
                  bound: bool = True, bound_points: int = 4, seed: int = 0, constants: cv.Constants | None = None):
    """FedAvg on a convex problem, measured against Li et al. 2020 (ICLR), Theorems 1-3.

    ``schedule="li"``: the theorem's eta_t = 2 / (mu (gamma + t)) (:func:`convergence.li_step_size`);
    ``"constant"``: eta = ``client_lr`` (default: the Li schedule's first rate, eta_1 <= 1/(4L)).
    ``participation``: ``"full"``, ``"li_scheme_1"`` or ``"li_scheme_2"`` (with ``clients_per_round``).
    The bound (only for the ``li`` schedule, where it is proved) takes G^2 and sigma^2 as maxima
    over ``bound_points`` evenly spaced iterates of the run (an estimate: the theorem wants them over
    all iterates) and ||w_1 - w*||^2 from the start.

    Returns ``(table, info)``: ``table`` long form ``round, iteration, kind, value`` with ``kind``
    ``"measured"`` (F(w_t) - F*, from the run's diagnostics) and ``"bound"``; ``info`` a dict with
    the constants, G2, sigma2, the schedule (a callable), the History and the bound's attrs.
    """
    chk.option("schedule", schedule, SCHEDULES)
    chk.option("participation", participation, ("full", "li_scheme_1", "li_scheme_2"))
    E = chk.integer("local_steps", local_steps, low=1)
    R = chk.integer("num_rounds", num_rounds, low=1)
    bound_points = chk.integer("bound_points", bound_points, low=1)
    c = constants if constants is not None else cv.constants(model, federation, "cross_entropy", l2, weights)
    gamma = cv.li_gamma(c, E)
    li = cv.li_step_size(c.mu, gamma, E)
    lr = li if schedule == "li" else (li(1, 0) if client_lr is None else chk.real("client_lr", client_lr, low=0,
                                                                                   low_open=True))
    K = None
    if participation != "full":
        K = chk.integer("clients_per_round", clients_per_round, low=1, high=federation.num_clients)

    hist = run(model, federation, "fedavg", num_rounds=R, local_steps=E, client_lr=lr, batch_size=batch_size,
               clients_per_round=K, sampling="uniform" if K is None else participation, weights=weights,
               l2=l2, diagnostics=True, record_params=True, eval_every=R, progress=False, seed=seed)
    start = hist.trajectory[0]
    F0 = cv.objective(model, start, federation, "cross_entropy", l2, weights)
    gap = np.concatenate([[F0], hist.rounds["global_loss"].to_numpy()]) - c.F_star
    rounds = np.arange(R + 1)
    table = [pd.DataFrame({"round": rounds, "iteration": rounds * E, "kind": "measured", "value": gap})]
    info = dict(constants=c, gamma=gamma, schedule=lr, history=hist, G2=None, sigma2=None, bound_attrs=None)
    if bound and schedule == "li":
        pts = [hist.trajectory[i] for i in np.unique(np.linspace(0, R, bound_points).round().astype(int))]
        g2 = cv.G2(model, pts, federation, "cross_entropy", l2, batch_size=batch_size)
        s2 = cv.sigma2(model, pts, federation, "cross_entropy", l2, batch_size=batch_size, weights=weights)[0]
        b = cv.li_fedavg_bound(c, R, E, G2=g2, dist2=cv.distance2(start, c.w_star), sigma2=s2,
                               participation=participation, clients_per_round=K)
        table.append(pd.DataFrame({"round": rounds, "iteration": rounds * E, "kind": "bound",
                                   "value": b["bound"].to_numpy()}))
        info.update(G2=g2, sigma2=s2, bound_attrs=dict(b.attrs), theorem=b["theorem"].iloc[0])
    return pd.concat(table, ignore_index=True), info


def li_sweep(param: str, values, *, dataset: str = "wine", num_clients: int = 10, alpha: float = 0.5,
             data_seed: int = 0, **kwargs) -> pd.DataFrame:
    """:func:`li_experiment` for each value of ``param`` (``local_steps``, ``alpha``,
    ``participation``, ``schedule``, ``clients_per_round``, ``batch_size``, ``l2``), the others from
    ``kwargs``; ``alpha`` rebuilds the federation (:func:`logistic_problem`, ``data_seed``).
    Long form ``param, setting, round, iteration, kind, value``, ``setting`` the value as text."""
    allowed = ("local_steps", "alpha", "participation", "schedule", "clients_per_round", "batch_size", "l2")
    chk.option("param", param, allowed)
    base = None if param == "alpha" else logistic_problem(dataset, num_clients=num_clients, alpha=alpha,
                                                          seed=data_seed)
    frames = []
    for v in values:
        fed, model = logistic_problem(dataset, num_clients=num_clients, alpha=v, seed=data_seed) \
            if param == "alpha" else base
        kw = dict(kwargs) if param == "alpha" else {**kwargs, param: v}
        df, _ = li_experiment(fed, model, **kw)
        df.insert(0, "setting", f"{param}={v:g}" if isinstance(v, (int, float)) else f"{param}={v}")
        df.insert(0, "param", param)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def decay_experiment(federation, model, *, l2: float = 0.1, client_lr: float = 0.5, local_steps: int = 10,
                     num_rounds: int = 60, weights: str = "uniform", decay: float | None = None,
                     every: int | None = None) -> pd.DataFrame:
    """Li et al. 2020 (ICLR), Sec. 3.4 (necessity of learning-rate decay), measured with full-batch
    FedAvg (no gradient noise, so only drift is left):

    - one local step and a constant rate: gradient descent on F, converges to w*;
    - ``local_steps`` E > 1 and a constant rate: stalls at a floor (its fixed point is not w*);
    - E > 1 and the decaying rate eta_t = client_lr / (1 + decay t) over local iterations t
      (``flu.schedules.inverse_time(client_lr, decay, E)``; ``decay`` default mu/2, so that
      eta_t ~ 2 / (mu t) late on, the order of Li et al.'s schedule): keeps going down.

    The E = 1 run takes E times as many rounds, so all three do the same number of local
    iterations. Long form ``setting, round, iteration, value`` (value = F(w_t) - F*, from the runs'
    diagnostics; ``round`` = the run's own communication rounds, iteration / its local steps) at
    every ``every``-th local iteration (default E: the iterations all three runs share; ``every=1``
    keeps every round of the E = 1 run, for a comparison per round).
    """

    E = chk.integer("local_steps", local_steps, low=2)
    R = chk.integer("num_rounds", num_rounds, low=1)
    lr = chk.real("client_lr", client_lr, low=0, low_open=True)
    c = cv.constants(model, federation, "cross_entropy", l2, weights)
    decay = c.mu / 2 if decay is None else chk.real("decay", decay, low=0, low_open=True)
    every = E if every is None else chk.integer("every", every, low=1)
    F0 = cv.objective(model, {k: v.detach() for k, v in model.named_parameters()}, federation,
                      "cross_entropy", l2, weights)
    frames = []
    for label, steps, sched in ((f"E=1, constant lr={lr:g}", 1, lr),
                                (f"E={E}, constant lr={lr:g}", E, lr),
                                (f"E={E}, decaying lr={lr:g}/(1+{decay:.3g} t)", E, inverse_time(lr, decay, E))):
        # E = 1 runs E rounds per round of the others, so that all three do the same local work
        rounds = R * E if steps == 1 else R
        hist = run(model, federation, "fedavg", num_rounds=rounds, local_steps=steps, client_lr=sched,
                   batch_size=None, weights=weights, l2=l2, diagnostics=True, eval_every=rounds, progress=False)
        gap = np.concatenate([[F0], hist.rounds["global_loss"].to_numpy()]) - c.F_star
        it = np.arange(rounds + 1) * steps
        frames.append(pd.DataFrame({"setting": label, "round": np.arange(rounds + 1), "iteration": it,
                                    "value": gap}))
    df = pd.concat(frames, ignore_index=True)
    return df[df["iteration"] % every == 0].reset_index(drop=True)
