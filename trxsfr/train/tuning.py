"""Choose the new layer's L2 strength by k-fold cross-validation on the cached vectors.

The default `retrain` (`--tune auto`) fits the softmax layer as a convex
problem instead of running a fixed number of optimiser steps: the mean
(class-weighted, label-smoothed) cross-entropy plus `l2 * ||w||^2` on the
standardised weights (as `--l2` means), minimised by full-batch L-BFGS. Which
`l2`, cross-validation decides:

- the pool is the training and validation images (the test split is never
  read; distorted views join the final fit only, since a view in a training
  fold would leak its image's held-out fold);
- the search runs on the whole pool when one matrix product of it (images x
  features x folds x classes multiply-adds) fits `SEARCH_BUDGET`; otherwise on
  a seeded sample: as many classes as can keep `MIN_PER_CLASS` images each
  within the budget, and each sampled class's share of the images that fit;
- `folds` (default 5) stratified folds, seeded; fewer when the median class
  has fewer images (at least 2; a smaller class is dealt to fewer folds); no
  search, `FALLBACK_L2`, when fewer than two classes have 2 images;
- the grid: the decades 1 ... 1e-6, walked from strong to weak, each fit
  warm-started from the previous one, until a decade scores worse than the
  best so far; then the half decades either side of the best;
- the rule: the highest held-out accuracy pooled over the folds (class-
  weighted as the training loss is, so balanced accuracy under "balanced"),
  ties broken by the lower held-out cross-entropy, then the stronger penalty.
  Accuracy because that is what the layer is for: on small, weakly separable
  sets the lowest cross-entropy's choice fell up to 17% below scikit-learn's
  LogisticRegressionCV (which scores by accuracy) in held-out accuracy: it
  favours penalties that mostly make the predictions less confident;
- the exported layer is fitted on the whole pool with the chosen value scaled
  by (images a fold model was fitted on) / (images in the pool): the penalty
  per image is what carries over, as scikit-learn's C (a mean loss over more
  images needs proportionally less of it). It starts from the mean of the
  chosen fold models. When one product of that fit would exceed
  `FINAL_BUDGET` and the pool holds more than `STEPS_ROWS` images (thousands
  of classes with many images each), the step-based optimiser of `head.train`
  fits it instead, with the chosen value, at its usual cost.

All k fold models are fitted at once, as one problem whose weights are the k
models side by side: one matrix product per iteration serves every fold (a row
weighs nothing in its own fold's model). When the search has fewer than half
as many rows as features, it runs in the rows' span: an exact change of basis
(the L2 solution lies in that span) that makes each product cheaper.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Optional, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from trxsfr.base.config import RetrainConfig
from trxsfr.train import head

log = logging.getLogger(__name__)

# The decades searched, strongest first; the half decades beside the best are tried after.
GRID = tuple(10.0 ** -e for e in range(0, 7))
# A decade that does not beat the best so far ends the walk towards weaker penalties:
# walking on (a second decade, or the whole grid) chose as well on the benchmark's sets.
PATIENCE = 1
# Multiply-adds of one product of the search (rows x features x folds x classes); above it
# the search takes a sample. 1e8 is about 3-5 ms a product on 2 cores.
SEARCH_BUDGET = 100_000_000
# Images of each sampled class the search keeps at least (all of a smaller class).
MIN_PER_CLASS = 20
# Multiply-adds of one product of the final fit (rows x features x classes); above it, and
# with more than STEPS_ROWS images, the step-based optimiser (head.train) fits the layer:
# its 4,000 steps of 100 images cost less than ~100 passes over that many images.
FINAL_BUDGET = 4_000_000_000
STEPS_ROWS = 4000
# The penalty when nothing can be cross-validated (fewer than two classes with 2 images).
FALLBACK_L2 = 0.1
SEARCH_ITERATIONS = 100  # L-BFGS iterations per grid value, at most
FINAL_ITERATIONS = 1000
# A fit ends when no gradient entry of the mean loss exceeds this (scikit-learn's lbfgs
# stops at 1e-4), nor a fraction of the penalty's own largest entry, 2 * l2 * max|w|: with
# a weak penalty a fixed threshold would pass a warm start from a neighbouring value as
# converged. The search stops sooner than the final fit: its scores settle first.
SEARCH_TOLERANCE = 1e-3
SEARCH_RELATIVE_TOLERANCE = 0.25
FINAL_TOLERANCE = 1e-4
FINAL_RELATIVE_TOLERANCE = 0.05
RULE = "highest cross-validated accuracy, then lowest cross entropy"


@dataclasses.dataclass(frozen=True)
class TuneOptions:
    """The settings of a tuned head; RetrainConfig carries the user's values."""

    folds: int = RetrainConfig.tune_folds
    seed: int = RetrainConfig.seed
    class_weight: str = RetrainConfig.class_weight
    label_smoothing: float = RetrainConfig.label_smoothing
    grid: tuple = GRID
    search_budget: int = SEARCH_BUDGET
    final_budget: int = FINAL_BUDGET

    @classmethod
    def of(cls, config: RetrainConfig) -> "TuneOptions":
        return cls(folds=config.tune_folds, seed=config.seed, class_weight=config.class_weight,
                   label_smoothing=config.label_smoothing)


