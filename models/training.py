r"""One training loop for every network: optimiser, LR schedule, early stopping, best checkpoint.

:func:`train` fits a model on a torch ``Dataset`` whose items are
``(inputs..., target)`` (see :mod:`models.data`): each batch runs
``model(*inputs)`` and the configured loss against ``target``. The choices
live in :class:`TrainConfig`, a validated dataclass:

- optimiser: AdamW (default) or SGD with momentum (the seed study's);
- loss: MAE (L1, the seed's), MSE, cross-entropy (the event classifier), or,
  for a network with the Gaussian head (outputs ``(B, 2)``: mean and sigma,
  against targets ``(B,)``), the Gaussian NLL ``"gaussian_nll"`` or the
  beta-NLL ``"beta_nll"`` (beta = 0.5), see :class:`models.heads.GaussianNLLLoss`.
  The validation loss of both is the plain NLL (a proper scoring rule);
- LR schedule: cosine annealing or one-cycle, stepped per batch; "plateau"
  (lower the LR when the validation loss stalls, the seed's), stepped per epoch;
  or none;
- early stopping: stop after ``patience`` epochs without a validation loss
  lower than the best by more than ``min_delta``; the best epoch's weights are
  kept (a CPU copy of the ``state_dict``), loaded back into the model at the
  end, and written to ``checkpoint_path`` (atomically) whenever they improve;
- seeds: :func:`seed_everything` seeds Python, numpy and torch at the start,
  and the shuffling order comes from a ``torch.Generator`` seeded with
  ``seed``, so a run is reproducible on a given machine. Seed before building
  the model too, for reproducible initial weights;
- device: ``device=None`` picks CUDA when available, else the CPU. Mixed
  precision (``torch.autocast`` and, for float16, a ``GradScaler``) is used only
  on CUDA; on the CPU ``amp`` is ignored.

Training data drawn anew every epoch (streamed Monte Carlo) come as an *epoch
source* instead of a ``Dataset``: an object with ``epoch(e)``, an iterable of
ready batches ``(inputs..., target)`` for epoch ``e``, ``steps_per_epoch``
(batches per epoch, for the LR schedule) and ``len()`` (samples per epoch).
The source batches and shuffles itself; ``batch_size``, ``drop_last`` and
``num_workers`` are its own then (see ``orchestrator.build.stream``).

Progress: ``on_epoch(epoch, train_loss, val_loss, lr)`` after every epoch
(e.g. a Ray Tune report or a progress bar) and one ``logging`` INFO line.
``torch.set_num_threads`` is left to the caller.

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> x = torch.linspace(-1, 1, 64)[:, None]
>>> data = TensorDataset(x, 3 * x[:, 0])
>>> net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Flatten(0))
>>> hist = train(net, data, data, TrainConfig(lr=0.1, batch_size=16, epochs=30, loss="mse"))
>>> hist["val_loss"][hist["best_epoch"]] < 0.05 * hist["val_loss"][0]
True
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from kernels.errors import ConfigError, WcscanError
from kernels.files import atomic_path
from models.heads import DEFAULT_BETA, MVN_LOSS, NLL_LOSSES, GaussianNLLLoss, MultivariateGaussianNLLLoss, is_gaussian

__all__ = [
    "OPTIMIZERS",
    "LOSSES",
    "SCHEDULERS",
    "TrainConfig",
    "TrainingError",
    "resolve_device",
    "seed_everything",
    "make_loss",
    "evaluate_loss",
    "is_epoch_source",
    "train",
]

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd")
LOSSES = ("mae", "mse", "cross_entropy", *NLL_LOSSES, MVN_LOSS)
SCHEDULERS = ("cosine", "onecycle", "plateau", "none")
AMP_DTYPES = ("float16", "bfloat16")

EpochCallback = Callable[[int, float, float, float], object]


class TrainingError(WcscanError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


@dataclass
class TrainConfig:
    """Everything :func:`train` needs besides the model and the data. Validated on construction.

    ``patience=0`` disables early stopping. ``drop_last`` drops a last partial
    training batch (BatchNorm cannot train on a batch of one) unless the
    dataset is smaller than a batch. ``pct_start`` is the one-cycle warm-up
    fraction; ``plateau_factor`` / ``plateau_patience`` drive the "plateau"
    schedule; ``min_lr`` floors cosine and plateau. ``cudnn_benchmark`` lets
    cuDNN pick the fastest convolution kernels while training on CUDA (the
    global flag is restored afterwards).
    """

    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 20
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    momentum: float = 0.9
    nesterov: bool = False
    loss: str = "mae"
    scheduler: str = "cosine"
    pct_start: float = 0.3
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    min_lr: float = 0.0
    patience: int = 5
    min_delta: float = 0.0
    seed: int = 0
    device: str | None = None
    amp: bool = True
    amp_dtype: str = "float16"
    grad_clip: float | None = None
    num_workers: int = 0
    drop_last: bool = True
    eval_batch_size: int | None = None
    checkpoint_path: str | None = None
    cudnn_benchmark: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"TrainConfig: {what}")

        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        need(self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        need(self.scheduler in SCHEDULERS, f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        need(self.amp_dtype in AMP_DTYPES, f"amp_dtype must be one of {', '.join(AMP_DTYPES)}, got {self.amp_dtype!r}")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be positive, got {self.lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(0 < self.pct_start < 1, f"pct_start must be in (0, 1), got {self.pct_start}")
        need(0 < self.plateau_factor < 1, f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
        need(self.min_lr >= 0, f"min_lr must be >= 0, got {self.min_lr}")
        for name in ("batch_size", "epochs"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        for name in ("patience", "plateau_patience", "num_workers", "seed"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"{name} must be an integer >= 0, got {v!r}")
        need(self.min_delta >= 0, f"min_delta must be >= 0, got {self.min_delta}")
        need(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be positive or None, got {self.grad_clip}")
        need(
            self.eval_batch_size is None or self.eval_batch_size >= 1,
            f"eval_batch_size must be >= 1 or None, got {self.eval_batch_size}",
        )

    def to_dict(self) -> dict:
        """Plain values, e.g. for MLflow params."""
        return asdict(self)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or "auto": CUDA when available, else the CPU; otherwise ``torch.device(device)``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loss(name: str, validation: bool = False) -> nn.Module:
    """The loss module for ``name`` (one of :data:`LOSSES`), mean over the batch.

    ``validation=True``: the loss that :func:`evaluate_loss` reports, the same but for
    ``"beta_nll"``, whose validation loss is the plain Gaussian NLL (beta = 0).
    """
    if name in NLL_LOSSES:
        loss = GaussianNLLLoss(DEFAULT_BETA if name == "beta_nll" else 0.0)
        return loss.proper() if validation else loss
    if name == MVN_LOSS:
        return MultivariateGaussianNLLLoss()
    if name == "mae":
        return nn.L1Loss()
    if name == "mse":
        return nn.MSELoss()
    if name == "cross_entropy":
        return nn.CrossEntropyLoss()
    raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}")


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)


def _make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=cfg.min_lr)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.pct_start)
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr
        )
    return None


class _Batches:
    """Batches of a dataset in a seeded order: tensor slicing for an in-memory TensorDataset, else a DataLoader."""

    def __init__(self, data: Dataset, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                 drop_last: bool, num_workers: int, collate_fn, device: torch.device, persistent: bool = False) -> None:
        n = len(data)
        self.n = n
        self.drop_last = drop_last and n >= batch_size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.tensors = None
        self.loader = None
        if isinstance(data, TensorDataset):
            # In memory already: slice the tensors (on the GPU, once moved there) instead of collating items.
            self.tensors = tuple(t.to(device) for t in data.tensors) if device.type == "cuda" else data.tensors
        else:
            self.loader = DataLoader(
                data, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=self.drop_last,
                num_workers=num_workers, collate_fn=collate_fn, pin_memory=device.type == "cuda",
                persistent_workers=persistent and num_workers > 0,
            )

    def __len__(self) -> int:
        if self.loader is not None:
            return len(self.loader)
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator:
        if self.loader is not None:
            yield from self.loader
            return
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else None
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[sl].to(self.tensors[0].device) if order is not None else sl
            yield tuple(t[idx] for t in self.tensors)


def is_epoch_source(data) -> bool:
    """Whether ``data`` is an epoch source (new batches every epoch; see the module docstring), not a Dataset."""
    return callable(getattr(data, "epoch", None)) and hasattr(data, "steps_per_epoch")


def _to_device(batch, device: torch.device):
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ConfigError("dataset items must be (inputs..., target) tuples")
    nb = device.type == "cuda"
    return [b.to(device, non_blocking=nb) for b in batch]


def _autocast(device: torch.device, cfg: TrainConfig):
    enabled = cfg.amp and device.type == "cuda"
    dtype = torch.float16 if cfg.amp_dtype == "float16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def _collate_for(data: Dataset, collate_fn):
    if collate_fn is not None:
        return collate_fn
    return getattr(data, "collate_fn", None)


@torch.no_grad()
def evaluate_loss(model: nn.Module, data: Dataset, config: TrainConfig | None = None, collate_fn=None) -> float:
    """Mean loss of ``model`` (in eval mode) over ``data``, on the model's device (``make_loss(..., validation=True)``)."""
    cfg = config or TrainConfig()
    device = next(model.parameters()).device
    loss_fn = make_loss(cfg.loss, validation=True)
    batches = _Batches(data, cfg.eval_batch_size or 2 * cfg.batch_size, False, None, False, cfg.num_workers,
                       _collate_for(data, collate_fn), device)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for batch in batches:
            *inputs, target = _to_device(batch, device)
            with _autocast(device, cfg):
                out = model(*inputs)
            total += loss_fn(out.float(), target).double() * target.shape[0]
            count += target.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise ConfigError("cannot evaluate a loss on an empty dataset")
    return float(total) / count


