r"""The global fit's methods side by side: the chi^2 yardstick, flavio's own likelihood, the NN inverse map, the cGAN.

Every method gives a point :math:`\hat c = (C_9, C_{10})` with widths and is
measured against the same yardstick, the chi^2 of :mod:`kernels.chi2` with the
total covariance :math:`\Sigma = \Sigma_\mathrm{exp} + \Sigma_\mathrm{th}`:
:math:`\Delta\chi^2 = \chi^2(\hat c) - \chi^2_\mathrm{min}`, where 2.30 and 6.18
bound the 68.3% and 95.4% regions of two coefficients.

- ``chi2_min``: MIGRAD/HESSE on :math:`\chi^2(c)`, started at the grid's lowest
  node (``grid_min``, the seed study's "lowest in the training set"). The SM
  (:math:`c = 0`) is disfavoured by :math:`\chi^2(0) - \chi^2_\mathrm{min}`,
  quoted in Gaussian sigma. Refitting with the two halves of the theory
  covariance's draws gives two independent estimates from :math:`n/2` draws;
  two seeds at :math:`n` draws differ by about :math:`1/\sqrt 2` of that.
- ``chi2_nuisance`` and ``nn_nuisance`` (with ``nuisances: true``): the seed
  study's hadronic polynomials :math:`F(q^2) = a_0 + a_1 q^2 + a_2 q^4` per
  angular observable (P1, P2, P4', P5'), profiled with their priors
  (:math:`\Sigma \to \Sigma + H S H^T`) or learned by the inverse map of
  :math:`(C_9, C_{10}, a)`: :mod:`orchestrator.evaluate.nuisances`.
- ``flavio``: flavio's ``FastLikelihood`` on the same observables and
  measurements with the same :math:`\Sigma_\mathrm{th}` (its own
  :math:`\Sigma_\mathrm{exp}` and centres, from ``n_exp`` random draws; at
  :math:`c^*` also with ours loaded, which leaves its prediction machinery as
  the only difference), in a
  Ray task with ``PYTHONHASHSEED=0`` (flavio draws the measurements in set
  order). It is evaluated on a 3 x 3 stencil :math:`c^* \pm h\,\sigma`; the
  difference :math:`d(c) = \chi^2_\mathrm{flavio} - \chi^2` is smooth and small,
  so a quadratic :math:`\hat d` fitted to it and
  :math:`\chi^2 + \hat d` minimised gives flavio's minimum without 50 calls of
  its likelihood. :math:`d(c^*)` itself is exact (the stencil's centre).
  The task's result is cached by the driver (:func:`flavio_check_path`), so a
  rerun of the same job makes no flavio call.
- ``nn``: :func:`models.inverse_map.train_inverse_map` on the grid predictions
  with fresh noise :math:`L\varepsilon`, :math:`\Sigma = L L^T`, every epoch: its
  estimate on the data is the posterior mean under a flat prior on the grid's
  box. On Asimov data :math:`x = f(c_\mathrm{true})` it should return the truth.
- ``cgan``: :func:`models.cgan.train_cgan`, a posterior sampler. Its samples on
  the data, their mean's :math:`\Delta\chi^2` (inside the 2.30 contour or not),
  and its calibration: pseudo-experiments with truths drawn from the grid's
  nodes with weights :math:`\propto N(c; c^*, V_\mathrm{HESSE})` (so their
  predictions are the grid's), :math:`x = f(c_\mathrm{true}) + L\varepsilon`,
  and the fraction of truths inside its 68% region (``models.cgan.coverage``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernels import chi2 as chi2k
from kernels.files import atomic_write_json

__all__ = ["DELTA_68", "DELTA_95", "MethodResult", "Yardstick", "yardstick", "minimise_inputs",
           "start_flavio_check", "flavio_check_path", "fit_nn", "fit_cgan"]

DELTA_68, DELTA_95 = 2.30, 6.18

log = logging.getLogger(__name__)


@dataclass
class MethodResult:
    """One row of the summary, and what the method's MLflow child run logs besides.

    ``chi2`` is the method's own chi^2 at its point (flavio's for ``flavio``,
    with the profiled nuisances for ``chi2_nuisance`` and ``nn_nuisance``, ours
    otherwise); ``delta_chi2`` is ours there minus our minimum, for every method.
    """

    method: str
    c9: float
    c10: float
    chi2: float
    delta_chi2: float
    sigma_c9: float
    sigma_c10: float
    seconds: float
    metrics: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    history: dict | None = None
    model: object = None


@dataclass
class Yardstick:
    """chi^2 on the grid and at any point, its minimum, the SM pull, and the seed-to-seed spread of Sigma_th.

    ``inputs`` is the :class:`orchestrator.generate.predictions.TheoryInputs` of the fit.
    """

    inputs: object
    central: np.ndarray
    cov_exp: np.ndarray
    cov: np.ndarray
    cov_inv: np.ndarray
    chi2_grid: np.ndarray  # (n9, n10)
    fit: chi2k.FitResult
    chi2_sm: float
    sm_pull: float
    seed_spread: dict

    def chi2(self, points) -> np.ndarray:
        return chi2k.chi2(self.inputs.predict(points), self.central, self.cov_inv)

    def delta(self, c9: float, c10: float) -> float:
        return float(self.chi2([[c9, c10]])[0] - self.fit.chi2_min)

    def contours(self) -> dict:
        return chi2k.contours(self.inputs.c9, self.inputs.c10, self.chi2_grid, (DELTA_68, DELTA_95), self.fit.chi2_min)

    def result(self, method: str, fit: chi2k.FitResult, seconds: float, **metrics) -> MethodResult:
        """A row for a MIGRAD fit (its own chi^2, its HESSE errors)."""
        return MethodResult(method, fit.c9, fit.c10, fit.chi2_min, self.delta(fit.c9, fit.c10), *fit.errors, seconds,
                            {"correlation": fit.correlation, "valid": float(fit.valid), "nfcn": fit.nfcn, **metrics})


def minimise_inputs(inputs, central, cov, start) -> chi2k.FitResult:
    """MIGRAD/HESSE of chi^2 with the theory ``inputs``' predictions and the covariance ``cov``, from ``start``."""
    return chi2k.minimise(inputs.predict, central, cov, start=start, labels=list(inputs.obs_set.labels))


