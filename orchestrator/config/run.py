"""The job configuration of ``wcscan run``: validated pydantic models loaded from YAML.

Configs ship as package data (``orchestrator/config/presets/<name>.yaml``: ``demo``,
``gen24k``, ``det_bkg24k``, ``seed-resnet34``); ``--config FILE.yaml`` loads a
user's own. Unknown keys are refused, and a config that does not validate gets
one line naming the field::

    wcscan: error: config demo.yaml: scan.events_per_point: Input should be greater than 0
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kernels.errors import ConfigError
from orchestrator.config.checks import q2_windows
from orchestrator.config.grammar import distinct, parse_dc9
from orchestrator.config.loading import RUN_PRESETS, config_file, shipped, validation_message

PositiveInt = Field(gt=0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _grid(value):
    """A list of distinct numbers, or ``"START:STOP:NUM"`` / ``"a,b,c"`` as on the command line."""
    try:
        if isinstance(value, str):
            return parse_dc9(value)
        if isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return distinct(value, "points")
    except ConfigError as err:  # the grammar's own one-line message
        raise ValueError(str(err)) from None
    return value


class TheoryConfig(_Strict):
    coefficients: list[str] = ["C9_bsmumu"]
    windows: list[tuple[float, float]] = [(1.1, 6.0)]

    _windows = field_validator("windows")(classmethod(lambda cls, v: q2_windows(v)))

    @field_validator("coefficients")
    @classmethod
    def _coefficients(cls, v):
        from kernels.theory import coefficient_for

        if v != ["C9_bsmumu"] and [coefficient_for(c) for c in v] != ["C9_bsmumu"]:
            raise ValueError("wcscan run scans delta C9 alone for now (joint fits: kernels.likelihood)")
        return ["C9_bsmumu"]


class ScanConfig(_Strict):
    dc9: list[float]
    events_per_point: int = Field(gt=0)
    level: Literal["gen", "det", "det_bkg"] = "gen"
    detector: dict[str, float] = {}
    chunk_size: int = Field(1_000_000, gt=0)
    workers: int | None = Field(None, gt=0)

    _split = field_validator("dc9", mode="before")(classmethod(lambda cls, v: _grid(v)))

    @field_validator("detector")
    @classmethod
    def _detector(cls, v):
        from kernels.detector import DetectorConfig

        DetectorConfig.from_dict(v)
        return v


def _train_default(name: str):
    """The default of a training setting: :class:`models.training.TrainConfig`'s, the one source."""
    from models.training import TrainConfig as Defaults

    return Defaults.__dataclass_fields__[name].default


class TrainConfig(_Strict):
    lr: float = Field(default_factory=lambda: _train_default("lr"), gt=0)
    batch_size: int = Field(default_factory=lambda: _train_default("batch_size"), gt=0)
    epochs: int = Field(default_factory=lambda: _train_default("epochs"), gt=0)
    weight_decay: float = Field(default_factory=lambda: _train_default("weight_decay"), ge=0)
    optimizer: Literal["adamw", "sgd"] = Field(default_factory=lambda: _train_default("optimizer"))
    loss: Literal["mae", "mse"] = Field(default_factory=lambda: _train_default("loss"))
    scheduler: Literal["cosine", "onecycle", "none"] = Field(default_factory=lambda: _train_default("scheduler"))
    patience: int = Field(default_factory=lambda: _train_default("patience"), gt=0)
    num_workers: int = Field(default_factory=lambda: _train_default("num_workers"), ge=0)  # DataLoader processes


class ImagesConfig(_Strict):
    bins: int = 16  # the one rule: kernels.voxels.check_bins
    events_per_image: int = Field(gt=0)
    images_per_point: int = Field(gt=0)
    val_fraction: float = Field(0.2, gt=0, lt=1)

    @field_validator("bins")
    @classmethod
    def _bins(cls, v):
        from kernels.voxels import check_bins

        return check_bins(v, "bins")


class _DataSource(_Strict):
    """Where a network's training data come from: ``pool`` (stored events and images, the default) or
    ``stream`` (fresh Monte Carlo every epoch from Ray workers, :mod:`orchestrator.build.stream`).

    ``stream_workers``: Ray actors that draw it (default: the Ray cluster's CPUs less one, at least 1;
    0 draws in the trainer's process); ``stream_in_flight``: the bound of the queue, object refs in
    flight (default the scan points plus the workers). The ``stream_*`` settings need ``data: stream``.
    """

    data: Literal["pool", "stream"] = "pool"
    stream_workers: int | None = Field(None, ge=0)
    stream_in_flight: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _stream_settings(self):
        if self.data == "pool":
            given = [k for k, v in self if k.startswith("stream_") and v is not None]
            if given:
                raise ValueError(f"{given[0]} needs data: stream")
        return self


