r"""One interface for every delta C9 estimator: ``predict(sets) -> (estimates, uncertainties)``.

``sets`` is an array ``(M, N, 4)`` of M sets of N events (columns q2,
cos_theta_mu, cos_theta_k, chi), the same array for every estimator, so the
networks and the ML fit are compared on identical events. ``predict`` returns
the estimates ``(M,)`` and their uncertainties ``(M,)``, or None for an
estimator that gives none.

- :class:`ResNetEstimator`: voxelises each set with :func:`kernels.voxels.voxelize`
  (the images a ResNet trains on), then runs the network; ``predict_images``
  takes ready-made images;
- :class:`DeepSetsEstimator`: the Deep Sets network on the raw sets;
- both return ``(mean, sigma)`` of the network's Gaussian predictive density when it
  has the Gaussian head (:mod:`models.heads`), and ``(estimates, None)`` for a point head;
- :class:`EventPosteriorEstimator`: the event-by-event set posterior (the classifier's,
  or the score-trained :class:`models.event_posterior.EventLikelihoodNet`'s): its mean and
  width, the posterior standard deviation of the smooth ``ln L(d)``;
- :class:`MLFitEstimator`: the unbinned ML fit, :func:`kernels.likelihood.fit_sets`,
  with HESSE errors.

The network estimators run on the model's device, in eval mode and without
gradients, a batch of sets at a time; they do not change the model otherwise.

>>> import numpy as np
>>> from models.deepsets import DeepSets
>>> est = DeepSetsEstimator(DeepSets(hidden=8, latent=4))
>>> values, errors = est.predict(np.zeros((3, 5, 4), dtype=np.float32))
>>> values.shape, errors
((3,), None)
>>> isinstance(est, Estimator)
True
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from kernels.errors import ConfigError
from kernels.voxels import voxelize
from models.event_classifier import EventClassifier, posterior_moments
from models.event_posterior import EventLikelihoodNet
from models.features import N_EVENT_VARIABLES
from models.heads import is_gaussian

__all__ = [
    "Estimator",
    "check_sets",
    "ResNetEstimator",
    "DeepSetsEstimator",
    "EventPosteriorEstimator",
    "MLFitEstimator",
    "ProfiledFitEstimator",
]


@runtime_checkable
class Estimator(Protocol):
    """Anything with a ``name`` and ``predict(sets (M, N, 4)) -> (estimates (M,), uncertainties (M,) | None)``."""

    name: str

    def predict(self, sets) -> tuple[np.ndarray, np.ndarray | None]: ...


def check_sets(sets) -> np.ndarray:
    """``sets`` as a float32 array ``(M, N, 4)``; anything else is a one-line ConfigError."""
    arr = np.asarray(sets)
    if arr.ndim != 3 or arr.shape[-1] != N_EVENT_VARIABLES or arr.shape[1] == 0:
        raise ConfigError(
            f"sets must have shape (M, N, {N_EVENT_VARIABLES}) with N >= 1 "
            f"(q2, cos_theta_mu, cos_theta_k, chi), got {arr.shape}"
        )
    return arr.astype(np.float32, copy=False)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class _Network:
    """Shared by the network estimators: a model, a batch size, eval-mode inference.

    ``gaussian``: whether the model has the Gaussian head (its output per item is (mean, sigma)).
    """

    def __init__(self, model: nn.Module, batch_size: int, name: str) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = int(batch_size)
        self.name = name
        self.gaussian = is_gaussian(model)

    def _run(self, fn, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``fn(start, stop) -> tensor (stop - start,)``, or ``(stop - start, 2)`` for the Gaussian head,
        over batches; ``(estimates, sigmas or None)`` as float64."""
        width = 2 if self.gaussian else 1
        was_training = self.model.training
        self.model.eval()
        out = np.empty((n, width), dtype=np.float64)
        try:
            with torch.inference_mode():
                for s in range(0, n, self.batch_size):
                    e = min(n, s + self.batch_size)
                    out[s:e] = fn(s, e).double().cpu().numpy().reshape(e - s, width)
        finally:
            self.model.train(was_training)
        est = np.ascontiguousarray(out[:, 0])
        return (est, np.ascontiguousarray(out[:, 1])) if self.gaussian else (est, None)