def yardstick(inputs, central, cov_exp) -> tuple[Yardstick, list[MethodResult]]:
    """The chi^2 yardstick and its rows ``chi2_min`` and ``grid_min``."""
    t0 = time.perf_counter()
    labels = list(inputs.obs_set.labels)
    cov = np.asarray(cov_exp) + inputs.theory_cov
    cov_inv = chi2k.inverse_covariance(cov, labels)
    grid = chi2k.chi2(inputs.grid, central, cov_inv).reshape(len(inputs.c9), len(inputs.c10))
    i, j = np.unravel_index(np.argmin(grid), grid.shape)
    t_grid = time.perf_counter() - t0
    fit = minimise_inputs(inputs, central, cov, (inputs.c9[i], inputs.c10[j]))
    seconds = time.perf_counter() - t0
    sm = inputs.predict([[0.0, 0.0]])[0]
    chi2_sm = float(chi2k.chi2(sm, central, cov_inv))
    halves = [np.asarray(cov_exp) + h for h in inputs.theory_cov_halves]
    fits = [minimise_inputs(inputs, central, c, (fit.c9, fit.c10)) for c in halves]
    pulls = [chi2k.sm_pull(float(chi2k.chi2(sm, central, chi2k.inverse_covariance(c))), f.chi2_min)
             for c, f in zip(halves, fits)]
    spread = {"draws_per_half": inputs.draws // 2, "dc9": fits[0].c9 - fits[1].c9,
              "dc10": fits[0].c10 - fits[1].c10, "dchi2_min": fits[0].chi2_min - fits[1].chi2_min,
              "dsm_pull": pulls[0] - pulls[1]}
    y = Yardstick(inputs, np.asarray(central), np.asarray(cov_exp), cov, cov_inv, grid, fit, chi2_sm,
                  chi2k.sm_pull(chi2_sm, fit.chi2_min), spread)
    # the grid's lowest node: no width of its own (the grid spacing)
    g = MethodResult("grid_min", float(inputs.c9[i]), float(inputs.c10[j]), float(grid[i, j]),
                     float(grid[i, j] - fit.chi2_min), float(np.ptp(inputs.c9) / (len(inputs.c9) - 1)),
                     float(np.ptp(inputs.c10) / (len(inputs.c10) - 1)), t_grid)
    row = y.result("chi2_min", fit, seconds, chi2_sm=chi2_sm, sm_pull=y.sm_pull,
                   **{f"seed_spread_{k}": v for k, v in spread.items()})
    row.params = {"start": "grid_min", "theory_draws": inputs.draws, "levels": [DELTA_68, DELTA_95]}
    return y, [row, g]


