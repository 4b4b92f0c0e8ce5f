r"""The global fit with the seed study's hadronic nuisances: profiled by chi^2 (``chi2_nuisance``) and learned (``nn_nuisance``).

Every angular observable (``<P...>``: P1, P2, P4', P5') gets, per family (all
bins of one observable), the polynomial :math:`F(q^2) = a_0 + a_1 q^2 + a_2 q^4`
at its bin centre, added to the prediction: :math:`O_\mathrm{th}(c) \to
O_\mathrm{th}(c) + H a` (:func:`kernels.chi2.nuisance_design`), with the
Gaussian prior :math:`a \sim N(0, S)`, :math:`S` diagonal with the widths
:data:`kernels.chi2.NUISANCE_SIGMA` per family (the standard deviations of the
seed study's uniform ranges :math:`\pm 0.01, \pm 10^{-4}, \pm 10^{-5}`). Both
rows use the same families, design and priors (:func:`nuisance_model`); both
appear only when the config has ``nuisances: true``.

- ``chi2_nuisance``: profiling :math:`a` out of :math:`\chi^2 + a^T S^{-1} a`
  is exactly :math:`\Sigma \to \Sigma + H S H^T`; MIGRAD/HESSE on that
  :math:`\chi^2_\mathrm{nuis}(c)`.
- ``nn_nuisance``: the inverse map of :mod:`models.inverse_map` with
  :math:`\theta = (C_9, C_{10}, a)` (2 + 3F parameters), trained on
  :math:`x = f(c) + H a + L\varepsilon` with :math:`c` on the grid's nodes,
  :math:`a` drawn afresh from its prior for every pair and
  :math:`\Sigma_\mathrm{exp} + \Sigma_\mathrm{th} = L L^T` (the nuisances are
  drawn, not folded into the noise). Its :math:`(C_9, C_{10})` are the posterior
  means with :math:`a` marginalised (for predictions linear in :math:`c`:
  the ``chi2_nuisance`` minimum and HESSE errors); its :math:`a` outputs the
  nuisances' posterior, which is their prior where the data do not constrain
  them.

The ``nn_nuisance`` row: ``chi2`` is :math:`\chi^2_\mathrm{nuis}` at its point
(as ``chi2_nuisance``'s), ``delta_chi2`` ours without nuisances minus our
minimum (as every row); its metrics add ``delta_chi2_nuisance``
(:math:`\chi^2_\mathrm{nuis}` minus the ``chi2_nuisance`` minimum, the fair
yardstick), its widths over ``chi2_nuisance``'s HESSE errors, and two Asimov
checks at the config's ``asimov`` truths:

- :math:`x = f(c_t)` (:math:`a = 0`): ``asimov_max_abs_error``, the largest
  :math:`|\hat c - c_t|`, as for ``nn``;
- :math:`x = f(c_t) + H a_t` with :math:`a_t` drawn from the prior (seed
  ``seed + 3``). The ideal answer is then not the truth: the exact posterior
  mean of the model linearised at :math:`c_t` (:math:`G = [\partial
  f/\partial c, H]`, posterior covariance :math:`V = (G^T \Sigma^{-1} G +
  \mathrm{diag}(0, 0, S^{-1}))^{-1}`, mean :math:`(c_t, 0) + V G^T
  \Sigma^{-1} H a_t`) moves :math:`c` where :math:`H a_t` resembles a shift of
  the coefficients and shrinks :math:`a` to its prior. So:
  ``asimov_shifted_max_abs_error`` (the network's largest :math:`|\hat c -
  c_t|`) beside ``asimov_shifted_exact_max_abs_error`` (the exact mean's) and
  ``asimov_shifted_max_abs_error_vs_exact`` (the network against the exact
  mean), and ``nuisance_mean_abs_error_over_prior``, the mean :math:`|\hat a -
  a_t| / \sigma_a`, beside ``nuisance_exact_mean_abs_error_over_prior``, the
  exact mean's. Where the data cannot see the
  nuisances both are about :math:`\sqrt{2/\pi} = 0.80` (the estimate stays at
  the prior mean); ``nuisance_sigma_over_prior`` (the network's width on the
  data over the prior's) beside ``nuisance_exact_sigma_over_prior``
  (:math:`\sqrt{V_{aa}}` there) says how much the data narrowed them.
"""

from __future__ import annotations

import time

import numpy as np

from kernels import chi2 as chi2k
from orchestrator.evaluate.globalfit import MethodResult, Yardstick, minimise_inputs

__all__ = ["nuisance_families", "nuisance_model", "nuisance_fit", "fit_nn_nuisance"]


def nuisance_families(obs_set) -> dict:
    """Observable name -> its family (the name itself) for the angular observables ``<P...>``, None for the rest."""
    return {n: (n if n.startswith("<P") else None) for n, _, _ in obs_set.observables}


