r"""The inverse map of the global fit: binned observables x (K) -> Wilson coefficients theta (P), with a width.

The seed study (Partida & Masjuan) fits (C9, C10) to K = 37 binned LHCb
observables with a small network trained on *noise-free* theory predictions
``f(theta)`` over a grid. That network learns a left inverse of ``f``; on real
data, ``x = f(theta) + eps`` with ``eps ~ N(0, Sigma)``, it has never seen a
point off the P-dimensional surface ``f(theta)`` in the K-dimensional space of
observables, so its answer there is arbitrary, and it gives no width. Here every epoch draws **fresh noise**
through the Cholesky factor ``L`` of the total covariance
``Sigma = Sigma_exp + Sigma_th = L L^T``,

.. math::

    x = f(\theta) + L\,\varepsilon, \qquad \varepsilon \sim N(0, I_K),

so the network is trained on the joint distribution ``p(theta) p(x | theta)``
(``p(theta)`` flat over the grid). A Gaussian head returns a mean ``mu(x)`` and
a log-variance ``s(x)`` per parameter, trained with the Gaussian NLL

.. math::

    \mathcal{L} = \tfrac12\,\mathbb{E}_{\theta, x}\big[s(x) + (\theta - \mu(x))^2 e^{-s(x)}\big],

minimised (per parameter, for a flexible network) by ``mu(x) = E[theta | x]``
and ``exp s(x) = Var[theta | x]``: the marginal posterior mean and width under
the grid's flat prior (the head is diagonal: correlations between parameters
are the job of :mod:`models.cgan`). Without the noise (``noise_scale=0``) the
target is a deterministic function of x, the NLL drives the width to zero, and
the map is over-confident on noisy data (``tests/models/test_inverse_map.py``
shows both).

**Nuisance parameters.** With ``nuisances=LinearNuisances(H, sigma)``, every
pair also draws ``m`` nuisance parameters from their Gaussian prior,
``a ~ N(0, diag(sigma^2))``, that shift the prediction linearly,

.. math::

    x = f(\theta) + H a + L\,\varepsilon,

and the network's target is ``(theta, a)`` (``P + m`` parameters): its
``theta`` outputs are then the posterior of ``theta`` with ``a`` marginalised
(for linear ``f``, the Gaussian posterior with ``Sigma -> Sigma + H S H^T``,
``S = diag(sigma^2)``) and its ``a`` outputs their posterior (the prior where
the data do not constrain them). The global fit's hadronic polynomials
(:func:`kernels.chi2.nuisance_design`) are such nuisances.

``predictions`` may also be a callable ``f(theta) -> (n, K)`` (``theta`` a float32
tensor (n, P) on the training device; an array or a tensor back): each epoch
then draws ``theta`` uniformly in the bounding box of the given ``theta``
instead of reusing the grid, so the map also sees parameters between grid
points. Inputs and outputs are standardised by buffers (``x_mean``, ``x_std``,
``theta_mean``, ``theta_std``) that travel with the ``state_dict``; ``x_std``
includes the noise, ``var f + diag(Sigma)``.

:class:`LinearGaussianToy` is a benchmark with a known posterior:
``x = A theta + b + eps``, posterior covariance ``(A^T Sigma^-1 A)^-1`` away
from the box edges.

>>> toy = LinearGaussianToy.random(n_obs=6, seed=0)
>>> theta = toy.grid(10)
>>> model, hist = train_inverse_map(theta, toy.predictions(theta), toy.cov,
...                                 InverseMapConfig(epochs=2, hidden=8), seed=0)
>>> est, err = InverseMapEstimator(model).predict(toy.predictions(theta[:3]))
>>> est.shape, err.shape, bool((err > 0).all()), len(hist["train_loss"])
((3, 2), (3, 2), True, 2)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from kernels.errors import ConfigError
from models.features import mlp
from models.training import resolve_device, seed_everything

__all__ = [
    "LinearGaussianToy",
    "LinearNuisances",
    "SimulatedPairs",
    "fit_scales",
    "Standardised",
    "InverseMap",
    "InverseMapConfig",
    "train_inverse_map",
    "predict",
    "InverseMapEstimator",
]

Predictor = Callable[[torch.Tensor], torch.Tensor]


def _tensor(a, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a).to(device=device, dtype=dtype)


def cholesky(cov, device: torch.device) -> torch.Tensor:
    """The lower Cholesky factor ``L`` of ``cov`` (K, K) (in float64, returned as float32); one-line error if not SPD."""
    c = _tensor(cov, torch.device("cpu"), torch.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or not torch.allclose(c, c.T, rtol=1e-6, atol=1e-12):
        raise ConfigError(f"cov must be a symmetric (K, K) matrix, got shape {tuple(c.shape)}")
    L, info = torch.linalg.cholesky_ex(c)
    if int(info) != 0:
        raise ConfigError("cov is not positive definite (its Cholesky factorisation fails)")
    return L.to(device=device, dtype=torch.float32)


@dataclass(frozen=True)
class LinearNuisances:
    """Nuisance parameters ``a`` (m) with prior ``N(0, diag(sigma^2))`` that add ``design @ a`` to the predictions.

    ``design`` is (K, m), ``sigma`` (m,), every width positive.
    """

    design: np.ndarray
    sigma: np.ndarray

    def __post_init__(self) -> None:
        H, s = np.asarray(self.design, float), np.asarray(self.sigma, float)
        if H.ndim != 2 or s.shape != (H.shape[1],) or H.shape[1] < 1:
            raise ConfigError(f"nuisances: design must be (K, m) and sigma (m,) with m >= 1, got {H.shape} and {s.shape}")
        if not (np.all(np.isfinite(H)) and np.all(np.isfinite(s)) and np.all(s > 0)):
            raise ConfigError("nuisances: the design must be finite and every prior width positive")
        object.__setattr__(self, "design", H)
        object.__setattr__(self, "sigma", s)

    @property
    def size(self) -> int:
        return self.design.shape[1]


class SimulatedPairs:
    """Fresh training pairs ``(theta, x = f(theta) + noise_scale * L eps)`` on a device, from one torch generator.

    ``theta`` (M, P) is the grid; ``predictions`` is the table ``f(grid)`` (M, K)
    or a callable ``f``. With a table, :meth:`draw` repeats the grid ``copies``
    times with fresh noise; with a callable, it draws ``copies * M`` parameters
    uniformly in the grid's bounding box. With ``nuisances``, each pair also
    draws ``a`` from its prior: ``x`` gains ``H a`` and the parameters are
    ``(theta, a)``, P + m of them.
    """

    def __init__(self, theta, predictions, cov, device: torch.device, generator: torch.Generator,
                 noise_scale: float = 1.0, nuisances: LinearNuisances | None = None) -> None:
        self.device = device
        self.theta = _tensor(theta, device)
        if self.theta.ndim != 2 or self.theta.shape[0] < 2:
            raise ConfigError(f"theta must have shape (M, P) with M >= 2, got {tuple(self.theta.shape)}")
        self.predictor: Predictor | None = predictions if callable(predictions) else None
        self.table = self._predict(self.theta) if self.predictor else _tensor(predictions, device)
        if self.table.shape[0] != self.theta.shape[0] or self.table.ndim != 2:
            raise ConfigError(f"predictions must have shape (M, K) with M = {self.theta.shape[0]}, "
                              f"got {tuple(self.table.shape)}")
        self.chol = cholesky(cov, device)
        if self.chol.shape[0] != self.table.shape[1]:
            raise ConfigError(f"cov is {tuple(self.chol.shape)} but there are {self.table.shape[1]} observables")
        if not noise_scale >= 0:
            raise ConfigError(f"noise_scale must be >= 0, got {noise_scale}")
        self.noise_scale = float(noise_scale)
        self.generator = generator
        self.lo, self.hi = self.theta.min(0).values, self.theta.max(0).values
        self.design = self.nuisance_sigma = None
        if nuisances is not None:
            if nuisances.design.shape[0] != self.n_obs:
                raise ConfigError(f"nuisances: the design has {nuisances.design.shape[0]} rows but there are "
                                  f"{self.n_obs} observables")
            self.design, self.nuisance_sigma = _tensor(nuisances.design, device), _tensor(nuisances.sigma, device)

    @property
    def n_nuisances(self) -> int:
        return 0 if self.design is None else self.design.shape[1]

    @property
    def n_params(self) -> int:
        return self.theta.shape[1] + self.n_nuisances

    @property
    def n_obs(self) -> int:
        return self.table.shape[1]

    def _predict(self, theta: torch.Tensor) -> torch.Tensor:
        return _tensor(self.predictor(theta), self.device)

    def noise(self, n: int) -> torch.Tensor:
        """``n`` draws ``noise_scale * L eps``, shape (n, K)."""
        eps = torch.randn(n, self.n_obs, device=self.device, generator=self.generator)
        return self.noise_scale * eps @ self.chol.T

    def draw(self, copies: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``copies * M`` pairs ``(theta (n, P), x (n, K))``, noise drawn afresh."""
        if self.predictor is None:
            theta, mean = self.theta.repeat(copies, 1), self.table.repeat(copies, 1)
        else:
            u = torch.rand(copies * self.theta.shape[0], self.theta.shape[1], device=self.device,
                           generator=self.generator)
            theta = self.lo + u * (self.hi - self.lo)
            mean = self._predict(theta)
        if self.design is not None:
            a = self.nuisance_sigma * torch.randn(theta.shape[0], self.n_nuisances, device=self.device,
                                                  generator=self.generator)
            theta, mean = torch.cat([theta, a], 1), mean + a @ self.design.T
        return theta, mean + self.noise(theta.shape[0])


