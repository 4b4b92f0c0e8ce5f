"""The job configuration of ``wcscan globalfit``: a validated pydantic model loaded from YAML.

Configs ship as package data (``orchestrator/config/presets/globalfit/<name>.yaml``:
``lhcb-seed``, the seed study's 37 observables on its 50 x 50 grid, and
``demo``, 6 observables on a small grid); ``--config FILE.yaml`` loads a user's
own. A config names its observable set (``observables``), a file of
:func:`kernels.observables.load_observable_set`: a path, absolute or relative
to the config file, or a shipped set (``observables-lhcb-seed``,
``observables-demo``). The ``nn`` and ``cgan`` sections take the fields of
:class:`models.inverse_map.InverseMapConfig` and :class:`models.cgan.CGANConfig`
(their defaults where left out). Unknown keys are refused; a config that does
not validate gets one line naming the field::

    wcscan: error: config demo.yaml: theory_covariance.draws: Input should be greater than or equal to 4
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from kernels.errors import ConfigError
from orchestrator.config.loading import GLOBALFIT_PRESETS, config_file, shipped, validation_message
from orchestrator.config.run import MLflowConfig, _grid, _Strict

__all__ = ["GlobalFitConfig", "load_globalfit_config", "available_globalfit", "PRESETS"]

#: Where the shipped job configs and observable sets live, inside ``orchestrator.config``.
PRESETS = ("presets", "globalfit")


def _presets() -> Path:
    return Path(str(resources.files("orchestrator.config").joinpath(*PRESETS)))


class GridConfig(_Strict):
    """The (C9, C10) grid: each axis a list or ``"START:STOP:NUM"`` (inclusive); ``chunk`` points per Ray item."""

    c9: list[float] = Field(default_factory=lambda: _grid("-2:0:50"))
    c10: list[float] = Field(default_factory=lambda: _grid("-1:1:50"))
    chunk: int = Field(50, gt=0)

    _split = field_validator("c9", "c10", mode="before")(classmethod(lambda cls, v: _grid(v)))

    @field_validator("c9", "c10")
    @classmethod
    def _increasing(cls, v):
        if len(v) < 3 or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"needs at least 3 strictly increasing values, got {v[:5]}{'...' if len(v) > 5 else ''}")
        return v

    @property
    def box(self) -> tuple[tuple[float, float], tuple[float, float]]:
        return (self.c9[0], self.c9[-1]), (self.c10[0], self.c10[-1])


class TheoryCovarianceConfig(_Strict):
    """flavio's SM covariance from ``draws`` draws in ``chunks`` Ray items (seeds derived from ``seed``)."""

    draws: int = Field(200, ge=4)
    seed: int = Field(0, ge=0)
    chunks: int = Field(8, ge=2)

    @model_validator(mode="after")
    def _per_chunk(self):
        if self.draws < 2 * self.chunks or self.chunks % 2:
            raise ValueError(f"chunks must be even (two halves for the seed spread) with >= 2 draws each; "
                             f"got {self.draws} draws in {self.chunks} chunks")
        return self


class SurrogateConfig(_Strict):
    """:func:`kernels.observables.fit_surrogate`'s settings; ``enabled: false`` predicts every point directly."""

    enabled: bool = True
    n_design: int = Field(40, ge=8)
    n_check: int = Field(8, ge=1)
    tol: float = Field(1e-6, gt=0)
    seed: int = Field(0, ge=0)


class FlavioCheckConfig(_Strict):
    """The cross-check with flavio's ``FastLikelihood``: a 3 x 3 stencil of half-width ``stencil`` HESSE errors."""

    enabled: bool = True
    n_exp: int = Field(50000, gt=1)
    stencil: float = Field(1.0, gt=0)


class CoverageConfig(_Strict):
    """The cGAN's calibration: ``pseudo_experiments`` drawn around the best fit, ``samples`` each, at ``level``."""

    pseudo_experiments: int = Field(200, gt=1)
    samples: int = Field(1000, gt=10)
    level: float = Field(0.68, gt=0, lt=1)


