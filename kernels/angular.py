r"""The angular basis of B0 -> K*0 mu mu and the observables built on it.

The 4D rate in the LHCb convention is

.. math::

    \frac{d^4\Gamma}{dq^2\,d\cos\theta_\ell\,d\cos\theta_K\,d\chi}
      = \frac{9}{32\pi} \sum_i J_i(q^2)\, f_i(\cos\theta_\ell, \cos\theta_K, \chi)

with the twelve :data:`TERMS` in the order used by every array in wcscan
(``J[..., i]`` multiplies ``f[..., i]``). Integrated over the angles,
``dGamma/dq2 = RATE_WEIGHTS @ J = 3/4 (2 J1s + J1c) - 1/4 (2 J2s + J2c)``.

Observables are ratios of q2 integrals of the J_i, exactly as flavio defines
its binned ``<X>(B0->K*mumu)``. A purely longitudinal K* (massless leptons) has FL = 1:

>>> import numpy as np
>>> J = np.zeros(12); J[TERMS.index("1c")] = 4/3; J[TERMS.index("2c")] = -4/3
>>> round(float(rate(J)), 12), round(float(observables(J)["FL"]), 12)
(1.333333333333, 1.0)
"""

from __future__ import annotations

import numpy as np

TERMS: tuple[str, ...] = ("1s", "1c", "2s", "2c", "3", "4", "5", "6s", "6c", "7", "8", "9")
"""Names of the angular coefficients, in array order."""

FLAVIO_KEYS: tuple = ("1s", "1c", "2s", "2c", 3, 4, 5, "6s", "6c", 7, 8, 9)
"""The keys of the dicts returned by flavio's ``BVllObservable.j``, in :data:`TERMS` order."""

LHCB_SIGNS = np.array([1, 1, 1, 1, 1, -1, 1, -1, -1, -1, 1, -1], dtype=np.float64)
"""s_i: flavio's theory convention -> LHCb convention (flip 4, 6s, 6c, 7, 9)."""

PREFACTOR = 9.0 / (32.0 * np.pi)

RATE_WEIGHTS = np.array([0.75 * 2, 0.75, -0.25 * 2, -0.25, 0, 0, 0, 0, 0, 0, 0, 0], dtype=np.float64)
"""dGamma/dq2 = RATE_WEIGHTS @ J."""

_IDX = {name: i for i, name in enumerate(TERMS)}


def basis(cos_l, cos_k, chi, dtype=np.float64, axis: int = -1, out: np.ndarray | None = None) -> np.ndarray:
    """The twelve angular functions f_i at each event, shape ``(..., 12)``.

    ``axis=0`` gives the term-major layout ``(12, ...)``, contiguous per term;
    ``out`` receives the result in place.

    >>> f = basis(np.array([0.0]), np.array([1.0]), np.array([0.0]))
    >>> f[0, TERMS.index("1c")], f[0, TERMS.index("2c")]
    (np.float64(1.0), np.float64(-1.0))
    """
    cl = np.asarray(cos_l, dtype=dtype)
    ck = np.asarray(cos_k, dtype=dtype)
    ch = np.asarray(chi, dtype=dtype)
    cl2 = cl * cl
    ck2 = ck * ck
    sl2 = 1 - cl2
    sk2 = 1 - ck2
    sl = np.sqrt(np.maximum(sl2, 0))
    sk = np.sqrt(np.maximum(sk2, 0))
    c2l = 2 * cl2 - 1
    s2l = 2 * sl * cl
    s2k = 2 * sk * ck
    cchi = np.cos(ch)
    schi = np.sin(ch)
    c2chi = 2 * cchi * cchi - 1
    s2chi = 2 * schi * cchi
    return np.stack(
        [
            sk2,
            ck2,
            sk2 * c2l,
            ck2 * c2l,
            sk2 * sl2 * c2chi,
            s2k * s2l * cchi,
            s2k * sl * cchi,
            sk2 * cl,
            ck2 * cl,
            s2k * sl * schi,
            s2k * s2l * schi,
            sk2 * sl2 * s2chi,
        ],
        axis=axis,
        out=out,
    )


