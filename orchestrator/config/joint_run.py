"""The config of ``wcscan run`` over several Wilson coefficients (``theory.coefficients`` lists more than one).

A scan is a design over the coefficients (:mod:`kernels.design`): ``shifts`` gives each coefficient's values
(a grid's ``START:STOP:NUM`` or list; a space-filling design's ``LO:HI``) and ``design`` how they make points.
The evaluation has its own design and one or more set sizes (``events_per_set: [2000, 24000]``): one trained
estimator serves every N. ::

    name: gen24k-c9c10
    theory: {coefficients: [C9_bsmumu, C10_bsmumu]}
    scan: {shifts: {dc9: "-2:1:3", dc10: "-1:1:3"}, events_per_point: 250000}
    models: {ml_fit: {enabled: true}, event_ratio: {train_events: 2000000}}
    evaluation: {shifts: {dc9: "-2:1:3", dc10: "-1:1:3"}, sets: 100, events_per_set: [24000]}

Generator level only: the detector levels of the delta C9 study do not extend here yet, and are refused in
one line. ``nuisances: {form_factors: bsz}`` draws the test sets in worlds from flavio's form-factor prior and
adds the profiled joint fit and the efficient bounds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.config.checks import q2_windows

__all__ = ["JointRunConfig", "is_joint"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def is_joint(data) -> bool:
    """True when a config mapping scans several coefficients (``theory.coefficients`` has more than one)."""
    theory = data.get("theory") if isinstance(data, dict) else None
    coeffs = theory.get("coefficients") if isinstance(theory, dict) else None
    return isinstance(coeffs, list) and len(coeffs) > 1


class JointTheory(_Strict):
    coefficients: list[str]
    windows: list[tuple[float, float]] = [(1.1, 6.0)]

    _windows = field_validator("windows")(classmethod(lambda cls, v: q2_windows(v)))

    @field_validator("coefficients")
    @classmethod
    def _coefficients(cls, v):
        from kernels.design import shift_columns
        from kernels.theory import coefficient_for

        return [coefficient_for(c) for c in shift_columns(v)]


class _Design(_Strict):
    shifts: dict[str, str | list[float]]
    design: str = "grid"

    def build(self, seed: int, coefficients):
        """The :class:`kernels.design.Design`, its columns in the order of ``coefficients``."""
        from kernels.design import shift_column
        from kernels.errors import ConfigError
        from orchestrator.config.grammar import scan_design

        given = {shift_column(k): v for k, v in self.shifts.items()}
        want = [shift_column(c) for c in coefficients]
        if sorted(given) != sorted(want):
            raise ConfigError(f"shifts name {', '.join(sorted(given))}; theory.coefficients are {', '.join(want)}")
        pairs = [(c, given[c] if isinstance(given[c], str) else ",".join(repr(float(x)) for x in given[c]))
                 for c in want]
        return scan_design(pairs, self.design, seed)


class JointScan(_Design):
    events_per_point: int = Field(gt=0)
    level: Literal["gen"] = "gen"
    chunk_size: int = Field(1_000_000, gt=0)
    workers: int | None = Field(None, gt=0)


class JointTrain(_Strict):
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(4096, gt=0)
    epochs: int = Field(20, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class EventRatioConfig(_Strict):
    enabled: bool = True
    hidden: int = Field(128, gt=0)
    layers: int = Field(3, ge=1)
    train_events: int = Field(2_000_000, gt=0)   # from the scan's points, in equal parts
    reference_events: int = Field(2_000_000, ge=1000)  # fresh SM events that calibrate Z
    val_fraction: float = Field(0.1, gt=0, lt=1)
    # log: regress ln q at the scan's points (relative errors, what the likelihood feels; exact at gen level);
    # coefficients: q's coefficients themselves (the loss whose minimiser is exact at detector level too)
    loss: Literal["log", "coefficients"] = "log"
    train: JointTrain = JointTrain()


class JointDeepSetsConfig(_Strict):
    """Deep Sets with the multivariate Gaussian head (:mod:`orchestrator.jobs.joint_train`): phi on ``train_events``
    of the scan (their exact scores at the scan's points), rho on ``rho_sets`` synthetic sets (from the summary's
    moments over ``moment_events`` fresh events at the scan's points) validated on ``rho_val_sets`` simulated
    ones, at shifts over the scan's and evaluation's box widened by ``rho_margin``, sizes over the evaluation's
    range of N."""

    enabled: bool = True
    hidden: int = Field(128, gt=0)
    phi_layers: int = Field(3, ge=1)
    rho_hidden: int = Field(128, gt=0)
    rho_layers: int = Field(3, ge=1)
    train_events: int = Field(2_000_000, gt=0)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    phi_train: JointTrain = JointTrain()
    moment_events: int = Field(8_000_000, gt=0)  # fresh, at the scan's points: their MC error is a bias at large N
    rho_sets: int = Field(200_000, gt=0)
    rho_val_sets: int = Field(500, gt=0)
    rho_margin: float = Field(0.5, ge=0)
    rho_train: JointTrain = JointTrain(lr=1e-3, batch_size=512, epochs=30, weight_decay=0.0)
    refine: bool = True  # rho's estimate refined by the summary's own fit on the same moments


class JointResNetConfig(_Strict):
    """The 3D ResNet with the multivariate Gaussian head (:mod:`orchestrator.jobs.joint_resnet`): the trunk on
    ``score_images`` images of ``bins``^3 voxels (their exact voxel scores at the scan's points), rho on the
    summaries of ``rho_images`` more, both thinned from one pool of ``pool_events`` events (0: each image drawn
    afresh) and validated on fresh ones; shifts over the scan's and evaluation's box widened by ``rho_margin``,
    sizes over the evaluation's range of N."""

    enabled: bool = True
    bins: int = Field(16, ge=2, le=64)
    width: int = Field(16, gt=0)
    blocks: int = Field(2, ge=0)
    rho_hidden: int = Field(128, gt=0)
    rho_layers: int = Field(3, ge=1)
    score_images: int = Field(2000, gt=0)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    phi_train: JointTrain = JointTrain(lr=2e-3, batch_size=16, epochs=20, weight_decay=0.0)
    rho_images: int = Field(60_000, gt=0)
    pool_events: int = Field(4_000_000, ge=0)
    rho_val_images: int = Field(500, gt=0)
    rho_margin: float = Field(0.5, ge=0)
    rho_train: JointTrain = JointTrain(lr=1e-3, batch_size=256, epochs=60, weight_decay=0.0)
    refine: bool = True  # rho's estimate refined by the summary's own fit on its emulator (models.summary_fit)
    refine_min_events: int = Field(12_000, ge=1)  # from this N up: below, the emulator's fit was wider than rho's


class JointMLFit(_Strict):
    enabled: bool = True


class JointModels(_Strict):
    ml_fit: JointMLFit = JointMLFit()
    event_ratio: EventRatioConfig | None = EventRatioConfig()
    deepsets: JointDeepSetsConfig | None = None
    resnet3d: JointResNetConfig | None = None


class JointEvaluation(_Design):
    sets: int = Field(gt=0)
    events_per_set: list[int]

    @field_validator("events_per_set", mode="before")
    @classmethod
    def _counts(cls, v):
        from kernels.errors import ConfigError
        from orchestrator.config.grammar import parse_counts

        try:
            if isinstance(v, int) and not isinstance(v, bool):
                v = [v]
            if isinstance(v, str):
                return list(parse_counts(v))
            if isinstance(v, list):
                return list(parse_counts(",".join(str(x) for x in v)))
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return v


class JointNuisances(_Strict):
    """``form_factors: bsz``: every test set in its own world drawn from flavio's prior on the 19 BSZ form
    factors (widths times ``prior_scale``), the joint fit with them profiled (``ml_fit_profiled``), and each
    coefficient's efficient bound beside the fixed one; the other estimators stay trained at the central
    form factors (the naive ones, measured on the real world)."""

    form_factors: Literal["none", "bsz"] = "none"
    prior_scale: float = 1.0

    @field_validator("prior_scale")
    @classmethod
    def _scale(cls, v):
        from kernels.nuisances import check_prior_scale

        return check_prior_scale(v, "prior_scale")


class JointMLflow(_Strict):
    tracking_uri: str | None = None
    experiment: str = "wcscan"


class JointRunConfig(_Strict):
    name: str
    seed: int = Field(0, ge=0)
    theory: JointTheory
    scan: JointScan
    models: JointModels = JointModels()
    evaluation: JointEvaluation
    mlflow: JointMLflow = JointMLflow()
    nuisances: JointNuisances = JointNuisances()
    device: str | None = None

    @model_validator(mode="after")
    def _consistent(self):
        from kernels.errors import ConfigError

        try:
            scan = self.scan.build(self.seed, self.theory.coefficients)
            self.evaluation.build(self.seed, self.theory.coefficients)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        er = self.models.event_ratio
        if er is not None and er.enabled and er.train_events > scan.n_points * self.scan.events_per_point:
            raise ValueError(f"models.event_ratio.train_events ({er.train_events}) is more than the scan holds "
                             f"({scan.n_points} points x {self.scan.events_per_point} events)")
        ds = self.models.deepsets
        if ds is not None and ds.enabled and ds.train_events > scan.n_points * self.scan.events_per_point:
            raise ValueError(f"models.deepsets.train_events ({ds.train_events}) is more than the scan holds "
                             f"({scan.n_points} points x {self.scan.events_per_point} events)")
        rn = self.models.resnet3d
        if not self.models.ml_fit.enabled and not any(m is not None and m.enabled for m in (er, ds, rn)):
            raise ValueError("no estimator is enabled (models.ml_fit, models.event_ratio, models.deepsets, "
                             "models.resnet3d)")
        return self

    @property
    def shift_columns(self) -> tuple[str, ...]:
        from kernels.design import shift_column

        return tuple(shift_column(c) for c in self.theory.coefficients)

    def scan_design(self):
        return self.scan.build(self.seed, self.theory.coefficients)

    def evaluation_design(self):
        return self.evaluation.build(self.seed, self.theory.coefficients)
