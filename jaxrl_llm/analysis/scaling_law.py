"""Continual pre-training (CPT) loss curves as a function of the learning-rate schedule.

Scaling law with LR annealing (2408.11029): L(s) = L0 + A·S1^(−α) − C·S2 with the forward area
S1 = Σ η_i and the annealing area S2 = Σ m_i, m_i = λ·m_{i−1} + (η_{i−1} − η_i), η_0 = η_1.
CPT dynamics (2505.07796): the CPT loss is the hidden PT curve continued over the CPT steps plus a
shift term that is a power law in the CPT forward area. Closed form used here (our reconstruction):

    L(t) = L0 + A·(S1_pt + S1_cpt)^(−α) − C1·S2_pt − C2·S2_cpt + B·(1 − (1 + E·X)^(−β)),
    X = (1 − r)·S1_cpt,

B > 0 for the general-domain curve (it rises during CPT), B < 0 for the CPT-domain curve; r is the
fraction of PT data replayed during CPT (it only slows the shift). The annealing area is split by
where each LR change happens: momentum is linear in the LR drops, so the PT drops (and their decaying
momentum tail during CPT) go to S2_pt and the drops at CPT steps, including the re-warm jump at the
transfer step (negative), go to S2_cpt; S2_pt + S2_cpt is the single-schedule S2 of the whole run.

All functions are numpy/scipy in float64; the fitter uses scipy's L-BFGS-B with analytic gradients.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize
from scipy.signal import lfilter

PARAM_NAMES = ("l0", "a", "alpha", "c1", "c2", "b", "e", "beta")
# Parameters that must be positive are optimised as their logs; C1, C2, B keep their sign free.
_LOG_PARAMS = frozenset({"l0", "a", "alpha", "e", "beta"})
# Bounds in optimiser space (log for the positive ones) keep powers finite during the search.
_BOUNDS = {"l0": (-10.0, 5.0), "a": (-15.0, 15.0), "alpha": (np.log(1e-3), np.log(5.0)),
           "c1": (None, None), "c2": (None, None), "b": (None, None),
           "e": (np.log(1e-8), np.log(1e8)), "beta": (np.log(1e-3), np.log(10.0))}


class CPTAreas(NamedTuple):
    """Per-step LR areas of a PT → CPT run, each float64 [T] with T = T_pt + T_cpt (value after step t)."""
    s1_pt: np.ndarray
    s1_cpt: np.ndarray
    s2_pt: np.ndarray
    s2_cpt: np.ndarray


class CPTLawParams(NamedTuple):
    """Parameters of the closed-form CPT loss (see the module docstring)."""
    l0: float
    a: float
    alpha: float
    c1: float
    c2: float
    b: float
    e: float
    beta: float


class CPTFit(NamedTuple):
    params: CPTLawParams
    objective: float      # mean Huber loss of log-loss residuals at the optimum
    n_inits: int          # how many starting points were optimised
    converged: bool       # scipy's success flag of the best run


def _as_lrs(lrs, name: str, allow_empty: bool = False) -> np.ndarray:
    arr = np.asarray(lrs, dtype=np.float64)
    if arr.ndim != 1 or (arr.size == 0 and not allow_empty):
        raise ValueError(f"{name} must be a non-empty 1-D sequence of learning rates, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must hold finite learning rates >= 0")
    return arr


def _check_lam(lam: float) -> float:
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"momentum lam must be in [0, 1), got {lam}")
    return float(lam)


def _momentum_sum(drives: np.ndarray, lam: float) -> np.ndarray:
    """Cumulative Σ_{j≤i} m_j of m_i = lam·m_{i−1} + drives_i, m_0 = 0.  drives [T] -> [T]."""
    return np.cumsum(lfilter([1.0], [1.0, -lam], drives))


def lr_annealing_areas(lrs: Sequence[float], lam: float = 0.999) -> tuple[np.ndarray, np.ndarray]:
    """Forward area S1 and annealing area S2 after each step of one schedule.

    lrs [T] -> (S1 [T], S2 [T]), with η_0 = η_1 so the first step adds no annealing.
    """
    eta = _as_lrs(lrs, "lrs")
    lam = _check_lam(lam)
    drives = np.concatenate([[0.0], eta[:-1] - eta[1:]])
    return np.cumsum(eta), _momentum_sum(drives, lam)


def cpt_areas(pt_lrs: Sequence[float], cpt_lrs: Sequence[float], lam: float = 0.999) -> CPTAreas:
    """Split LR areas of a PT run (pt_lrs [T_pt]) continued by CPT (cpt_lrs [T_cpt], may be empty)."""
    pt = _as_lrs(pt_lrs, "pt_lrs")
    cpt = _as_lrs(cpt_lrs, "cpt_lrs", allow_empty=True)
    lam = _check_lam(lam)
    eta = np.concatenate([pt, cpt])
    drives = np.concatenate([[0.0], eta[:-1] - eta[1:]])
    in_cpt = np.arange(eta.size) >= pt.size
    s1 = np.cumsum(eta)
    s1_pt = np.minimum(s1, s1[pt.size - 1])
    return CPTAreas(s1_pt=s1_pt, s1_cpt=s1 - s1_pt,
                    s2_pt=_momentum_sum(np.where(in_cpt, 0.0, drives), lam),
                    s2_cpt=_momentum_sum(np.where(in_cpt, drives, 0.0), lam))


def _check_areas(areas: CPTAreas, replay_ratio: float) -> None:
    shapes = {np.shape(x) for x in areas}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"areas fields must be 1-D arrays of one length, got shapes {sorted(shapes)}")
    if np.any(np.asarray(areas.s1_pt) + np.asarray(areas.s1_cpt) <= 0):
        raise ValueError("areas: S1_pt + S1_cpt must be > 0 at every step (a step with zero total LR area "
                         "has an infinite power-law term; drop it or start the schedule above 0)")
    if not 0.0 <= replay_ratio <= 1.0:
        raise ValueError(f"replay_ratio must be in [0, 1], got {replay_ratio}")


def _loss_and_jac(p: np.ndarray, areas: CPTAreas, replay_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Loss [T] and its Jacobian w.r.t. the optimiser-space parameters [T, 8] (log for positive ones)."""
    l0, a, alpha, c1, c2, b, e, beta = p
    s = np.asarray(areas.s1_pt) + np.asarray(areas.s1_cpt)
    x = (1.0 - replay_ratio) * np.asarray(areas.s1_cpt)
    power = a * s ** (-alpha)
    shift_base = 1.0 + e * x
    decay = shift_base ** (-beta)
    loss = l0 + power - c1 * np.asarray(areas.s2_pt) - c2 * np.asarray(areas.s2_cpt) + b * (1.0 - decay)
    jac = np.stack([
        np.full_like(s, l0),                               # d/d log l0
        power,                                             # d/d log a
        -power * np.log(s) * alpha,                        # d/d log alpha
        -np.asarray(areas.s2_pt),                          # d/d c1
        -np.asarray(areas.s2_cpt),                         # d/d c2
        1.0 - decay,                                       # d/d b
        b * beta * decay / shift_base * x * e,             # d/d log e
        b * decay * np.log(shift_base) * beta,             # d/d log beta
    ], axis=-1)
    return loss, jac


