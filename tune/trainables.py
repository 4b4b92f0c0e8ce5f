"""The Tune trainable: a plain function of a config dict that trains one network.

:func:`make_trainable` binds a :class:`DataSpec` (dataset paths and fixed
settings: never arrays) to :func:`train_trial`; Tune calls the result with the
trial's hyperparameters (see :mod:`tune.spaces`). Each trial

1. sets torch's threads to the CPUs Tune gave it;
2. reads its data from the event dataset (``wcscan generate``) and, for the
   ResNet, the image dataset (``wcscan images``) when one is given, else it
   voxelises events into images of the trial's ``bins``. With
   ``make_trainable(..., pools=...)`` the events come instead from Ray's object
   store: the driver reads the dataset once, ``tune.with_parameters`` puts the
   arrays there, and every trial on a node maps the same shared-memory copy
   (zero-copy numpy) instead of re-reading Parquet. Either way the trial's
   config holds only hyperparameters, never data;
3. builds the model, trains it with :func:`models.training.train`, and after
   every epoch calls ``tune.report({"val_loss", "train_loss", "lr", "epoch",
   "gpus" (assigned by Ray), "cuda" (1.0 when torch sees a device)},
   checkpoint=...)`` with the weights in ``model.pt``;
4. resumes from ``tune.get_checkpoint()`` when Tune restarts it (a retry after a
   failure, or ``Tuner.restore``): weights back, remaining epochs only.

Test hook: ``DataSpec.crash_once`` (set by :func:`tune.tuner.run_sweep` from
``$WCSCAN_TUNE_CRASH_ONCE``) names a marker file; the first trial to finish an
epoch while it is absent creates it and raises, so that retries can be tested.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kernels.errors import ConfigError
from kernels.event_store import read_pools

__all__ = ["DataSpec", "CHECKPOINT_FILE", "load_grid", "build_model", "train_config", "train_trial",
           "make_trainable", "load_checkpoint", "retrain"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.pt"


@dataclass(frozen=True)
class DataSpec:
    """What a trial trains on, and the settings every trial of a sweep shares."""

    model: str
    dataset: str
    images: str | None = None
    epochs: int = 10
    patience: int = 5
    seed: int = 0
    set_size: int = 2000
    sets_per_point: int = 150
    events_per_image: int = 2000
    images_per_point: int = 120
    device: str | None = None
    crash_once: str | None = None

    def __post_init__(self) -> None:
        if self.model not in ("resnet3d", "deepsets"):
            raise ConfigError(f"model must be resnet3d or deepsets, got {self.model!r}")
        if not (Path(self.dataset) / "manifest.json").is_file():
            raise ConfigError(f"{self.dataset}: not an event dataset (no manifest.json); make one with wcscan generate")
        if self.images is not None and not (Path(self.images) / "manifest.json").is_file():
            raise ConfigError(f"{self.images}: not an image dataset (no manifest.json); make one with wcscan images")
        for name in ("epochs", "set_size", "sets_per_point", "events_per_image", "images_per_point"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "crash_once"}


# --- data -------------------------------------------------------------------------


def load_grid(dataset: str | os.PathLike) -> tuple[dict, list[float]]:
    """The event dataset's manifest and its delta C9 per point (in index order)."""
    from kernels.event_store import read_event_manifest

    m = read_event_manifest(dataset)
    return m.raw, m.dc9


