"""Search spaces of the Tune sweeps, as plain dicts of Ray Tune samplers.

Each function returns a fresh ``param_space`` for :class:`ray.tune.Tuner`:
hyperparameters only. Data (dataset paths, set sizes, epochs) reach the
trainable through :func:`tune.trainables.make_trainable`, never through the
config. ``tiny=True`` gives a space of tiny networks for tests and smoke runs.

Every sampler here (``choice``, ``loguniform``, ``uniform``) is understood by
both the random search and the Optuna searcher.

``space_for(model, head="gaussian")``: every trial gets the Gaussian head (a value and its
width, :mod:`models.heads`) and the beta-NLL loss. The head is fixed per sweep, never
sampled: the sweep ranks trials by ``val_loss``, and an NLL cannot be ranked against an MAE.

>>> sorted(deepsets_space(tiny=True))
['batch_size', 'hidden', 'lr', 'phi_layers', 'pool', 'rho_hidden', 'rho_layers']
>>> resnet_space()["depth"].categories
[10, 18, 34]
"""

from __future__ import annotations

from ray import tune

__all__ = ["MODELS", "JOINT_MODELS", "resnet_space", "deepsets_space", "space_for", "joint_space"]

MODELS = ("resnet3d", "deepsets")
#: The joint job's learned estimators (several coefficients, any N), swept by ``wcscan tune --config``.
JOINT_MODELS = ("event_ratio", "deepsets", "resnet3d")


def resnet_space(tiny: bool = False) -> dict:
    """The 3D ResNet: architecture (depth, width, dropout), voxel bins, and the optimiser."""
    if tiny:
        return {
            "depth": 10,
            "width": tune.choice([2, 4]),
            "bins": tune.choice([4, 8]),
            "dropout": tune.uniform(0.0, 0.5),
            "lr": tune.loguniform(1e-3, 1e-2),
            "batch_size": tune.choice([4, 8]),
            "weight_decay": tune.loguniform(1e-5, 1e-2),
            "optimizer": "adamw",
            "loss": "mae",
        }
    return {
        "depth": tune.choice([10, 18, 34]),
        "width": tune.choice([16, 32, 64]),
        "bins": tune.choice([16, 24, 32, 50]),
        "dropout": tune.uniform(0.0, 0.6),
        "lr": tune.loguniform(1e-4, 1e-2),
        "batch_size": tune.choice([16, 32, 64]),
        "weight_decay": tune.loguniform(1e-6, 1e-2),
        "optimizer": tune.choice(["adamw", "sgd"]),
        "loss": tune.choice(["mae", "mse"]),
    }


def deepsets_space(tiny: bool = False) -> dict:
    """Deep Sets: widths and depths of phi and rho, the pooling, and the optimiser."""
    if tiny:
        return {
            "hidden": tune.choice([4, 8]),
            "phi_layers": 1,
            "rho_hidden": tune.choice([4, 8]),
            "rho_layers": 1,
            "pool": tune.choice(["mean", "sum"]),
            "lr": tune.loguniform(1e-3, 1e-2),
            "batch_size": tune.choice([4, 8]),
        }
    return {
        "hidden": tune.choice([32, 64, 128, 256]),
        "phi_layers": tune.choice([2, 3, 4]),
        "rho_hidden": tune.choice([32, 64, 128]),
        "rho_layers": tune.choice([1, 2, 3]),
        "pool": tune.choice(["mean", "sum"]),
        "lr": tune.loguniform(1e-4, 1e-2),
        "batch_size": tune.choice([16, 32, 64]),
    }


def space_for(model: str, tiny: bool = False, head: str = "point") -> dict:
    """The space of ``model`` ("resnet3d" or "deepsets"), for networks with ``head`` ("point" or "gaussian")."""
    from kernels.errors import ConfigError

    if head not in ("point", "gaussian"):
        raise ConfigError(f"head must be point or gaussian, got {head!r}")
    if model == "resnet3d":
        space = resnet_space(tiny)
    elif model == "deepsets":
        space = deepsets_space(tiny)
    else:
        raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    if head == "gaussian":
        space.update(head="gaussian", loss="beta_nll")
    return space


def joint_space(model: str, tiny: bool = False) -> dict:
    """The space of a joint model (:data:`JOINT_MODELS`): keys are the field paths of its section of a joint
    run config (``models.<model>``: ``hidden``, ``rho_train.lr``, ...), the values what a trial sets there.

    >>> sorted(joint_space("deepsets"))
    ['hidden', 'phi_layers', 'phi_train.lr', 'rho_hidden', 'rho_layers', 'rho_train.batch_size', 'rho_train.lr']
    >>> joint_space("event_ratio", tiny=True)["hidden"].categories
    [8, 16]
    """
    from kernels.errors import ConfigError

    small = (lambda *v: tune.choice(list(v[:2]))) if tiny else (lambda *v: tune.choice(list(v)))
    if model == "event_ratio":
        return {"hidden": small(8, 16) if tiny else tune.choice([64, 128, 256]), "layers": small(2, 3, 4),
                "train.lr": tune.loguniform(1e-3, 1e-2), "train.batch_size": small(1024, 2048, 4096)}
    if model == "deepsets":
        return {"hidden": small(8, 16) if tiny else tune.choice([32, 64, 128]), "phi_layers": small(2, 3),
                "rho_hidden": small(8, 16) if tiny else tune.choice([32, 64, 128]), "rho_layers": small(2, 3),
                "phi_train.lr": tune.loguniform(1e-3, 1e-2), "rho_train.lr": tune.loguniform(3e-4, 3e-3),
                "rho_train.batch_size": small(16, 32) if tiny else tune.choice([256, 512, 1024])}
    if model == "resnet3d":
        return {"width": small(4, 8) if tiny else tune.choice([8, 16, 32]), "blocks": small(1, 2),
                "rho_hidden": small(8, 16) if tiny else tune.choice([64, 128]), "rho_layers": small(2, 3),
                "phi_train.lr": tune.loguniform(5e-4, 5e-3), "rho_train.lr": tune.loguniform(3e-4, 3e-3)}
    raise ConfigError(f"a joint sweep's model must be one of {', '.join(JOINT_MODELS)}, got {model!r}")