def cpt_loss(params: CPTLawParams, areas: CPTAreas, replay_ratio: float = 0.0) -> np.ndarray:
    """Closed-form CPT loss at every step.  areas fields [T] -> loss [T] (float64)."""
    _check_areas(areas, replay_ratio)
    return _loss_and_jac(np.asarray(params, dtype=np.float64), areas, replay_ratio)[0]


def _to_opt(values: np.ndarray) -> np.ndarray:
    return np.array([np.log(v) if n in _LOG_PARAMS else v for n, v in zip(PARAM_NAMES, values)])


def _from_opt(theta: np.ndarray) -> np.ndarray:
    return np.array([np.exp(v) if n in _LOG_PARAMS else v for n, v in zip(PARAM_NAMES, theta)])


def default_inits(areas: CPTAreas, losses: np.ndarray) -> list[CPTLawParams]:
    """A small grid of data-scaled starting points: 8 = 2 α × 2 sign(B) × 2 β (L0 = 0.9 min loss,
    A through the first point, E·max S1_cpt = 3, C1 = C2 = 0, |B| = half the loss spread)."""
    s = np.asarray(areas.s1_pt) + np.asarray(areas.s1_cpt)
    s1_cpt_max = float(np.max(areas.s1_cpt))
    spread = float(np.max(losses) - np.min(losses)) or 1.0
    inits = []
    for alpha, b_sign, beta in itertools.product((0.3, 0.7), (1.0, -1.0), (0.5, 1.5)):
        l0 = 0.9 * float(np.min(losses))
        a = max(float(losses[0]) - l0, 1e-3) * float(s[0]) ** alpha   # start on the first point
        e = 3.0 / s1_cpt_max if s1_cpt_max > 0 else 1.0
        inits.append(CPTLawParams(l0, a, alpha, 0.0, 0.0, b_sign * 0.5 * spread, e, beta))
    return inits