def rate(J) -> np.ndarray:
    """dGamma/dq2 (or its q2 integral) from J (or its q2 integral), shape ``J.shape[:-1]``."""
    return np.asarray(J) @ RATE_WEIGHTS


def cos_k_weights(J) -> tuple[np.ndarray, np.ndarray]:
    r"""Weights of the transverse and longitudinal parts of the cos(theta_K) marginal.

    Integrating the rate over cos(theta_l) and chi leaves
    ``T * 3/4 (1 - c^2) + L * 3/2 c^2`` with ``T = (3 J1s - J2s)/2`` and
    ``L = (3 J1c - J2c)/4``; ``T + L = rate(J)``.
    """
    J = np.asarray(J)
    T = (3 * J[..., _IDX["1s"]] - J[..., _IDX["2s"]]) / 2
    L = (3 * J[..., _IDX["1c"]] - J[..., _IDX["2c"]]) / 4
    return T, L


def observables(J) -> dict[str, np.ndarray]:
    """Binned observables from q2-integrated, LHCb-convention J (flavio's definitions).

    Keys match flavio's names without the ``<...>(B0->K*mumu)`` decoration:
    ``AFB, FL, S3, S4, S5, S7, S8, S9, P4p, P5p``.
    """
    J = np.asarray(J, dtype=np.float64)
    G = rate(J)
    out = {
        "AFB": (0.75 * J[..., _IDX["6s"]] + 0.375 * J[..., _IDX["6c"]]) / G,
        "FL": -J[..., _IDX["2c"]] / G,
    }
    for i in ("3", "4", "5", "7", "8", "9"):
        out[f"S{i}"] = J[..., _IDX[i]] / G
    with np.errstate(invalid="ignore", divide="ignore"):  # P' are undefined without a transverse part
        den = 2 * np.sqrt(-J[..., _IDX["2s"]] * J[..., _IDX["2c"]])
        out["P4p"] = J[..., _IDX["4"]] / den
        out["P5p"] = J[..., _IDX["5"]] / den
    return out


def gram_matrix(n_cos: int = 12, n_chi: int = 16) -> np.ndarray:
    r"""``G[i, j] = 9/(32 pi) * integral f_i f_j dOmega`` (exact: Gauss-Legendre and a periodic grid).

    For events drawn from J (q2-integrated), ``E[f] = G @ J / rate(J)``, so
    ``J / rate(J) = solve(G, E[f])``: the method of moments behind
    :func:`moments_to_normalised_j`.
    """
    x, w = np.polynomial.legendre.leggauss(n_cos)
    chi = np.arange(n_chi) * (2 * np.pi / n_chi)
    wchi = np.full(n_chi, 2 * np.pi / n_chi)
    CL, CK, CH = np.meshgrid(x, x, chi, indexing="ij")
    W = (w[:, None, None] * w[None, :, None] * wchi[None, None, :]).ravel()
    F = basis(CL.ravel(), CK.ravel(), CH.ravel())
    return PREFACTOR * (F * W[:, None]).T @ F


def moments_to_normalised_j(f_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Estimate ``J / rate`` (q2-integrated) and its covariance from per-event ``f`` values.

    ``f_values`` has shape ``(N, 12)`` (:func:`basis` of the events). Returns the
    estimate ``(12,)`` and its covariance ``(12, 12)`` from the sample covariance.
    """
    G = gram_matrix()
    Ginv = np.linalg.inv(G)
    mean = f_values.mean(axis=0)
    cov_f = np.cov(f_values, rowvar=False) / f_values.shape[0]
    return Ginv @ mean, Ginv @ cov_f @ Ginv.T
