r"""Output heads of the regression networks: a point estimate, or a Gaussian (a value and its width).

:class:`models.resnet3d.ResNet3d` and :class:`models.deepsets.DeepSets` take ``head``:

- ``"point"`` (the default): one number per target, :math:`\hat d`, trained with MAE or MSE;
- ``"gaussian"``: two numbers per target, the mean and the standard deviation of a
  Gaussian predictive density :math:`p(d \mid x) = \mathcal N(d;\ \mu(x), \sigma(x)^2)`,
  trained with the Gaussian negative log-likelihood (:class:`GaussianNLLLoss`). The
  network's last linear layer gives :math:`(a, b)` and :class:`GaussianHead` maps them to

  .. math::

      \mu = a, \qquad \sigma = \sigma_{\min} + \operatorname{softplus}(b)
      = \sigma_{\min} + \ln(1 + e^{b}).

  The output is ``(batch, 2)`` (``[..., 0]`` the mean, ``[..., 1]`` sigma) for one
  target, ``(batch, outputs, 2)`` for several.

Why this parametrisation:

- positivity without a clamp: softplus is smooth and never has a zero gradient, so a
  width driven far from its optimum always comes back (a clamp of the log-variance kills
  the gradient outside its range);
- for :math:`b > 0`, :math:`\sigma \approx b` grows only linearly, where the usual
  :math:`\sigma = e^{s/2}` grows exponentially: one large optimiser step cannot multiply
  the variance, and the NLL's gradient :math:`\partial\ell/\partial b = (1/\sigma -
  r^2/\sigma^3)\,\operatorname{sigmoid}(b)` stays below :math:`1/\sigma` on the wide side;
- for :math:`b \ll 0`, :math:`\operatorname{softplus}(b) \approx e^{b}`: widths over many
  decades are reachable, as with a log-variance;
- the floor :math:`\sigma_{\min}` (:data:`SIGMA_FLOOR`, in target units, i.e. delta C9)
  bounds :math:`\ln\sigma` and :math:`r^2/\sigma^2`: a batch the mean fits exactly cannot
  drive the loss to :math:`-\infty`. It is 40 times below the Cramér–Rao bound of a set of
  :math:`10^6` events (:math:`\sigma_\mathrm{CRB} \ge 0.0044` over :math:`-2 \le \delta C_9 \le 1`),
  so it never binds for an honest width.
- at initialisation :math:`b \approx 0`, so :math:`\sigma \approx \ln 2 \approx 0.7`,
  the spread of delta C9 over the training grid: the first NLL gradients are moderate.

``hparams`` of a point-head network do not mention the head (checkpoints of point
networks are as before); a Gaussian one records ``head="gaussian"``, which rebuilds it
(:func:`is_gaussian`).

>>> import torch
>>> out = GaussianHead()(torch.tensor([[0.5, -30.0], [1.0, 0.0]]))
>>> out[:, 0].tolist(), bool(out[0, 1] >= SIGMA_FLOOR), round(float(out[1, 1]), 4)
([0.5, 1.0], True, 0.6932)
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.errors import ConfigError

__all__ = [
    "HEADS",
    "NLL_LOSSES",
    "SIGMA_FLOOR",
    "DEFAULT_BETA",
    "check_head",
    "head_units",
    "is_gaussian",
    "loss_for_head",
    "GaussianHead",
    "GaussianNLLLoss",
    "finish_output",
    "split_gaussian",
    "MVN_LOSS",
    "MultivariateGaussianHead",
    "MultivariateGaussianNLLLoss",
    "split_multivariate",
]

HEADS = ("point", "gaussian")

#: Losses of the Gaussian head: the plain NLL (beta = 0) and the beta-NLL with beta = DEFAULT_BETA.
NLL_LOSSES = ("gaussian_nll", "beta_nll")

#: The loss of :class:`MultivariateGaussianHead` (:class:`MultivariateGaussianNLLLoss`).
MVN_LOSS = "mvn_nll"

#: Lower bound of the predicted sigma, in target units (see the module docstring).
SIGMA_FLOOR = 1e-4

#: The beta of ``"beta_nll"`` (Seitzer et al. 2022 recommend 0.5).
DEFAULT_BETA = 0.5


def check_head(head: str) -> str:
    """``head`` if it is one of :data:`HEADS`, else a one-line ConfigError."""
    if head not in HEADS:
        raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    return head


def head_units(head: str, outputs: int) -> int:
    """Units of the network's last linear layer: ``outputs`` for a point head, ``2 * outputs`` for a Gaussian."""
    return outputs * (2 if check_head(head) == "gaussian" else 1)


def is_gaussian(model: nn.Module) -> bool:
    """Whether ``model`` (a ResNet3d or DeepSets) has the Gaussian head: read from its ``hparams``."""
    return (getattr(model, "hparams", None) or {}).get("head") == "gaussian"