def _save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _train_epoch(model, batches, opt, batch_sched, scaler, loss_fn, device: torch.device, cfg: TrainConfig) -> float:
    """One pass over the training batches; the mean training loss (over samples, in train mode)."""
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)  # accumulated on the device: no sync per step
    count = 0
    for batch in batches:
        *inputs, target = _to_device(batch, device)
        with _autocast(device, cfg):
            out = model(*inputs)
        loss = loss_fn(out.float(), target)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        if batch_sched is not None:
            batch_sched.step()
        total += loss.detach().double() * target.shape[0]
        count += target.shape[0]
    return float(total) / max(count, 1)


def train(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset | None = None,
    config: TrainConfig | None = None,
    on_epoch: EpochCallback | None = None,
    collate_fn=None,
) -> dict:
    """Train ``model`` in place; return the history.

    The model is moved to the configured device and, at the end, holds the
    weights of the best epoch (lowest validation loss; the training loss when
    ``val_data`` is None). ``collate_fn`` defaults to the dataset's
    ``collate_fn`` attribute, if any (:class:`models.data.SetDataset` has one).

    Returns a dict: ``train_loss``, ``val_loss``, ``lr`` (lists, one entry per
    epoch run; the LR at the end of the epoch), ``best_epoch`` (0-based index into
    those lists), ``best_val_loss``, ``epochs_run``, ``stopped_early``,
    ``device``, ``seconds``.

    The checkpoint at ``config.checkpoint_path`` is a ``torch.save`` dict:
    ``model`` (class name), ``state_dict``, ``epoch``, ``val_loss``, ``hparams``
    (the model's ``hparams``, which rebuild it: ``ResNet3d(**hparams)``) and
    ``config``; it loads with ``torch.load(path)`` (weights only).
    """
    cfg = config or TrainConfig()
    if len(train_data) == 0:
        raise ConfigError("the training dataset is empty")
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    if is_gaussian(model) and cfg.loss not in NLL_LOSSES:
        raise ConfigError(f"a network with the Gaussian head trains with {' or '.join(NLL_LOSSES)}, not {cfg.loss!r}")
    model.to(device)
    loss_fn = make_loss(cfg.loss)
    opt = _make_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    fresh = is_epoch_source(train_data)
    batches = None if fresh else _Batches(train_data, cfg.batch_size, True, generator, cfg.drop_last,
                                          cfg.num_workers, _collate_for(train_data, collate_fn), device, persistent=True)
    steps = int(train_data.steps_per_epoch) if fresh else len(batches)
    sched = _make_scheduler(opt, cfg, steps)
    per_batch = cfg.scheduler in ("cosine", "onecycle")
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and cfg.amp_dtype == "float16")

    hist: dict = {"train_loss": [], "val_loss": [], "lr": [], "best_epoch": -1, "best_val_loss": math.inf,
                  "epochs_run": 0, "stopped_early": False, "device": str(device)}
    best_state = None
    since_best = 0
    t0 = time.perf_counter()
    log.info("training %s on %s: %d samples, %d batches per epoch", type(model).__name__, device,
             len(train_data), steps)
    saved_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    try:
        for epoch in range(cfg.epochs):
            epoch_batches = train_data.epoch(epoch) if fresh else batches
            train_loss = _train_epoch(model, epoch_batches, opt, sched if per_batch else None, scaler, loss_fn, device, cfg)
            if not math.isfinite(train_loss):
                raise TrainingError(f"the training loss is {train_loss} at epoch {epoch}; lower lr or set grad_clip")
            val_loss = evaluate_loss(model, val_data, cfg, collate_fn) if val_data is not None else train_loss
            if not math.isfinite(val_loss):
                raise TrainingError(f"the validation loss is {val_loss} at epoch {epoch}")
            if cfg.scheduler == "plateau":
                sched.step(val_loss)
            lr = float(opt.param_groups[0]["lr"])
            hist["train_loss"].append(train_loss)
            hist["val_loss"].append(val_loss)
            hist["lr"].append(lr)
            hist["epochs_run"] = epoch + 1
            improved = val_loss < hist["best_val_loss"] - cfg.min_delta
            if improved:
                hist["best_val_loss"] = val_loss
                hist["best_epoch"] = epoch
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                since_best = 0
                if cfg.checkpoint_path:
                    _save_checkpoint(cfg.checkpoint_path, {
                        "model": type(model).__name__, "state_dict": best_state, "epoch": epoch, "val_loss": val_loss,
                        "hparams": copy.deepcopy(getattr(model, "hparams", None)), "config": cfg.to_dict(),
                    })
            else:
                since_best += 1
            log.info("epoch %d: train %.5g, val %.5g, lr %.3g%s", epoch, train_loss, val_loss, lr,
                     " (best)" if improved else "")
            if on_epoch is not None:
                on_epoch(epoch, train_loss, val_loss, lr)
            if cfg.patience and since_best >= cfg.patience:
                hist["stopped_early"] = True
                log.info("early stop after epoch %d: no improvement for %d epochs (best epoch %d)",
                         epoch, since_best, hist["best_epoch"])
                break
    finally:
        torch.backends.cudnn.benchmark = saved_benchmark
    if best_state is not None:
        model.load_state_dict(best_state)
    hist["seconds"] = time.perf_counter() - t0
    return hist