def fit_scales(pairs: SimulatedPairs) -> dict[str, torch.Tensor]:
    """Standardisation of x and theta: the grid's mean and std, with ``noise_scale^2 diag(Sigma)`` added to var x.

    Nuisances are scaled by their prior (mean 0, std ``sigma``) and add ``diag(H S H^T)`` to var x.
    """
    x_var = pairs.table.var(0) + pairs.noise_scale**2 * (pairs.chol**2).sum(1)
    theta_mean, theta_std = pairs.theta.mean(0), pairs.theta.std(0)
    if pairs.design is not None:
        x_var = x_var + (pairs.design**2 * pairs.nuisance_sigma**2).sum(1)
        theta_mean = torch.cat([theta_mean, torch.zeros_like(pairs.nuisance_sigma)])
        theta_std = torch.cat([theta_std, pairs.nuisance_sigma])
    return {
        "x_mean": pairs.table.mean(0),
        "x_std": x_var.sqrt().clamp_min(1e-12),
        "theta_mean": theta_mean,
        "theta_std": theta_std.clamp_min(1e-12),
    }


class Standardised(nn.Module):
    """Buffers ``x_mean``, ``x_std``, ``theta_mean``, ``theta_std`` and the maps to and from standard units."""

    def _init_scales(self, n_obs: int, n_params: int) -> None:
        self.register_buffer("x_mean", torch.zeros(n_obs))
        self.register_buffer("x_std", torch.ones(n_obs))
        self.register_buffer("theta_mean", torch.zeros(n_params))
        self.register_buffer("theta_std", torch.ones(n_params))

    @torch.no_grad()
    def set_scales(self, scales: dict[str, torch.Tensor]) -> None:
        for name, value in scales.items():
            getattr(self, name).copy_(value)

    def scale_x(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.x_mean) / self.x_std

    def scale_theta(self, theta: torch.Tensor) -> torch.Tensor:
        return (theta - self.theta_mean) / self.theta_std

    def unscale_theta(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.theta_std + self.theta_mean


class InverseMap(Standardised):
    """MLP x (K) -> (mean, log-variance) of theta (P), both in standard units; ``InverseMap(**hparams)`` rebuilds it."""

    #: Bounds of the standardised log-variance (widths from 4.5e-5 to 150 theta_std): keeps the NLL finite.
    LOG_VAR_RANGE = (-20.0, 10.0)

    def __init__(self, n_obs: int, n_params: int, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.n_params = int(n_params)
        self.net = mlp(n_obs, hidden, layers, 2 * n_params)
        self._init_scales(n_obs, n_params)
        self.hparams = dict(n_obs=n_obs, n_params=n_params, hidden=hidden, layers=layers)

    def forward(self, x_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised x (B, K) -> standardised mean (B, P) and log-variance (B, P)."""
        out = self.net(x_std)
        return out[:, : self.n_params], out[:, self.n_params :].clamp(*self.LOG_VAR_RANGE)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw observations (B, K) -> posterior mean and width (B, P) in the units of theta."""
        mean, log_var = self(self.scale_x(x))
        return self.unscale_theta(mean), (0.5 * log_var).exp() * self.theta_std


def gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``0.5 * mean(log_var + (target - mean)^2 exp(-log_var))``, the Gaussian NLL without its constant."""
    return 0.5 * (log_var + (target - mean).square() * (-log_var).exp()).mean()


@dataclass
class InverseMapConfig:
    """Hyper-parameters of :func:`train_inverse_map`; the defaults train a 50x50 grid x K=37 in seconds on one core.

    Each epoch sees ``noise_draws`` noisy copies of the grid (``noise_scale`` times
    the noise of ``cov``; 0 gives the seed study's noise-free training). AdamW,
    cosine-annealed per step to 0; the weights of the epoch with the lowest loss
    on one fixed noisy copy of the grid are kept.
    """

    hidden: int = 64
    layers: int = 2
    epochs: int = 60
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    noise_draws: int = 4
    noise_scale: float = 1.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("hidden", "epochs", "batch_size", "noise_draws"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ConfigError(f"InverseMapConfig: {name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.layers, int) and self.layers >= 0):
            raise ConfigError(f"InverseMapConfig: layers must be an integer >= 0, got {self.layers!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"InverseMapConfig: lr must be positive, got {self.lr}")
        if not (self.weight_decay >= 0 and self.noise_scale >= 0):
            raise ConfigError("InverseMapConfig: weight_decay and noise_scale must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


def batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """Index tensors of a seeded random permutation of ``range(n)``, ``batch_size`` at a time (last one partial)."""
    order = torch.randperm(n, generator=generator, device=device)
    for s in range(0, n, batch_size):
        yield order[s : s + batch_size]


def train_inverse_map(theta, predictions, cov, config: InverseMapConfig | None = None, seed: int = 0,
                      nuisances: LinearNuisances | None = None) -> tuple[InverseMap, dict]:
    """Train an :class:`InverseMap` on ``theta`` (M, P), ``predictions`` (M, K) or a callable, ``cov`` (K, K).

    With ``nuisances`` (m of them) the map estimates ``(theta, a)``, P + m parameters, the nuisances last.

    Deterministic for a fixed ``seed`` on a given device (weights from
    ``seed_everything(seed)``, noise and batch order from one torch generator).
    Returns the model (eval mode, on ``config.device``) and the history:
    ``train_loss``, ``val_loss`` (per epoch, Gaussian NLL in standard units),
    ``best_epoch``, ``seconds``, ``device``.
    """
    cfg = config or InverseMapConfig()
    device = resolve_device(cfg.device)
    gen = torch.Generator(device=device).manual_seed(seed)
    pairs = SimulatedPairs(theta, predictions, cov, device, gen, cfg.noise_scale, nuisances)
    seed_everything(seed)
    model = InverseMap(pairs.n_obs, pairs.n_params, cfg.hidden, cfg.layers).to(device)
    model.set_scales(fit_scales(pairs))
    val_theta, val_x = pairs.draw(1)
    val_t, val_x = model.scale_theta(val_theta), model.scale_x(val_x)
    n = cfg.noise_draws * pairs.theta.shape[0]
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    hist: dict = {"train_loss": [], "val_loss": [], "best_epoch": -1, "device": str(device)}
    best, best_state = math.inf, None
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        th, x = pairs.draw(cfg.noise_draws)
        t, x = model.scale_theta(th), model.scale_x(x)
        total = torch.zeros((), device=device, dtype=torch.float64)
        for idx in batches(n, cfg.batch_size, gen, device):
            loss = gaussian_nll(*model(x[idx]), t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach().double() * idx.numel()
        model.eval()
        with torch.no_grad():
            val = float(gaussian_nll(*model(val_x), val_t))
        hist["train_loss"].append(float(total) / n)
        hist["val_loss"].append(val)
        if not math.isfinite(val):
            raise ConfigError(f"the inverse map's loss is {val} at epoch {epoch}: lower lr")
        if val < best:
            best, hist["best_epoch"] = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    hist["seconds"] = time.perf_counter() - t0
    return model.eval(), hist


def as_observations(observations, n_obs: int, device: torch.device) -> tuple[torch.Tensor, bool]:
    """``observations`` (K,) or (B, K) as a float32 (B, K) tensor on ``device``, and whether it was one vector."""
    x = _tensor(observations, device)
    single = x.ndim == 1
    x = x.unsqueeze(0) if single else x
    if x.ndim != 2 or x.shape[1] != n_obs:
        raise ConfigError(f"observations must have shape ({n_obs},) or (B, {n_obs}), got {tuple(x.shape)}")
    return x, single


def model_device(model: nn.Module) -> torch.device:
    return next(model.buffers()).device


@torch.no_grad()
def predict(model: InverseMap, observations) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and widths (B, P) (float64) of observations (B, K); a single (K,) vector gives (P,)."""
    x, single = as_observations(observations, model.x_mean.shape[0], model_device(model))
    was_training = model.training
    model.eval()
    try:
        mean, std = model.moments(x)
    finally:
        model.train(was_training)
    mean, std = mean.double().cpu().numpy(), std.double().cpu().numpy()
    return (mean[0], std[0]) if single else (mean, std)


class InverseMapEstimator:
    """``predict(observations (B, K)) -> (estimates (B, P), uncertainties (B, P))``, as :mod:`models.estimators`."""

    def __init__(self, model: InverseMap, name: str = "inverse_map") -> None:
        self.model = model
        self.name = name

    def predict(self, observations) -> tuple[np.ndarray, np.ndarray]:
        return predict(self.model, observations)


@dataclass
class LinearGaussianToy:
    """``x = A theta + b + eps``, ``eps ~ N(0, cov)``: a benchmark whose posterior is known in closed form.

    With a flat prior, and away from the edges of the prior box, the posterior
    is Gaussian with covariance ``C = (A^T cov^-1 A)^-1`` and mean
    ``C A^T cov^-1 (x - b)`` (the generalised least-squares estimate).
    """

    A: np.ndarray
    b: np.ndarray
    cov: np.ndarray

    @classmethod
    def random(cls, n_obs: int = 8, n_params: int = 2, seed: int = 0, noise: float = 0.3,
               correlation: float = 0.3) -> LinearGaussianToy:
        """A random well-conditioned A, b and a covariance with std ``noise`` and equicorrelation ``correlation``."""
        rng = np.random.default_rng(seed)
        A = rng.normal(0.0, 1.0, (n_obs, n_params)) / math.sqrt(n_params)
        b = rng.normal(0.0, 1.0, n_obs)
        corr = np.full((n_obs, n_obs), correlation) + (1 - correlation) * np.eye(n_obs)
        return cls(A, b, noise**2 * corr)

    def grid(self, n: int = 50, lo=(-2.0, -1.0), hi=(0.0, 1.0)) -> np.ndarray:
        """``n`` points per axis over the box ``[lo, hi]`` (P = len(lo)), shape (n^P, P), the first axis slowest."""
        axes = [np.linspace(a, z, n) for a, z in zip(lo, hi, strict=True)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))

    def predictions(self, theta) -> np.ndarray:
        """The noise-free ``A theta + b``, shape (n, K)."""
        return np.asarray(theta, dtype=np.float64) @ self.A.T + self.b

    def simulate(self, theta, rng: np.random.Generator) -> np.ndarray:
        """Noisy observations ``A theta + b + eps``, shape (n, K)."""
        theta = np.atleast_2d(theta)
        return self.predictions(theta) + rng.multivariate_normal(np.zeros(len(self.b)), self.cov, theta.shape[0])

    def posterior_cov(self) -> np.ndarray:
        return np.linalg.inv(self.A.T @ np.linalg.solve(self.cov, self.A))

    def posterior_mean(self, x) -> np.ndarray:
        """The GLS estimate of each observation (n, K) -> (n, P): the posterior mean away from the box edges."""
        W = self.posterior_cov() @ self.A.T @ np.linalg.inv(self.cov)
        return (np.atleast_2d(x) - self.b) @ W.T