def _model_config(kind: str, values: dict):
    from models.cgan import CGANConfig
    from models.inverse_map import InverseMapConfig

    cls = {"nn": InverseMapConfig, "cgan": CGANConfig}[kind]
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except TypeError as err:  # an unknown field
        raise ValueError(str(err).split("__init__() ")[-1]) from None
    except ConfigError as err:
        raise ValueError(str(err)) from None


class GlobalFitConfig(_Strict):
    name: str
    seed: int = Field(0, ge=0)
    observables: str
    grid: GridConfig = GridConfig()
    theory_covariance: TheoryCovarianceConfig = TheoryCovarianceConfig()
    surrogate: SurrogateConfig = SurrogateConfig()
    nuisances: bool = False
    flavio_check: FlavioCheckConfig = FlavioCheckConfig()
    nn: dict = {}
    cgan: dict = {}
    cgan_samples: int = Field(5000, gt=10)
    coverage: CoverageConfig = CoverageConfig()
    asimov: list[tuple[float, float]] = [(-1.5, -0.5), (-1.5, 0.5), (-1.0, 0.0), (-0.5, -0.5), (-0.5, 0.5)]
    workers: int | None = Field(None, gt=0)
    device: str = "cpu"
    mlflow: MLflowConfig = MLflowConfig()

    @field_validator("nn", "cgan")
    @classmethod
    def _models(cls, v, info):
        _model_config(info.field_name, v)
        return v

    @model_validator(mode="after")
    def _asimov_inside(self):
        (a, b), (c, d) = self.grid.box
        for t in self.asimov:
            if not (a < t[0] < b and c < t[1] < d):
                raise ValueError(f"asimov truth {tuple(t)} is not inside the grid [{a:g}, {b:g}] x [{c:g}, {d:g}]")
        return self

    def inverse_map_config(self):
        """The :class:`~models.inverse_map.InverseMapConfig` of the ``nn`` section (on ``device``)."""
        return _model_config("nn", {"device": self.device, **self.nn})

    def cgan_config(self):
        """The :class:`~models.cgan.CGANConfig` of the ``cgan`` section (on ``device``)."""
        return _model_config("cgan", {"device": self.device, **self.cgan})


def available_globalfit() -> list[str]:
    """The shipped job configs (the observable sets beside them are not jobs)."""
    return shipped(GLOBALFIT_PRESETS)


def _observables_path(value: str, base: Path | None) -> Path:
    """The observable-set file named by ``value``: a path (relative to ``base``, the config's folder) or a shipped set."""
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [*([base / path] if base else []), path]
    shipped = _presets() / (value if value.endswith((".yaml", ".yml")) else f"{value}.yaml")
    for p in [*candidates, shipped]:
        if p.is_file():
            return p.resolve()
    sets = sorted(p.stem for p in _presets().glob("observables-*.yaml"))
    raise ConfigError(f"observables: no file {value!r}; shipped sets: {', '.join(sets)} (or give a path)")


def load_globalfit_config(name_or_path: str | Path) -> GlobalFitConfig:
    """A shipped config by name (``lhcb-seed``) or a YAML file, with ``observables`` resolved to an absolute path."""
    path = config_file(name_or_path, GLOBALFIT_PRESETS, "globalfit config")
    base = None if path.parent == _presets() else path.resolve().parent
    try:
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ConfigError(f"config {path.name}: expected a mapping at the top level")
        cfg = GlobalFitConfig.model_validate(data)
    except yaml.YAMLError:
        raise ConfigError(f"config {path.name}: not valid YAML") from None
    except ValidationError as err:
        raise ConfigError(f"config {path.name}: {validation_message(err, GlobalFitConfig)}") from None
    try:
        return cfg.model_copy(update={"observables": str(_observables_path(cfg.observables, base))})
    except ConfigError as err:
        raise ConfigError(f"config {path.name}: {err}") from None