def fit_cpt_law(areas: CPTAreas, losses: Sequence[float], *, replay_ratio: float = 0.0,
                huber_delta: float = 1e-3, inits: Sequence[CPTLawParams] | None = None,
                fixed: dict[str, float] | None = None, maxiter: int = 5000) -> CPTFit:
    """Fit the CPT law to observed losses [T] at the steps of `areas` (fields [T]).

    Minimises the mean Huber loss (delta `huber_delta`) of log L_pred − log L_obs with L-BFGS-B from
    every init (default: `default_inits`), positive parameters in log space; keeps the best optimum.
    `fixed` holds named parameters at given values (e.g. {"b": 0, "c2": 0} for a PT-only curve).
    """
    _check_areas(areas, replay_ratio)
    y = np.asarray(losses, dtype=np.float64)
    if y.shape != np.shape(areas.s1_pt):
        raise ValueError(f"losses must have shape {np.shape(areas.s1_pt)} like the areas, got {y.shape}")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("losses must be finite and > 0 (the residual is taken on log losses)")
    if huber_delta <= 0:
        raise ValueError(f"huber_delta must be > 0, got {huber_delta}")
    fixed = dict(fixed or {})
    unknown = set(fixed) - set(PARAM_NAMES)
    if unknown:
        raise ValueError(f"fixed: unknown parameter names {sorted(unknown)}; expected some of {PARAM_NAMES}")
    for name in _LOG_PARAMS & set(fixed):
        if fixed[name] <= 0:
            raise ValueError(f"fixed[{name!r}] must be > 0, got {fixed[name]}")
    free = np.array([n not in fixed for n in PARAM_NAMES])
    log_y = np.log(y)
    # Below `floor` the log is continued linearly, so a start or line-search step that predicts a
    # non-positive loss gets a large finite penalty instead of stopping the search.
    floor = 1e-3 * float(np.min(y))
    # Dividing by delta² keeps the objective O(1) near the optimum so L-BFGS-B's relative tolerances bite.
    scale = 1.0 / huber_delta ** 2

    def objective(theta_free: np.ndarray, theta_all: np.ndarray) -> tuple[float, np.ndarray]:
        theta = theta_all.copy()
        theta[free] = theta_free
        pred, jac = _loss_and_jac(_from_opt(theta), areas, replay_ratio)
        safe = np.maximum(pred, floor)
        r = np.where(pred >= floor, np.log(safe), np.log(floor) + (pred - floor) / floor) - log_y
        absr = np.abs(r)
        huber = np.where(absr <= huber_delta, 0.5 * r ** 2, huber_delta * (absr - 0.5 * huber_delta))
        dr = np.clip(r, -huber_delta, huber_delta) / safe / y.size
        return scale * float(np.mean(huber)), scale * (dr @ jac)[free]

    starts = list(inits) if inits is not None else default_inits(areas, y)
    if not starts:
        raise ValueError("inits must hold at least one CPTLawParams")
    bounds = [_BOUNDS[n] for n, f in zip(PARAM_NAMES, free) if f]
    best = None
    for init in starts:
        values = np.array([fixed.get(n, v) for n, v in zip(PARAM_NAMES, init)], dtype=np.float64)
        theta_all = _to_opt(values)
        lo = np.array([b[0] if b[0] is not None else -np.inf for b in bounds])
        hi = np.array([b[1] if b[1] is not None else np.inf for b in bounds])
        x0 = np.clip(theta_all[free], lo, hi)
        res = minimize(objective, x0, args=(theta_all,), jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": maxiter, "ftol": 1e-15, "gtol": 1e-12})
        if best is None or res.fun < best[0].fun:
            best = (res, theta_all)
    res, theta_all = best
    theta = theta_all.copy()
    theta[free] = res.x
    return CPTFit(CPTLawParams(*map(float, _from_opt(theta))), float(res.fun) / scale, len(starts),
                  bool(res.success))


def fit_metrics(predicted: Sequence[float], observed: Sequence[float]) -> dict[str, float]:
    """MAE and R² = 1 − SS_res / SS_tot of predictions [T] against observations [T]."""
    pred = np.asarray(predicted, dtype=np.float64)
    obs = np.asarray(observed, dtype=np.float64)
    if pred.shape != obs.shape or pred.ndim != 1 or pred.size < 2:
        raise ValueError(f"predicted and observed must be 1-D of one length >= 2, got {pred.shape} and {obs.shape}")
    ss_tot = float(np.sum((obs - obs.mean()) ** 2))
    if ss_tot == 0:
        raise ValueError("observed losses are constant; R² is undefined")
    return {"mae": float(np.mean(np.abs(pred - obs))), "r2": 1.0 - float(np.sum((pred - obs) ** 2)) / ss_tot}


def subset_areas(areas: CPTAreas, index) -> CPTAreas:
    """Areas at selected steps (an index array or slice into [T])."""
    return CPTAreas(*(np.asarray(x)[index] for x in areas))