class _Head(_Strict):
    """A network's output (:mod:`models.heads`): ``head: point``, a value trained with ``train.loss``, or
    ``gaussian``, a value and its width trained with ``head_loss`` (``beta_nll``, the default, or
    ``gaussian_nll``; ``train.loss`` is then unused). ``head_loss`` needs ``head: gaussian``."""

    head: Literal["point", "gaussian"] = "point"
    head_loss: Literal["beta_nll", "gaussian_nll"] | None = None

    @model_validator(mode="after")
    def _head_loss(self):
        if self.head_loss is not None and self.head != "gaussian":
            raise ValueError("head_loss needs head: gaussian")
        return self

    @property
    def training_loss(self) -> str:
        """The loss the network trains with."""
        return self.train.loss if self.head == "point" else self.head_loss or "beta_nll"


class _ScoreSummary(_Strict):
    """The settings a score summary shares (``summary: score``): ``score_points`` reference shifts over
    ``train_range`` for stage 1, and stage 2's sets or images over ``rho_range`` (defaults: the scan and
    evaluation range widened by 1 and by 0.5), stage 1 trained with ``phi_train``."""

    summary: Literal["learned", "score"] = "learned"
    score_points: int = Field(16, gt=1)
    train_range: tuple[float, float] | None = None
    rho_range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _ranges(self):
        for name in ("train_range", "rho_range"):
            r = getattr(self, name)
            if r is not None and not r[0] < r[1]:
                raise ValueError(f"{name} must be [LO, HI] with LO < HI, got {list(r)}")
        return self


class ResNetConfig(_DataSource, _Head, _ScoreSummary):
    enabled: bool = True
    depth: Literal[10, 18, 34] = 10
    width: int = Field(16, gt=0)
    dropout: float = Field(0.5, ge=0, lt=1)
    stream_images_per_point: int | None = Field(None, gt=0)  # per epoch; default: the images' train count
    train: TrainConfig = TrainConfig()
    # summary "score" (orchestrator.jobs.resnet_score; needs data: stream): a fully convolutional ResNet of
    # `blocks` residual blocks regresses per-voxel joint-score sums at score_points shifts over train_range on
    # score_images fresh images (trained with phi_train); rho (trained with train) on rho_images_per_point fresh
    # images at each of rho_points shifts over rho_range. depth and dropout are the learned summary's.
    score_images: int = Field(2000, gt=0)
    blocks: int = Field(2, ge=0)
    rho_points: int = Field(42, gt=1)
    rho_images_per_point: int = Field(80, gt=0)
    phi_train: TrainConfig = TrainConfig(epochs=12, batch_size=16, lr=0.002, weight_decay=0.0, loss="mse")

    @model_validator(mode="after")
    def _summary_settings(self):
        if self.summary == "score" and self.data != "stream":
            raise ValueError("summary: score draws its own fresh images: it needs data: stream")
        if self.summary == "score" and self.stream_images_per_point is not None:
            raise ValueError("stream_images_per_point is for summary: learned; the score summary draws "
                             "score_images and rho_images_per_point images once")
        return self


class DeepSetsConfig(_DataSource, _Head, _ScoreSummary):
    enabled: bool = True
    hidden: int = Field(64, gt=0)
    phi_layers: int = Field(3, gt=0)
    rho_layers: int = Field(2, gt=0)
    pooling: Literal["mean", "sum"] = "mean"
    set_size: int = Field(gt=0)
    sets_per_point: int = Field(gt=0)
    stream_sets_per_point: int | None = Field(None, gt=0)  # per epoch; default: sets_per_point
    train: TrainConfig = TrainConfig()
    # summary "score" (orchestrator.jobs.deepsets_score): phi regressed on the joint scores at
    # score_points shifts over train_range, on score_events fresh joint draws (trained with phi_train);
    # rho (trained with train) on sets_per_point sets at each of rho_points shifts over rho_range
    score_events: int = Field(500_000, gt=0)
    rho_points: int = Field(44, gt=1)
    phi_train: TrainConfig = TrainConfig(epochs=6, batch_size=1024, lr=0.003, weight_decay=0.0, loss="mse")
    # with nuisances: phi's moments over profile_events fresh events, reweighted to any (delta C9, u), for the
    # summary's own fit in (delta C9, u) under the prior, started from rho's estimate; 0: rho's estimate alone
    profile_events: int = Field(4_000_000, ge=0)

    @model_validator(mode="after")
    def _summary_settings(self):
        if self.summary == "score" and self.stream_sets_per_point is not None:
            raise ValueError("stream_sets_per_point is for summary: learned; the score summary draws "
                             "sets_per_point sets at each of rho_points shifts once")
        return self


class ClassifierConfig(_DataSource):
    enabled: bool = True
    hidden: int = Field(128, gt=0)
    layers: int = Field(3, gt=0)
    head: Literal["quadratic", "grid", "score"] = "quadratic"
    events_per_point: int = Field(gt=0)
    # head "score": the joint-score regression network, trained on fresh MC (not the stored pools)
    train_events: int = Field(1_000_000, gt=0)
    reference_events: int = Field(1_000_000, gt=0)
    train_range: tuple[float, float] | None = None
    stream_events_per_point: int | None = Field(None, gt=0)  # per epoch; default: the pool's training part
    train: TrainConfig = TrainConfig()