def _flavio_chi2(obs_set, points, theory_cov, experimental, n_exp: int, seed: int):
    """A Ray task's body: flavio's -2 log L at ``points`` (its own Sigma_exp and centres from ``n_exp`` draws), at
    ``points[4]`` with ours loaded instead, its wall seconds and this process's PYTHONHASHSEED."""
    t0 = time.perf_counter()
    values = chi2k.flavio_likelihood_chi2(obs_set, points, theory_cov, n_exp=n_exp, seed=seed)
    ours = chi2k.flavio_likelihood_chi2(obs_set, points[4:5], theory_cov, experimental=experimental, seed=seed)[0]
    return values, ours, time.perf_counter() - t0, os.environ.get("PYTHONHASHSEED")


def _quadratic(points, centre, scale) -> np.ndarray:
    u = (np.atleast_2d(points) - centre) / scale
    return np.stack([np.ones(len(u)), u[:, 0], u[:, 1], u[:, 0] ** 2, u[:, 0] * u[:, 1], u[:, 1] ** 2], 1)


def _array_digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a, np.float64))
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def flavio_check_path(obs_set, points, theory_cov, experimental, n_exp: int, seed: int,
                      cache: Path | None = None) -> tuple[Path, dict]:
    """Where the flavio check of these inputs is cached, and what identifies it.

    ``cache`` (default ``cache_dir()/globalfit``, beside the theory inputs of
    :mod:`orchestrator.generate.predictions`) holds ``flavio-<h>.json``, ``h``
    the sha256 of the observable set's key (observables, measurements, flavio
    version), the stencil ``points``, ``n_exp``, the ``seed``, Sigma_th, our
    (central, Sigma_exp) and PYTHONHASHSEED 0: the file holds flavio's chi^2 at
    the points, at the centre with ours loaded, the seconds they took and the
    identity itself. Only results computed with PYTHONHASHSEED 0 (the Ray task
    always; this process only if it was started so) are written, so that what
    is read is what a fresh run would compute.
    """
    from kernels.theory import cache_dir

    ident = {"set": obs_set.key, "points": np.asarray(points, float).tolist(), "n_exp": int(n_exp), "seed": int(seed),
             "theory_cov": _array_digest(theory_cov), "experimental": _array_digest(*experimental),
             "pythonhashseed": "0"}
    root = Path(cache) if cache is not None else cache_dir() / "globalfit"
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"flavio-{digest}.json", ident