def loss_for_head(head: str, loss: str | None) -> str:
    """The training loss of a network with ``head``, given the loss asked for (None: the head's default).

    A Gaussian head trains with an NLL (:data:`NLL_LOSSES`); a point loss asked for with
    it (e.g. a sweep's ``loss: mae``) becomes ``"beta_nll"``. A point head refuses an NLL.
    """
    if check_head(head) == "gaussian":
        return loss if loss in NLL_LOSSES else "beta_nll"
    if loss in NLL_LOSSES:
        raise ConfigError(f"loss {loss!r} needs head: gaussian (the point head gives no width)")
    return loss if loss is not None else "mae"


class GaussianHead(nn.Module):
    r"""``(..., 2)`` raw outputs :math:`(a, b)` -> ``(..., 2)`` :math:`(\mu, \sigma)`, sigma = floor + softplus(b).

    Computed in float32 whatever the autocast dtype (softplus of a float16 loses the floor).
    """

    def __init__(self, floor: float = SIGMA_FLOOR) -> None:
        super().__init__()
        self.floor = float(floor)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        raw = raw.float()
        return torch.stack([raw[..., 0], self.floor + nn.functional.softplus(raw[..., 1])], dim=-1)


def finish_output(out: torch.Tensor, head: str, outputs: int, gaussian: GaussianHead | None) -> torch.Tensor:
    """The network's result from its last linear layer ``(batch, head_units)``: ``(batch,)`` or
    ``(batch, outputs)`` for a point head; ``(batch, 2)`` or ``(batch, outputs, 2)`` for a Gaussian one."""
    if head == "gaussian":
        out = gaussian(out.reshape(out.shape[0], outputs, 2))
    return out.squeeze(1) if outputs == 1 else out


def split_gaussian(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, sigma)`` of a Gaussian head's output ``(..., 2)``."""
    if out.shape[-1] != 2:
        raise ConfigError(f"a Gaussian head's output ends in (mean, sigma), got shape {tuple(out.shape)}")
    return out[..., 0], out[..., 1]


class GaussianNLLLoss(nn.Module):
    r"""The (beta-weighted) Gaussian negative log-likelihood of ``(mean, sigma)`` outputs, mean over the batch.

    For an output ``(..., 2)`` :math:`(\mu, \sigma)` against targets ``(...)`` :math:`y`, with
    :math:`r = y - \mu`:

    .. math::

        \ell = \ln\sigma + \frac{r^2}{2\sigma^2}, \qquad
        L_\beta = \big\lfloor \sigma^{2\beta} \big\rfloor\, \ell

    (the constant :math:`\tfrac12\ln 2\pi` is left out; :math:`\lfloor\cdot\rfloor`: no gradient
    flows through the weight). ``beta = 0`` is the plain NLL. Its gradient in the mean,
    :math:`-r/\sigma^2`, weights each sample by its inverse predicted variance, so while
    the widths are still wrong the mean under-fits where they are large (Seitzer et al.,
    "On the pitfalls of heteroscedastic uncertainty estimation with probabilistic neural
    networks", ICLR 2022). The weight :math:`\sigma^{2\beta}` undoes that in part:
    :math:`\partial L_\beta/\partial\mu = -r\,\sigma^{2\beta-2}`, the MSE's gradient at
    :math:`\beta = 1`. The optimum is unchanged for any beta: at each x the weight is one
    positive factor, so :math:`\mathbb E[\partial L_\beta/\partial\sigma \mid x] = 0` still
    gives :math:`\sigma^2(x) = \mathbb E[r^2 \mid x]`, and the mean :math:`\mathbb E[y \mid x]`.
    Near the floor the weight also shrinks the NLL's :math:`r^2/\sigma^3` gradient by :math:`\sigma^{2\beta}`.

    Why beta-NLL rather than a warm-up with MSE before the NLL: a warm-up is a schedule
    (how many epochs) that interacts with early stopping and the best-epoch checkpoint (the
    validation loss changes meaning at the switch), and after the switch the NLL's
    inverse-variance weighting is back at full strength; beta-NLL is one loss from the first
    to the last step. :meth:`proper` gives the plain NLL, a proper scoring rule, which
    :func:`models.training.evaluate_loss` uses for validation, so the best epoch is the one
    with the best predictive density whatever beta trained it.
    """

    def __init__(self, beta: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"beta must be in [0, 1], got {beta}")
        self.beta = float(beta)

    def proper(self) -> GaussianNLLLoss:
        """The plain Gaussian NLL (beta = 0)."""
        return GaussianNLLLoss(0.0)

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if out.shape[-1:] != (2,) or out.shape[:-1] != target.shape:
            raise ConfigError(
                f"a Gaussian NLL needs outputs (..., 2) against targets (...): got {tuple(out.shape)} "
                f"against {tuple(target.shape)} (does the network have head='gaussian'?)"
            )
        mean, sigma = split_gaussian(out)
        target = target.to(mean.dtype)
        nll = torch.log(sigma) + 0.5 * ((target - mean) / sigma).square()
        if self.beta:
            nll = nll * sigma.detach().pow(2.0 * self.beta)
        return nll.mean()