class MLFitConfig(_Strict):
    enabled: bool = True


class ModelsConfig(_Strict):
    resnet3d: ResNetConfig | None = None
    deepsets: DeepSetsConfig | None = None
    event_classifier: ClassifierConfig | None = None
    ml_fit: MLFitConfig = MLFitConfig()


class EvaluationConfig(_Strict):
    dc9: list[float]
    sets: int = Field(gt=1)
    events_per_set: int = Field(gt=0)

    _split = field_validator("dc9", mode="before")(classmethod(lambda cls, v: _grid(v)))


class NuisancesConfig(_Strict):
    """Hadronic nuisances (:mod:`kernels.nuisances`): ``form_factors: bsz`` draws every test set's world from
    flavio's prior on the 19 BSZ form factors (``worlds: per_set``, or one world per point: ``per_point``),
    widened by ``prior_scale``, and adds the profiled fit and sigma_CRB,eff. ``none`` (the default) is the
    idealised study with the form factors fixed. ``power_corrections: true`` adds flavio's power corrections
    to the worlds, the bound, the profiled fit and the profiled event posterior (:mod:`kernels.amplitudes`);
    Deep Sets and the ResNet then marginalise the form factors alone, and ``ml_fit_profiled_ff`` is the fit
    that profiles the form factors only."""

    form_factors: Literal["none", "bsz"] = "none"
    power_corrections: bool = False
    prior_scale: float = 1.0
    worlds: Literal["per_set", "per_point"] = "per_set"

    @field_validator("prior_scale")
    @classmethod
    def _scale(cls, v):
        from kernels.nuisances import check_prior_scale

        return check_prior_scale(v, "prior_scale")

    @model_validator(mode="after")
    def _power(self):
        if self.power_corrections and self.form_factors == "none":
            raise ValueError("power_corrections: true needs form_factors: bsz (the corrections multiply the "
                             "form factors)")
        return self


class MLflowConfig(_Strict):
    experiment: str = "wcscan"
    tracking_uri: str | None = None


class RunConfig(_Strict):
    name: str
    seed: int = Field(0, ge=0)
    theory: TheoryConfig = TheoryConfig()
    scan: ScanConfig
    images: ImagesConfig | None = None
    models: ModelsConfig = ModelsConfig()
    evaluation: EvaluationConfig
    mlflow: MLflowConfig = MLflowConfig()
    nuisances: NuisancesConfig = NuisancesConfig()
    device: str | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if self.models.resnet3d is not None and self.models.resnet3d.enabled and self.images is None:
            raise ValueError("models.resnet3d needs an images section")
        if self.images is not None:
            need = self.images.events_per_image * self.images.images_per_point
            if need > self.scan.events_per_point:
                raise ValueError(
                    f"images need {need} events per point (events_per_image x images_per_point) "
                    f"but scan.events_per_point is {self.scan.events_per_point}"
                )
        ds = self.models.deepsets
        if self.nuisances.form_factors != "none" and ds is not None and ds.enabled and not (
                ds.summary == "score" and ds.data == "stream"):
            raise ValueError("models.deepsets with nuisances marginalises them on sets drawn each in its own world: "
                             "it needs summary: score and data: stream")
        rn = self.models.resnet3d
        if self.nuisances.form_factors != "none" and rn is not None and rn.enabled and rn.summary != "score":
            raise ValueError("models.resnet3d with nuisances marginalises them on images drawn each in its own "
                             "world: it needs summary: score")
        for name, m in (("deepsets", self.models.deepsets), ("event_classifier", self.models.event_classifier)):
            if m is None or not m.enabled:
                continue
            pool = m.events_per_point if name == "event_classifier" else m.set_size
            if pool > self.scan.events_per_point:
                raise ValueError(f"models.{name} needs {pool} events per point, more than scan.events_per_point")
        return self


def available() -> list[str]:
    return shipped(RUN_PRESETS)


def load_config(name_or_path: str | Path):
    """A shipped config by name (``demo``) or a YAML file; one-line ConfigError if it does not validate.

    A :class:`RunConfig`, or a :class:`~orchestrator.config.joint_run.JointRunConfig` when
    ``theory.coefficients`` lists several."""
    path = config_file(name_or_path, RUN_PRESETS)
    source, text = path.name, path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config {source}{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {source}: expected a mapping at the top level")
    from orchestrator.config.joint_run import JointRunConfig, is_joint

    kind = JointRunConfig if is_joint(data) else RunConfig  # several coefficients: the joint job's config
    try:
        return kind.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"config {source}: {validation_message(err, kind)}") from None
    except ConfigError as err:
        raise ConfigError(f"config {source}: {err}") from None