def _read_flavio_check(path: Path, ident: dict):
    """The cached (chi2 at the points, chi2 with ours at the centre, seconds, "0"), or None (missing, unreadable, other)."""
    try:
        entry = json.loads(path.read_text())
        if entry["ident"] != ident:
            return None
        return np.asarray(entry["chi2"], float), float(entry["chi2_our_exp"]), float(entry["seconds"]), "0"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_flavio_check(path: Path, ident: dict, result) -> bool:
    values, ours, seconds, hashseed = result
    if hashseed != "0":
        log.info("flavio check: PYTHONHASHSEED is %s, not 0; not cached", hashseed)
        return False
    try:
        atomic_write_json(path, {"ident": ident, "chi2": np.asarray(values, float).tolist(), "chi2_our_exp": float(ours),
                                 "seconds": float(seconds)})
    except ValueError:  # a non-finite chi^2: not worth keeping
        return False
    return True


def start_flavio_check(y: Yardstick, n_exp: int, stencil: float, seed: int, use_ray: bool,
                       address: str | None = None, cache: Path | None = None) -> Callable[[], MethodResult]:
    """Submit flavio's likelihood on the stencil (a Ray task, or nothing yet without Ray); return ``finish()``.

    A result cached by an earlier run (:func:`flavio_check_path`; ``cache``: its folder) is read instead, on the
    driver, and nothing is submitted; a fresh one is written there by ``finish()``.
    """
    centre, scale = np.array([y.fit.c9, y.fit.c10]), stencil * np.array(y.fit.errors)
    points = centre + chi2k.grid_points([-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]) * scale  # points[4] is c*
    args = (y.inputs.obs_set, points, y.inputs.theory_cov, (y.central, y.cov_exp), int(n_exp), int(seed))
    path, ident = flavio_check_path(*args, cache=cache)
    t0 = time.perf_counter()
    hit = _read_flavio_check(path, ident)
    if hit is not None:
        read_seconds = time.perf_counter() - t0

        def get():
            return hit
    elif use_ray:
        import ray
        from ray.exceptions import RayTaskError

        from kernels.errors import WcscanError
        from orchestrator.runtime.ray import init_ray, thread_env

        init_ray(address)
        env = {"PYTHONHASHSEED": "0", **thread_env(1)}
        ref = ray.remote(_flavio_chi2).options(num_cpus=1, runtime_env={"env_vars": env}).remote(*args)

        def get():
            try:
                return ray.get(ref)
            except RayTaskError as err:
                if isinstance(err.cause, WcscanError):
                    raise err.cause from None
                raise
    else:
        def get():
            return _flavio_chi2(*args)

    def finish() -> MethodResult:
        result = get()
        flavio, flavio_our_exp, seconds, hashseed = result
        cache_metrics = {"cached": float(hit is not None), "seconds_computed": seconds}
        if hit is not None:
            seconds = read_seconds
        else:
            cache_metrics["written_to_cache"] = float(_write_flavio_check(path, ident, result))
        ours = y.chi2(points)
        d = flavio - ours
        design = _quadratic(points, centre, scale)
        coef = np.linalg.lstsq(design, d, rcond=None)[0]

        def root_chi2(p):  # a one-component "prediction" sqrt(chi2 + d^) with unit variance: chi2 = chi2 + d^
            return np.sqrt(np.maximum(y.chi2(p) + _quadratic(p, centre, scale) @ coef, 0.0))[:, None]

        fit = chi2k.minimise(root_chi2, [0.0], [[1.0]], start=tuple(centre))
        r = y.result("flavio", fit, seconds, residual_c9=fit.c9 - y.fit.c9, residual_c10=fit.c10 - y.fit.c10,
                        residual_chi2_min=fit.chi2_min - y.fit.chi2_min, d_at_min=float(d[4]),
                        d_at_min_our_exp=float(flavio_our_exp - ours[4]),
                        d_spread=float(np.ptp(d)), d_quadratic_residual=float(np.max(np.abs(design @ coef - d))),
                        n_exp=n_exp, pythonhashseed=float(hashseed) if hashseed not in (None, "random") else math.nan,
                        **cache_metrics)
        r.params = {"n_exp": n_exp, "stencil_sigmas": stencil, "stencil": points.round(6).tolist(), "seed": seed,
                    "cache": str(path)}
        return r

    return finish