class MultivariateGaussianHead(nn.Module):
    r"""``(..., n + n(n+1)/2)`` raw outputs -> ``(..., n, n + 1)``: a mean vector ``[..., 0]`` and the lower
    Cholesky factor L of the covariance ``[..., 1:]``, ``Sigma = L L^T``, times ``scale`` (e.g. ``N^{-1/2}``
    for a set of N events, so that the network's outputs need not follow the 1 / sqrt(N) of every width).

    L's diagonal is ``floor + softplus(b)`` (:class:`GaussianHead`'s reasons); below it, the raw values as they
    are. At initialisation (raw ~ 0) Sigma is ``ln(2)^2 scale^2`` times the identity.

    >>> out = MultivariateGaussianHead(2)(torch.zeros(1, 5))
    >>> out.shape, out[0, :, 0].tolist(), round(float(out[0, 0, 1]), 4), float(out[0, 0, 2])
    (torch.Size([1, 2, 3]), [0.0, 0.0], 0.6932, 0.0)
    """

    def __init__(self, n: int, floor: float = SIGMA_FLOOR) -> None:
        super().__init__()
        self.n = int(n)
        self.floor = float(floor)
        rows, cols = torch.tril_indices(self.n, self.n)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @staticmethod
    def units(n: int) -> int:
        return n + n * (n + 1) // 2

    def forward(self, raw: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        raw = raw.float()
        n = self.n
        if raw.shape[-1] != self.units(n):
            raise ConfigError(f"a {n}-dimensional Gaussian head needs {self.units(n)} raw outputs, got {raw.shape[-1]}")
        tri = raw[..., n:]
        diag = self.rows == self.cols
        tri = torch.where(diag, self.floor + nn.functional.softplus(tri), tri)
        L = raw.new_zeros(*raw.shape[:-1], n, n)
        L[..., self.rows, self.cols] = tri
        if scale is not None:
            L = L * scale.float().reshape(*scale.shape, *(1,) * (L.ndim - scale.ndim))
        return torch.cat([raw[..., :n, None], L], dim=-1)


def split_multivariate(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (..., n), L (..., n, n))`` of a :class:`MultivariateGaussianHead`'s output ``(..., n, n + 1)``."""
    if out.ndim < 2 or out.shape[-1] != out.shape[-2] + 1:
        raise ConfigError(f"a multivariate Gaussian output is (..., n, n + 1), got shape {tuple(out.shape)}")
    return out[..., 0], out[..., 1:]


@torch.no_grad()
def multivariate_estimates(net: nn.Module, arr, batch: int, progress=None, forward=None, **kwargs) -> tuple:
    """Estimates ``(M, n)`` and covariances ``(M, n, n)`` of ``net``'s multivariate Gaussian outputs on the inputs
    ``arr`` (numpy, first axis M), ``batch`` at a time, in eval mode (restored after; ``progress(k)`` per batch,
    ``kwargs`` to the forward). With ``forward(x) -> (output, extra tensor)`` in place of the net's own, the
    extras of every batch come third, float64 numpy."""
    import numpy as np

    was = net.training
    net.eval()
    dev = next(net.parameters()).device
    values, covs, extras = [], [], []
    try:
        for s in range(0, arr.shape[0], batch):
            x = torch.from_numpy(arr[s:s + batch]).to(dev)
            if forward is None:
                out = net(x, **kwargs)
            else:
                out, extra = forward(x, **kwargs)
                extras.append(extra.double().cpu().numpy())
            mean, L = split_multivariate(out)
            values.append(mean.double().cpu().numpy())
            covs.append((L @ L.transpose(-1, -2)).double().cpu().numpy())
            if progress is not None:
                progress(min(batch, arr.shape[0] - s))
    finally:
        net.train(was)
    if forward is None:
        return np.concatenate(values), np.concatenate(covs)
    return np.concatenate(values), np.concatenate(covs), np.concatenate(extras)


class MultivariateGaussianNLLLoss(nn.Module):
    r"""The Gaussian negative log-likelihood of ``(mean, L)`` outputs against target vectors, mean over the batch:
    :math:`\ell = \sum_i \ln L_{ii} + \tfrac12 \lVert L^{-1}(y - \mu) \rVert^2` (the constant left out),
    a proper scoring rule whose optimum is the conditional mean and covariance.

    >>> out = MultivariateGaussianHead(2)(torch.zeros(1, 5))
    >>> round(float(MultivariateGaussianNLLLoss()(out, torch.zeros(1, 2))), 4)   # 2 ln(SIGMA_FLOOR + ln 2)
    -0.7327
    """

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mean, L = split_multivariate(out)
        if target.shape != mean.shape:
            raise ConfigError(f"a multivariate Gaussian NLL needs targets {tuple(mean.shape)}, got {tuple(target.shape)}")
        r = (target.to(mean.dtype) - mean).unsqueeze(-1)
        z = torch.linalg.solve_triangular(L, r, upper=False).squeeze(-1)
        logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        return (logdet + 0.5 * z.square().sum(-1)).mean()