@dataclasses.dataclass
class Tuning:
    """What the search tried and chose; `to_json()` is what trxsfr.json records."""

    l2: float  # the exported layer's penalty: cv_l2 scaled to the pool's size
    cv_l2: Optional[float]  # the grid value chosen (None: no search)
    rule: str
    folds: int  # 0: no search
    pool_images: int  # training + validation images the layer is fitted on
    search_images: int  # images the search cross-validated
    search_classes: int  # classes the search used
    tried: list  # one row per value: l2, cv_cross_entropy, cv_accuracy, iterations, seconds, chosen
    search_seconds: float
    fit: str  # how the exported layer was fitted: "lbfgs" or "steps"
    fit_iterations: int
    fit_seconds: float
    notes: list = dataclasses.field(default_factory=list)  # samples, fewer folds, fallbacks
    with_validation: bool = True  # the validation images joined the search and the fit

    @property
    def chosen(self) -> Optional[dict]:
        return next((row for row in self.tried if row["chosen"]), None)

    @property
    def cv_accuracy(self) -> Optional[float]:
        return self.chosen["cv_accuracy"] if self.chosen else None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------ the problem

class _Rows:
    """float32 row blocks seen as one standardised matrix (x - mean) * inv_std, without a
    standardised copy: the scaling goes through the (small) weights instead."""

    def __init__(self, blocks: Sequence[np.ndarray], mean=None, inv_std=None):
        self.blocks = [b for b in blocks if len(b)]
        self.n = sum(len(b) for b in self.blocks)
        self.dim = self.blocks[0].shape[1]
        self.mean, self.inv_std = mean, inv_std

    def times(self, w: np.ndarray) -> np.ndarray:
        """float32 [n, K] = X_std @ w, for w [dim, K]."""
        if self.inv_std is not None:
            w = w * self.inv_std[:, None]
        w = np.asarray(w, np.float32)  # a float64 w would make NumPy copy every block
        out = np.empty((self.n, w.shape[1]), np.float32)
        start = 0
        for b in self.blocks:
            np.matmul(b, w, out=out[start:start + len(b)])
            start += len(b)
        if self.mean is not None:
            out -= (self.mean @ w).astype(np.float32)
        return out

    def t_times(self, g: np.ndarray) -> np.ndarray:
        """float64 [dim, K] = X_std^T @ g, for g float32 [n, K]."""
        acc = np.zeros((self.dim, g.shape[1]), np.float32)
        start = 0
        for b in self.blocks:
            acc += b.T @ g[start:start + len(b)]
            start += len(b)
        acc = acc.astype(np.float64)
        if self.mean is not None:
            acc -= np.outer(self.mean, g.sum(axis=0, dtype=np.float64))
        if self.inv_std is not None:
            acc *= self.inv_std[:, None]
        return acc