def _training_set(y: Yardstick):
    return y.inputs.points, y.inputs.grid, y.cov


def fit_nn(y: Yardstick, config, asimov, seed: int) -> MethodResult:
    """``nn``: the inverse map's estimate and width on the data, and its errors on Asimov data at ``asimov`` truths."""
    from models.inverse_map import InverseMapEstimator, train_inverse_map

    t0 = time.perf_counter()
    model, hist = train_inverse_map(*_training_set(y), config, seed=seed)
    est = InverseMapEstimator(model, name="nn")
    (c9, c10), (s9, s10) = est.predict(y.central)
    seconds = time.perf_counter() - t0
    truths = np.asarray(asimov, float)
    a_est, a_err = est.predict(y.inputs.predict(truths))
    error = a_est - truths
    metrics = {"asimov_max_abs_error": float(np.max(np.abs(error))), "best_epoch": hist["best_epoch"],
               "sigma_c9_over_hesse": s9 / y.fit.errors[0], "sigma_c10_over_hesse": s10 / y.fit.errors[1]}
    params = {"asimov": [dict(truth=t.tolist(), estimate=e.tolist(), sigma=s.tolist())
                         for t, e, s in zip(truths, a_est, a_err)], **config.to_dict()}
    return MethodResult("nn", float(c9), float(c10), float(y.chi2([[c9, c10]])[0]), y.delta(c9, c10), float(s9),
                        float(s10), seconds, metrics, params, hist, model)


def pseudo_experiments(y: Yardstick, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` truths from the grid's nodes, weighted by N(c*, V_HESSE), and their data f(truth) + L eps."""
    rng = np.random.default_rng(seed)
    r = y.inputs.points - np.array([y.fit.c9, y.fit.c10])
    w = np.exp(-0.5 * np.einsum("ni,ij,nj->n", r, np.linalg.inv(y.fit.covariance), r))
    idx = rng.choice(len(w), size=n, p=w / w.sum())
    noise = rng.standard_normal((n, len(y.central))) @ np.linalg.cholesky(y.cov).T
    return y.inputs.points[idx], y.inputs.grid[idx] + noise


def fit_cgan(y: Yardstick, config, n_samples: int, coverage_cfg, seed: int) -> tuple[MethodResult, np.ndarray]:
    """``cgan``: its samples on the data (mean, std, Delta chi2 of the mean), and its coverage on pseudo-experiments."""
    from models.cgan import coverage, sample, train_cgan

    t0 = time.perf_counter()
    model, hist = train_cgan(*_training_set(y), config, seed=seed)
    samples = sample(model, y.central, n_samples, seed=seed)
    seconds = time.perf_counter() - t0
    (c9, c10), (s9, s10) = samples.mean(0), samples.std(0, ddof=1)
    delta = y.delta(c9, c10)
    c = coverage_cfg
    t1 = time.perf_counter()
    truths, x = pseudo_experiments(y, c.pseudo_experiments, seed + 1)
    cov68 = coverage(model, truths, x, c.level, n=c.samples, seed=seed + 2)
    metrics = {"coverage": cov68, "coverage_level": c.level,
               "coverage_binomial_error": math.sqrt(c.level * (1 - c.level) / c.pseudo_experiments),
               "pseudo_experiments": c.pseudo_experiments, "coverage_seconds": time.perf_counter() - t1,
               "mean_inside_2p30": float(delta <= DELTA_68), "samples": n_samples,
               "correlation": float(np.corrcoef(samples.T)[0, 1]),
               "sigma_c9_over_hesse": s9 / y.fit.errors[0], "sigma_c10_over_hesse": s10 / y.fit.errors[1]}
    row = MethodResult("cgan", float(c9), float(c10), float(y.chi2([[c9, c10]])[0]), delta, float(s9), float(s10),
                       seconds, metrics, config.to_dict(), hist, model)
    return row, samples