class ResNetEstimator(_Network):
    """A ResNet on the voxel images of each set; ``bins`` as trained, ``events_per_image`` the trained N.

    With ``events_per_image`` set, sets of another size are refused (the
    occupancy channel, and so the network, depends on N); None accepts any N.
    """

    def __init__(self, model: nn.Module, bins: int, events_per_image: int | None = None,
                 batch_size: int = 16, name: str = "resnet") -> None:
        super().__init__(model, batch_size, name)
        self.bins = int(bins)
        self.events_per_image = events_per_image

    def images(self, sets) -> np.ndarray:
        """The voxel images ``(M, 2, B, B, B)`` of the sets, exactly as :meth:`predict` builds them."""
        s = check_sets(sets)
        return voxelize(s[..., 1].ravel(), s[..., 2].ravel(), s[..., 3].ravel(), s[..., 0].ravel(),
                        self.bins, n_images=s.shape[0])

    def _forward(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(_device(self.model))
        return self.model(x)

    def predict(self, sets) -> tuple[np.ndarray, np.ndarray | None]:
        s = check_sets(sets)
        if self.events_per_image is not None and s.shape[1] != self.events_per_image:
            raise ConfigError(
                f"{self.name} was trained on images of {self.events_per_image} events, got sets of {s.shape[1]}"
            )
        return self._run(lambda a, b: self._forward(self.images(s[a:b])), s.shape[0])

    def predict_images(self, images) -> tuple[np.ndarray, np.ndarray | None]:
        """Estimates for ready-made images ``(M, C, B, B, B)`` (an array or a memory map)."""
        if getattr(images, "ndim", None) != 5:
            raise ConfigError(f"images must have shape (M, C, B, B, B), got {getattr(images, 'shape', None)}")
        return self._run(lambda a, b: self._forward(images[a:b]), images.shape[0])


class DeepSetsEstimator(_Network):
    """A Deep Sets network on each set; phi runs over ``event_chunk`` events at a time (bounded memory)."""

    def __init__(self, model: nn.Module, batch_size: int = 8, event_chunk: int | None = 1 << 15,
                 name: str = "deepsets") -> None:
        super().__init__(model, batch_size, name)
        self.event_chunk = event_chunk

    def predict(self, sets) -> tuple[np.ndarray, np.ndarray | None]:
        s = check_sets(sets)
        if getattr(self.model, "has_profile", False):  # with nuisances: the summary's profiled fit
            values, errors, _ = self.model.profiled_estimate(s, self.batch_size, self.event_chunk)
            return values, errors
        dev = _device(self.model)
        return self._run(lambda a, b: self.model(torch.from_numpy(s[a:b]).to(dev), event_chunk=self.event_chunk),
                         s.shape[0])


class EventPosteriorEstimator(_Network):
    """The event-by-event set posterior: (posterior mean, posterior width) per set.

    ``model``: an :class:`~models.event_classifier.EventClassifier` or an
    :class:`~models.event_posterior.EventLikelihoodNet`. A model whose ``ln L(d)`` is smooth
    in d (the quadratic head, or the score-trained net) is integrated directly: the mean
    and standard deviation of ``exp(ln L)`` under a flat prior on ``prior_range`` (None: the
    model's own, i.e. the grid's range for the classifier, the wide ``prior_range`` of the
    net). The grid head uses :func:`models.event_classifier.posterior_moments` with
    ``method`` and ``fine``.
    """

    def __init__(self, model: EventClassifier | EventLikelihoodNet, method: str = "spline", fine: int = 2001,
                 batch_size: int = 4, event_chunk: int = 1 << 16, name: str = "event_posterior",
                 prior_range: tuple[float, float] | None = None) -> None:
        super().__init__(model, batch_size, name)
        self.method = method
        self.fine = fine
        self.event_chunk = event_chunk
        self.prior_range = prior_range

    def _per_batch(self, sets, fn, width: int) -> np.ndarray:
        """``fn(x (B, N, 4) on the model's device) -> (B, width)`` over batches of sets, in eval mode."""
        s = check_sets(sets)
        dev = _device(self.model)
        out = np.empty((s.shape[0], width))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for a in range(0, s.shape[0], self.batch_size):
                    x = torch.from_numpy(s[a : a + self.batch_size]).to(dev)
                    out[a : a + x.shape[0]] = np.asarray(fn(x)).reshape(x.shape[0], width)
        finally:
            self.model.train(was_training)
        return out

    def log_likelihood(self, sets, d=None) -> np.ndarray:
        """The set log-likelihood ``(M, K)`` on the classifier's grid (flat prior; see
        :mod:`models.event_classifier`), or ``(M, D)`` at values ``d`` (D,) for a smooth model."""
        if d is not None:
            d = np.asarray(d, dtype=np.float64).ravel()
            return self._per_batch(sets, lambda x: self.model.log_likelihood_at(x, d, event_chunk=self.event_chunk)
                                   .cpu().numpy(), d.size)
        if not hasattr(self.model, "set_log_likelihood"):
            raise ConfigError(f"{type(self.model).__name__} has no grid: give the values d")
        return self._per_batch(sets, lambda x: self.model.set_log_likelihood(x, event_chunk=self.event_chunk)
                               .cpu().numpy(), self.model.n_classes)

    def predict(self, sets) -> tuple[np.ndarray, np.ndarray]:
        if getattr(self.model, "head", "grid") in ("quadratic", EventLikelihoodNet.head):  # smooth in d
            kw = {} if self.prior_range is None else {"prior_range": tuple(self.prior_range)}
            both = self._per_batch(sets, lambda x: np.stack(self.model.continuous_moments(x, **kw), axis=1), 2)
            return both[:, 0], both[:, 1]
        grid = self.model.grid.detach().cpu().numpy()
        return posterior_moments(grid, self.log_likelihood(sets), method=self.method, fine=self.fine)


class MLFitEstimator:
    """The unbinned ML fit of :func:`kernels.likelihood.fit_sets`: (values, HESSE errors) of one coefficient.

    ``pdf_model`` is the level's :class:`kernels.likelihood.PdfModel` (None: the
    generator level); ``coefficient`` picks the column when the table scans
    several. :meth:`fit` returns the whole FitResult, validity flags included.
    """

    def __init__(self, table, pdf_model=None, coefficient: int = 0, name: str = "ml_fit") -> None:
        if not 0 <= coefficient < table.n_shifts:
            raise ConfigError(f"coefficient index {coefficient} out of range for {table.n_shifts} scanned shift(s)")
        self.table = table
        self.pdf_model = pdf_model
        self.coefficient = coefficient
        self.name = name

    def fit(self, sets):
        from kernels.likelihood import GEN, fit_sets

        return fit_sets(self.table, check_sets(sets), self.pdf_model if self.pdf_model is not None else GEN)

    def predict(self, sets) -> tuple[np.ndarray, np.ndarray]:
        res = self.fit(sets)
        values, errors = np.asarray(res.values), np.asarray(res.errors)
        if values.ndim == 2:
            values, errors = values[:, self.coefficient], errors[:, self.coefficient]
        return values.astype(np.float64), errors.astype(np.float64)


class ProfiledFitEstimator(MLFitEstimator):
    """The profiled ML fit (:func:`kernels.profile.fit_sets_profiled`): delta C9 with the nuisances of
    ``ntable`` (a :class:`kernels.nuisances.NuisanceTable`, or a :class:`kernels.amplitudes.AmplitudeTable`
    with the power corrections) fitted too, constrained by their prior."""

    def __init__(self, ntable, pdf_model=None, prior_scale: float = 1.0, name: str = "ml_fit_profiled") -> None:
        super().__init__(ntable, pdf_model, 0, name)
        self.prior_scale = prior_scale
        self._norm = None

    def fit(self, sets):
        from kernels.likelihood import GEN
        from kernels.profile import fit_sets_profiled, profile_normalisation

        model = self.pdf_model if self.pdf_model is not None else GEN
        if self._norm is None:  # the normalisation, once (a quadrature at detector level)
            self._norm = profile_normalisation(self.table, model)
        return fit_sets_profiled(self.table, check_sets(sets), model, self.prior_scale, norm=self._norm)


class NuisanceEventPosteriorEstimator:
    """The event posterior with the form factors profiled (:class:`models.nuisance_posterior.NuisanceScoreNet`):
    per set, the mode in (delta C9, u) of the learned per-event ratios at a shared u, and the profiled,
    prior-constrained error of delta C9."""

    def __init__(self, model, prior_scale: float = 1.0, name: str = "event_posterior_profiled") -> None:
        self.model = model
        self.prior_scale = prior_scale
        self.name = name

    def predict(self, sets) -> tuple[np.ndarray, np.ndarray]:
        res = self.model.fit_sets(check_sets(sets), self.prior_scale)
        return np.asarray(res.values, dtype=np.float64).ravel(), np.asarray(res.errors, dtype=np.float64).ravel()