class _Problem:
    """k softmax regressions side by side on the same rows (k = 1 for the final fit).

    Model j's loss is the mean over the rows outside fold j of their class weight times
    the (label-smoothed) cross-entropy, plus l2 * ||w_j||^2. Parameters are one float64
    vector [dim * k * C + k * C]: weights [dim, k * C], then biases.
    """

    def __init__(self, rows: _Rows, labels: np.ndarray, num_classes: int,
                 row_weight: np.ndarray, fold: Optional[np.ndarray], k: int,
                 label_smoothing: float):
        self.rows, self.y, self.c, self.k = rows, labels, num_classes, k
        outside = np.ones((rows.n, k), bool) if fold is None else fold[:, None] != np.arange(k)
        # mask[i, j]: row i's weight in model j's mean loss (0 in its own fold).
        self.mask = (outside * row_weight[:, None] / np.maximum(outside.sum(axis=0), 1)
                     ).astype(np.float32)
        self.off = np.float32(label_smoothing / num_classes)
        self.on = np.float32(1.0 - label_smoothing + label_smoothing / num_classes)
        self.l2 = 0.0
        self.size = rows.dim * k * num_classes + k * num_classes
        self.last: dict = {}  # k = 1: plain cross entropy and accuracy at the last point

    def tolerance(self, absolute: float, relative: float):
        """The stopping threshold at `params`: `absolute`, or less when `relative` times
        the penalty's largest gradient entry (2 * l2 * max|w|) is smaller."""
        def at(params):
            w, _ = self.split(params)
            return min(absolute, relative * 2.0 * self.l2 * float(np.max(np.abs(w))))
        return at

    def split(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kc = self.k * self.c
        return params[:-kc].reshape(self.rows.dim, kc), params[-kc:]

    def log_probabilities(self, params: np.ndarray) -> np.ndarray:
        """float32 [n, k, C]: each model's log-softmax."""
        w, b = self.split(params)
        z = self.rows.times(w)
        z += b.astype(np.float32)
        z = z.reshape(self.rows.n, self.k, self.c)
        z -= z.max(axis=2, keepdims=True)
        z -= np.log(np.exp(z).sum(axis=2, keepdims=True))
        return z

    def __call__(self, params: np.ndarray) -> tuple[float, np.ndarray]:
        w, _ = self.split(params)
        log_p = self.log_probabilities(params)
        rows = np.arange(self.rows.n)
        picked = log_p[rows, :, self.y]  # [n, k]
        ce = -(self.on - self.off) * picked
        if self.off:
            ce -= self.off * log_p.sum(axis=2)
        loss = float(np.sum(ce * self.mask, dtype=np.float64)) + self.l2 * float(np.sum(w * w))
        if self.k == 1:
            self.last = {"train_accuracy": float(np.mean(log_p[:, 0].argmax(axis=1) == self.y)),
                         "train_cross_entropy": float(-picked.mean())}
        g = np.exp(log_p, out=log_p)  # softmax minus the (smoothed) targets
        if self.off:
            g -= self.off
        g[rows, :, self.y] -= self.on - self.off
        g *= self.mask[:, :, None]
        g = g.reshape(self.rows.n, self.k * self.c)
        grad_w = self.rows.t_times(g)
        grad_w += 2.0 * self.l2 * w
        return loss, np.concatenate([grad_w.ravel(), g.sum(axis=0, dtype=np.float64)])


def lbfgs(fun, x0: np.ndarray, max_iter: int, tolerance, memory: int = 10,
          on_iteration=None) -> tuple[np.ndarray, float, int]:
    """Minimise fun(x) -> (value, gradient) from x0: L-BFGS with a backtracking (Armijo)
    line search. Stops when no gradient entry exceeds `tolerance` (a number, or a
    function of x giving one), after three
    iterations in a row whose decrease float32 sums cannot resolve, or after `max_iter`.
    `on_iteration(i)` is called after iteration i, whose point `fun` saw last.

    Returns:
        (x, value, iterations).
    """
    def dot(a, b):  # einsum's own loop: BLAS may thread a long dot, which costs more
        return float(np.einsum("i,i->", a, b))

    x = np.array(x0, np.float64)
    f, g = fun(x)
    history: list[tuple[np.ndarray, np.ndarray, float]] = []
    it = stalled = 0
    threshold = tolerance if callable(tolerance) else (lambda _: tolerance)
    while it < max_iter and np.max(np.abs(g)) > threshold(x):
        q = g.copy()
        alphas = []
        for s, y, rho in reversed(history):
            a = rho * dot(s, q)
            q -= a * y
            alphas.append(a)
        if history:
            s, y, _ = history[-1]
            q *= dot(s, y) / dot(y, y)
        else:
            q /= max(1.0, math.sqrt(dot(g, g)))
        for (s, y, rho), a in zip(history, reversed(alphas)):
            q += s * (a - rho * dot(y, q))
        d = -q
        slope = dot(g, d)
        if slope >= 0:  # not a descent direction: start again from the gradient
            history.clear()
            d = -g / max(1.0, math.sqrt(dot(g, g)))
            slope = dot(g, d)
        step = 1.0
        for _ in range(40):
            x_new = x + step * d
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break  # no decrease along d within float precision
        s, y = x_new - x, g_new - g
        sy = dot(s, y)
        if sy > 1e-12 * dot(y, y):
            history.append((s, y, 1.0 / sy))
            if len(history) > memory:
                history.pop(0)
        it += 1
        if on_iteration is not None:
            on_iteration(it)
        stalled = stalled + 1 if f - f_new <= 1e-9 * max(abs(f_new), abs(f), 1e-12) else 0
        x, f, g = x_new, f_new, g_new
        if stalled >= 3:
            break
    return x, f, it


# ------------------------------------------------------------------ the search

def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """int8 [N]: each class's images dealt round the k folds in a seeded order, each class
    starting where the previous one stopped, so folds differ in size by at most one."""
    fold = np.empty(len(labels), np.int8)
    rng = np.random.default_rng([seed, 2])
    start = 0
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rows = rows[rng.permutation(len(rows))]
        fold[rows] = (start + np.arange(len(rows))) % k
        start = (start + len(rows)) % k
    return fold


def search_sample(labels: np.ndarray, dim: int, k: int, budget: int, seed: int) -> np.ndarray:
    """Sorted indices of the rows the search uses: all of them if one product (rows x dim
    x k x classes) fits `budget`; else as many classes (seeded, at least 2) as can keep
    MIN_PER_CLASS rows each, and each one's share of the rows that fit (at least
    MIN_PER_CLASS, or all of a smaller class)."""
    classes = np.unique(labels)
    n = len(labels)
    if n * dim * k * len(classes) <= budget:
        return np.arange(n)
    rng = np.random.default_rng([seed, 3])
    most = max(2, math.isqrt(budget // max(1, dim * k * MIN_PER_CLASS)))
    if most < len(classes):
        classes = np.sort(rng.choice(classes, most, replace=False))
    of_class = [np.flatnonzero(labels == c) for c in classes]
    total = sum(len(r) for r in of_class)
    fits = budget // (dim * k * len(classes))
    keep = []
    for rows in of_class:
        take = min(len(rows), max(MIN_PER_CLASS, len(rows) * fits // max(total, 1)))
        keep.append(rng.choice(rows, take, replace=False) if take < len(rows) else rows)
    return np.sort(np.concatenate(keep))


def _row_span(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x's rows in an orthonormal basis of their span: (a float32 [N, r], basis float32
    [r, D]) with x = a @ basis. A penalised linear fit on a is the fit on x (its weights
    are basis.T @ those on a), at r / D of the cost."""
    gram = x.astype(np.float64) @ x.T.astype(np.float64)
    values, vectors = np.linalg.eigh(gram)
    keep = values > values.max() * 1e-10
    root = np.sqrt(values[keep])
    basis = (vectors[:, keep] / root).T @ x.astype(np.float64)
    return (vectors[:, keep] * root).astype(np.float32), basis.astype(np.float32)


def _search(x: np.ndarray, y: np.ndarray, num_classes: int, row_weight: np.ndarray, k: int,
            o: TuneOptions) -> tuple[list[dict], float, np.ndarray, np.ndarray]:
    """Cross-validate the grid on standardised rows x (labels y in [0, num_classes)).

    Returns:
        (one row per value tried, the chosen value, the mean of its k fold models:
        weights float64 [D, C] and bias [C] on x's columns).
    """
    basis = None
    if len(x) < x.shape[1] // 2:
        x, basis = _row_span(x)
    fold = stratified_folds(y, k, o.seed)
    problem = _Problem(_Rows([x]), y, num_classes, row_weight, fold, k, o.label_smoothing)
    weight_sum = float(row_weight.sum())
    every = np.arange(len(y))

    def fit(l2, start):
        t = time.perf_counter()
        problem.l2 = l2
        params, _, iterations = lbfgs(problem, start, SEARCH_ITERATIONS, problem.tolerance(
            SEARCH_TOLERANCE, SEARCH_RELATIVE_TOLERANCE))
        own = problem.log_probabilities(params)[every, fold]  # each row by its fold's model
        right = own.argmax(axis=1) == y
        row = {"l2": l2,
               "cv_cross_entropy": float(-np.sum(own[every, y] * row_weight) / weight_sum),
               "cv_accuracy": float(np.sum(right * row_weight) / weight_sum),
               "iterations": iterations, "seconds": time.perf_counter() - t}
        log.info("l2 %g: %d-fold cross-validated cross entropy %.4f, accuracy %.1f%% "
                 "(%d iterations, %.2fs)", l2, k, row["cv_cross_entropy"],
                 100 * row["cv_accuracy"], iterations, row["seconds"])
        return row, params

    def rank(row):  # the rule; accuracies are sums of weights: equal ones may differ in ulps
        return (-round(row["cv_accuracy"], 9), row["cv_cross_entropy"], -row["l2"])

    def better(row, than):
        return than is None or rank(row) < rank(than)

    rows = []
    params = np.zeros(problem.size)
    best = best_params = None
    for l2 in sorted(o.grid, reverse=True):
        row, params = fit(l2, params)
        rows.append(row)
        if better(row, best):
            best, best_params = row, params
        elif sum(r["l2"] < best["l2"] for r in rows) >= PATIENCE:
            break
    for l2 in (best["l2"] * math.sqrt(10), best["l2"] / math.sqrt(10)):
        if min(o.grid) <= l2 <= max(o.grid) and not any(
                math.isclose(l2, r["l2"], rel_tol=1e-6) for r in rows):
            row, params = fit(l2, best_params)
            rows.append(row)
            if better(row, best):
                best, best_params = row, params
    for row in rows:
        row["chosen"] = row is best
    rows.sort(key=lambda r: -r["l2"])
    w, b = problem.split(best_params)
    w = w.reshape(-1, k, num_classes).mean(axis=1)
    b = b.reshape(k, num_classes).mean(axis=0)
    if basis is not None:
        w = basis.T.astype(np.float64) @ w
    return rows, best["l2"], w, b


# ------------------------------------------------------------------ the job

def train(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    options: TuneOptions = TuneOptions(),
    validation: Optional[tuple[np.ndarray, np.ndarray]] = None,
    plain_rows: Optional[int] = None,
    summary_dir: Optional[str] = None,
) -> tuple[head.TrainResult, Tuning]:
    """Choose l2 by cross-validation over training + validation rows, then fit the layer
    on all of them with it (see the module's docstring for the rules).

    Args:
        features: float32 [N, D] training bottlenecks (a view is fine: never copied whole;
            the search copies at most its sample).
        labels: int [N] class indices in [0, num_classes).
        options: folds, seed, class weighting, label smoothing, grid, budgets.
        validation: optional (float32 [M, D], int [M]): searched and fitted on as well.
        plain_rows: the first `plain_rows` rows are the images, the rest distorted views
            of them: the search uses the images only, the final fit every row.
        summary_dir: write TensorBoard summaries of the final fit there.

    Returns:
        The fitted head (weights on raw features, as head.train's) with one history row
        per iteration of the final fit, and the search's record. Same inputs and options
        give the same weights.
    """
    o = options
    if o.class_weight not in head.CLASS_WEIGHTS:
        raise ValueError(f"class_weight must be one of {head.CLASS_WEIGHTS}, got {o.class_weight}")
    # One BLAS thread: the products here take milliseconds, and BLAS threads cost more than
    # they save on them when the cores are busy (2-3x slower at a load of 2-4 on 2 cores,
    # up to 15x on small ones); and the weights then do not depend on the core count.
    with threadpool_limits(limits=1, user_api="blas"):
        return _train(features, labels, num_classes, o, validation, plain_rows, summary_dir)


def _train(features, labels, num_classes, o: TuneOptions, validation, plain_rows, summary_dir):
    start = time.perf_counter()
    blocks, ys = [features], [np.asarray(labels, np.int64)]
    if validation is not None and len(validation[1]):
        blocks.append(validation[0])
        ys.append(np.asarray(validation[1], np.int64))
    y_all = np.concatenate(ys)
    dim = features.shape[1]
    n_plain = len(features) if plain_rows is None else plain_rows
    searchable = np.concatenate([np.arange(n_plain),
                                 np.arange(len(features), len(y_all))])
    per_class = head.class_weights(y_all, num_classes, o.class_weight)
    notes = []
    tried, cv_l2, search_n, search_classes, k = [], None, 0, 0, 0
    w_init = b_init = None

    counts = np.bincount(y_all[searchable], minlength=num_classes)
    if np.sum(counts >= 2) < 2:
        l2 = FALLBACK_L2
        notes.append(f"no cross-validation: fewer than two classes have 2 training/validation "
                     f"images; l2 = {FALLBACK_L2:g}")
        log.warning("%s", notes[-1])
    else:
        typical = int(np.median(counts[counts > 0]))
        k = max(2, min(o.folds, typical))
        if k < o.folds:
            notes.append(f"{k} folds: the median class has {typical} training/validation "
                         f"image{'s' if typical != 1 else ''}")
        pick = searchable[search_sample(y_all[searchable], dim, k, o.search_budget, o.seed)]
        classes, y = np.unique(y_all[pick], return_inverse=True)
        search_n, search_classes = len(pick), len(classes)
        if search_n < len(searchable):
            notes.append(f"searched a seeded sample: {search_n} of {len(searchable)} images"
                         + (f", {len(classes)} of {int(np.sum(counts > 0))} classes"
                            if len(classes) < np.sum(counts > 0) else ""))
        x = _gather(blocks, pick)  # the one copy: the sample (or the pool) of the search
        x_mean, x_std = head._standardiser(x)
        x -= x_mean
        x /= x_std
        weights = head.class_weights(y, len(classes), o.class_weight)[y]
        tried, cv_l2, w, b = _search(x, y, len(classes), weights, k, o)
        del x
        # Each fold model saw (k-1)/k of the search's images; the layer sees the pool.
        l2 = cv_l2 * (search_n * (k - 1) / k) / len(searchable)
        if len(classes) == num_classes:  # the fold models' mean, on raw features
            w_init = w / x_std.astype(np.float64)[:, None]
            b_init = b - x_mean.astype(np.float64) @ w_init
    search_seconds = time.perf_counter() - start

    t = time.perf_counter()
    if len(y_all) * dim * num_classes > o.final_budget and len(y_all) > STEPS_ROWS:
        notes.append(f"{len(y_all)} images x {num_classes} classes: the layer is fitted by "
                     f"the step-based optimiser with the chosen l2")
        log.info("%s", notes[-1])
        trained = head.train(features, labels, num_classes, head.HeadOptions(
            seed=o.seed, label_smoothing=o.label_smoothing, l2=l2,
            class_weight=o.class_weight), validation, summary_dir)
        fitted, history, fit, iterations = (trained.head, trained.history, "steps",
                                            trained.best_step)
    else:
        fitted, history, iterations = _fit(blocks, y_all, num_classes, per_class[y_all], l2,
                                           o.label_smoothing, w_init, b_init)
        fit = "lbfgs"
    fit_seconds = time.perf_counter() - t
    if summary_dir and fit == "lbfgs":
        head.write_summaries(summary_dir, history, [(iterations, fitted.weights, fitted.bias)])
    log.info("final layer: l2 %g, %s, %d iterations on %d images (%.2fs)", l2, fit,
             iterations, len(y_all), fit_seconds)
    tuning = Tuning(l2=l2, cv_l2=cv_l2, rule=RULE, folds=k, pool_images=int(len(searchable)),
                    search_images=int(search_n), search_classes=int(search_classes),
                    tried=tried, search_seconds=search_seconds, fit=fit,
                    fit_iterations=int(iterations), fit_seconds=fit_seconds, notes=notes,
                    with_validation=len(blocks) > 1)
    return head.TrainResult(fitted, history, time.perf_counter() - start, iterations), tuning


def _fit(blocks, y, num_classes, row_weight, l2, label_smoothing, w_init, b_init):
    """L-BFGS on every row of the blocks, from (w_init, b_init) on raw features or zeros.
    Returns (head on raw features, one history row per iteration, iterations)."""
    mean, std = _pool_standardiser(blocks)
    mean, inv_std = mean.astype(np.float64), 1.0 / std.astype(np.float64)
    problem = _Problem(_Rows(blocks, mean, inv_std), y, num_classes, row_weight, None, 1,
                       label_smoothing)
    problem.l2 = l2
    initial = np.zeros(problem.size)
    if w_init is not None:  # raw-feature weights -> this standardisation
        initial = np.concatenate([(w_init / inv_std[:, None]).ravel(), b_init + mean @ w_init])
    history = []

    def record(iteration):  # the accepted point is the last one evaluated
        history.append(dict(step=iteration, **problem.last))

    params, _, iterations = lbfgs(problem, initial, FINAL_ITERATIONS, problem.tolerance(
        FINAL_TOLERANCE, FINAL_RELATIVE_TOLERANCE), on_iteration=record)
    if not history:  # the start already met the tolerance: one row for the record
        problem(params)
        record(0)
    w, b = problem.split(params)
    w_raw = w * inv_std[:, None]
    return (head.Head(w_raw.astype(np.float32), (b - mean @ w_raw).astype(np.float32)),
            history, iterations)


def _gather(blocks: Sequence[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """float32 [len(rows), D]: sorted `rows` of the blocks seen as one array (a new array)."""
    out = np.empty((len(rows), blocks[0].shape[1]), np.float32)
    start = done = 0
    for b in blocks:
        mine = rows[(rows >= start) & (rows < start + len(b))] - start
        out[done:done + len(mine)] = b[mine]
        done += len(mine)
        start += len(b)
    return out


def _pool_standardiser(blocks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and deviation over all blocks (as head's over one), in row chunks:
    no copy of the blocks."""
    blocks = [b for b in blocks if len(b)]
    if len(blocks) == 1:
        return head._standardiser(blocks[0])
    n = sum(len(b) for b in blocks)
    mean = np.zeros(blocks[0].shape[1], np.float64)
    for b in blocks:
        for i in range(0, len(b), 512):
            mean += b[i:i + 512].sum(axis=0, dtype=np.float64)
    mean /= n
    var = np.zeros_like(mean)
    for b in blocks:
        for i in range(0, len(b), 512):
            var += np.square(b[i:i + 512] - mean).sum(axis=0)
    std = np.sqrt(var / n)
    floor = max(float(std.mean()) * 1e-3, 1e-8)  # as head._standardiser's
    return mean.astype(np.float32), np.maximum(std, floor).astype(np.float32)