def _image_arrays(spec: DataSpec, config: dict, manifest: dict, grid: list[float], pools=None):
    """(train arrays, val arrays, bins): one array of images per point."""
    if spec.images is not None:
        from kernels.image_store import open_images, read_image_manifest

        im = read_image_manifest(spec.images)
        n = len(im["points"])
        if n != len(grid):
            raise ConfigError(f"{spec.images} has {n} points, the event dataset {len(grid)}")
        tr = [open_images(spec.images, "train", p, im) for p in range(n)]
        va = [open_images(spec.images, "val", p, im) for p in range(n)]
        return tr, va, int(im["bins"])
    from kernels.voxels import voxelize

    bins = int(config.get("bins", 16))
    tr, va = [], []
    for pool in pools if pools is not None else read_pools(spec.dataset, manifest):
        n_img = min(spec.images_per_point, len(pool) // spec.events_per_image)
        if n_img < 2:
            raise ConfigError(f"a point holds {len(pool)} events: too few for 2 images of {spec.events_per_image}")
        n_val = max(1, n_img // 5)
        ev = pool[: n_img * spec.events_per_image]
        imgs = voxelize(ev[:, 1], ev[:, 2], ev[:, 3], ev[:, 0], bins, n_images=n_img)
        tr.append(imgs[n_val:])
        va.append(imgs[:n_val])
    return tr, va, bins


def _datasets(spec: DataSpec, config: dict, pools=None):
    """(model, train dataset, val dataset, extra) for a trial; ``extra`` goes into the checkpoint.

    ``pools``: the dataset's events per point, when the driver shared them through the object store.
    """
    from models.training import seed_everything

    manifest, grid = load_grid(spec.dataset)
    seed_everything(spec.seed)  # the initial weights are part of the trial: a retried trial starts from the same ones
    if spec.model == "resnet3d":
        from models.data import image_dataset

        tr, va, bins = _image_arrays(spec, config, manifest, grid, pools)
        net = build_model("resnet3d", config).fit_preprocess(tr)
        events_per_image = spec.events_per_image
        if spec.images is not None:
            from kernels.image_store import read_image_manifest

            events_per_image = int(read_image_manifest(spec.images)["events_per_image"])
        extra = {"bins": bins, "events_per_image": events_per_image}
        return net, image_dataset(tr, grid), image_dataset(va, grid), extra

    from models.deepsets import DeepSets
    from models.splits import deepsets_data

    size = spec.set_size
    train_set, val_set, sample = deepsets_data(pools if pools is not None else read_pools(spec.dataset, manifest),
                                               grid, size, spec.sets_per_point, spec.seed)
    net = build_model("deepsets", config)
    net.fit_features(sample)
    assert isinstance(net, DeepSets)
    return net, train_set, val_set, {"set_size": size}


def build_model(model: str, config: dict):
    """The untrained network of a trial's config (preprocessing not yet fitted).

    ``config["head"]``: "point" (the default) or "gaussian" (a value and its width, :mod:`models.heads`).
    """
    head = config.get("head", "point")
    if model == "resnet3d":
        from models.resnet3d import ResNet3d

        return ResNet3d(depth=int(config.get("depth", 10)), width=int(config.get("width", 16)),
                        dropout=float(config.get("dropout", 0.5)), head=head)
    from models.deepsets import DeepSets

    hidden = int(config.get("hidden", 64))
    return DeepSets(hidden=hidden, phi_layers=int(config.get("phi_layers", 3)), latent=hidden,
                    rho_hidden=int(config.get("rho_hidden", hidden)), rho_layers=int(config.get("rho_layers", 2)),
                    pool=config.get("pool", "mean"), head=head)


def load_checkpoint(checkpoint) -> tuple:
    """``(network in eval mode, checkpoint dict)`` of a trial's ``tune.Checkpoint``.

    The dict holds ``model`` ("resnet3d" or "deepsets"), ``hparams``, ``epoch``,
    ``val_loss`` and what the estimator needs: ``bins`` and ``events_per_image``
    (ResNet) or ``set_size`` (Deep Sets).
    """
    import torch

    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / CHECKPOINT_FILE, weights_only=True)
    if state["model"] == "resnet3d":
        from models.resnet3d import ResNet3d

        net = ResNet3d(**state["hparams"])
    else:
        from models.deepsets import DeepSets

        net = DeepSets(**state["hparams"])
    net.load_state_dict(state["state_dict"])
    return net.eval(), state


def train_config(spec: DataSpec, config: dict, epochs: int | None = None):
    """The :class:`models.training.TrainConfig` of a trial (optimiser settings from its config).

    With ``head: gaussian`` the loss is an NLL (:func:`models.heads.loss_for_head`: the trial's
    ``loss`` if it is one, else ``beta_nll``), so a space may cross ``head`` with point losses.
    """
    from models.heads import loss_for_head
    from models.training import TrainConfig

    chosen = {k: config[k] for k in ("lr", "batch_size", "weight_decay", "optimizer", "loss") if k in config}
    head = config.get("head", "point")
    if head != "point" or "loss" in chosen:
        chosen["loss"] = loss_for_head(head, chosen.get("loss"))
    return TrainConfig(**chosen, epochs=epochs if epochs is not None else spec.epochs, patience=spec.patience,
                       seed=spec.seed, device=spec.device)


# --- the trainable ----------------------------------------------------------------


def _trial_resources() -> dict:
    """The resources Ray assigned to this trial (``{"CPU": 1.0, "GPU": 1.0}``); empty outside Ray."""
    try:
        import ray

        return dict(ray.get_runtime_context().get_assigned_resources())
    except Exception:  # outside Ray (a direct call in a test)
        return {}


def train_trial(config: dict, spec: DataSpec, pools=None) -> None:
    """Train one trial's network, reporting and checkpointing every epoch (see the module docstring)."""
    import torch
    from ray import tune

    from models.training import train

    assigned = _trial_resources()
    torch.set_num_threads(max(1, int(assigned.get("CPU", 1))))
    gpus = float(assigned.get("GPU", 0))
    net, train_set, val_set, extra = _datasets(spec, config, pools)
    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, weights_only=True)
        net.load_state_dict(state["state_dict"])
        start = int(state["epoch"]) + 1
        log.info("resuming from the checkpoint of epoch %d", state["epoch"])
    if start >= spec.epochs:
        return
    meta = {"model": spec.model, "hparams": net.hparams, **extra}

    def on_epoch(epoch, train_loss, val_loss, lr, *rest):
        epoch += start
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"state_dict": net.state_dict(), "epoch": epoch, "val_loss": val_loss, **meta},
                       Path(tmp) / CHECKPOINT_FILE)
            tune.report({"val_loss": val_loss, "train_loss": train_loss, "lr": lr, "epoch": epoch, "gpus": gpus,
                         "cuda": float(torch.cuda.is_available())},
                        checkpoint=tune.Checkpoint.from_directory(tmp))
        if spec.crash_once and not os.path.exists(spec.crash_once):
            Path(spec.crash_once).touch()
            raise RuntimeError(f"injected crash after epoch {epoch} ({spec.crash_once} did not exist)")

    train(net, train_set, val_set, train_config(spec, config, spec.epochs - start), on_epoch=on_epoch)


def retrain(config: dict, spec: DataSpec, pools=None) -> tuple:
    """Train a trial's config again, outside Tune; ``(network in eval mode, checkpoint dict)`` as
    :func:`load_checkpoint` returns them. For a best trial whose checkpoint is gone."""
    from models.training import train

    net, train_set, val_set, extra = _datasets(spec, config, pools)
    hist = train(net, train_set, val_set, train_config(spec, config))
    state = {"model": spec.model, "hparams": net.hparams, "epoch": hist["best_epoch"],
             "val_loss": hist["best_val_loss"], **extra}
    return net.eval(), state


def make_trainable(spec: DataSpec, cpus: float = 1, gpus: float = 0, pools: list[np.ndarray] | None = None):
    """``train_trial`` bound to ``spec``, with its resources declared (``tune.with_resources``).

    ``pools`` (:func:`kernels.event_store.read_pools`): events shared through Ray's object store
    (``tune.with_parameters`` stores them once; trials get references, not copies).
    """
    from ray import tune

    bound = tune.with_parameters(train_trial, spec=spec) if pools is None else \
        tune.with_parameters(train_trial, spec=spec, pools=pools)
    return tune.with_resources(bound, {"cpu": cpus, "gpu": gpus})