def nuisance_model(obs_set) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The design H (K, 3F), the prior widths (3F,) and the family names of :func:`nuisance_families`."""
    H, names = chi2k.nuisance_design(obs_set, nuisance_families(obs_set))
    return H, np.tile(np.asarray(chi2k.NUISANCE_SIGMA, float), len(names)), names


def nuisance_fit(y: Yardstick) -> MethodResult:
    """``chi2_nuisance``: the hadronic polynomials of every angular observable (``<P...>``) profiled with their priors."""
    t0 = time.perf_counter()
    obs_set = y.inputs.obs_set
    families = nuisance_families(obs_set)
    extra = chi2k.nuisance_covariance(obs_set, families=families)
    fit = minimise_inputs(y.inputs, y.central, y.cov + extra, (y.fit.c9, y.fit.c10))
    return y.result("chi2_nuisance", fit, time.perf_counter() - t0,
                    families=float(len({f for f in families.values() if f})))


def _jacobian(predict, c, h: float = 1e-4) -> np.ndarray:
    """d f / d c (K, 2) at ``c`` by central differences."""
    c = np.asarray(c, float)
    steps = np.array([c + [h, 0], c - [h, 0], c + [0, h], c - [0, h]])
    f = predict(steps)
    return np.stack([(f[0] - f[1]) / (2 * h), (f[2] - f[3]) / (2 * h)], 1)


def _laplace(y: Yardstick, H: np.ndarray, sigma: np.ndarray, c) -> tuple[np.ndarray, np.ndarray]:
    """G = [df/dc, H] at ``c`` and the posterior covariance V of (c, a) of the linearised model."""
    G = np.hstack([_jacobian(y.inputs.predict, c), H])
    prior = np.diag(np.concatenate([[0.0, 0.0], sigma**-2.0]))
    return G, np.linalg.inv(G.T @ y.cov_inv @ G + prior)


def fit_nn_nuisance(y: Yardstick, config, asimov, seed: int, reference: MethodResult) -> MethodResult:
    """``nn_nuisance``: the inverse map of (C9, C10, a) on the data, and its Asimov checks (see the module docstring).

    ``reference`` is the ``chi2_nuisance`` row (:func:`nuisance_fit`).
    """
    from models.inverse_map import InverseMapEstimator, LinearNuisances, train_inverse_map

    t0 = time.perf_counter()
    H, sigma, names = nuisance_model(y.inputs.obs_set)
    model, hist = train_inverse_map(y.inputs.points, y.inputs.grid, y.cov, config, seed=seed,
                                    nuisances=LinearNuisances(H, sigma))
    est = InverseMapEstimator(model, name="nn_nuisance")
    theta, width = est.predict(y.central)
    (c9, c10), (s9, s10) = theta[:2], width[:2]
    seconds = time.perf_counter() - t0

    cov_nuis_inv = chi2k.inverse_covariance(y.cov + H @ np.diag(sigma**2) @ H.T)
    chi2_nuis = float(chi2k.chi2(y.inputs.predict([[c9, c10]])[0], y.central, cov_nuis_inv))
    _, V_data = _laplace(y, H, sigma, (c9, c10))

    truths = np.asarray(asimov, float)
    f_t = y.inputs.predict(truths)
    a_est, a_err = est.predict(f_t)  # Asimov at a = 0
    a_t = np.random.default_rng(seed + 3).standard_normal((len(truths), len(sigma))) * sigma
    s_est, _ = est.predict(f_t + a_t @ H.T)  # Asimov with the nuisances drawn from their prior
    exact = []
    for c, a in zip(truths, a_t):
        G, V = _laplace(y, H, sigma, c)
        exact.append(np.concatenate([c, np.zeros_like(a)]) + V @ G.T @ y.cov_inv @ (H @ a))
    exact = np.array(exact)

    metrics = {
        "delta_chi2_nuisance": chi2_nuis - reference.chi2,
        "sigma_c9_over_nuisance_hesse": s9 / reference.sigma_c9,
        "sigma_c10_over_nuisance_hesse": s10 / reference.sigma_c10,
        "asimov_max_abs_error": float(np.max(np.abs(a_est[:, :2] - truths))),
        "asimov_shifted_max_abs_error": float(np.max(np.abs(s_est[:, :2] - truths))),
        "asimov_shifted_exact_max_abs_error": float(np.max(np.abs(exact[:, :2] - truths))),
        "asimov_shifted_max_abs_error_vs_exact": float(np.max(np.abs(s_est[:, :2] - exact[:, :2]))),
        "nuisance_mean_abs_error_over_prior": float(np.mean(np.abs(s_est[:, 2:] - a_t) / sigma)),
        "nuisance_exact_mean_abs_error_over_prior": float(np.mean(np.abs(exact[:, 2:] - a_t) / sigma)),
        "nuisance_sigma_over_prior": float(np.mean(width[2:] / sigma)),
        "nuisance_exact_sigma_over_prior": float(np.mean(np.sqrt(np.diag(V_data))[2:] / sigma)),
        "n_nuisances": float(len(sigma)),
        "best_epoch": hist["best_epoch"],
    }
    params = {
        "families": names, "prior_sigma": [float(s) for s in chi2k.NUISANCE_SIGMA], "asimov_seed": seed + 3,
        "asimov": [dict(truth=t.tolist(), estimate=e[:2].tolist(), sigma=s[:2].tolist())
                   for t, e, s in zip(truths, a_est, a_err)],
        "asimov_shifted": [dict(truth=t.tolist(), estimate=e[:2].round(4).tolist(),
                                nuisance_over_prior=(a / sigma).round(2).tolist(),
                                estimate_over_prior=(e[2:] / sigma).round(2).tolist())
                           for t, a, e in zip(truths, a_t, s_est)],
        **config.to_dict(),
    }
    return MethodResult("nn_nuisance", float(c9), float(c10), chi2_nuis, y.delta(c9, c10), float(s9), float(s10),
                        seconds, metrics, params, hist, model)
