"""The joint job's evaluation: every estimator on the same independent test sets at every point and set size.

:func:`estimators` turns the fits and the trained networks into the fitters the evaluation calls (each maps
sets ``(M, N, 4)`` to estimates and per-set covariances); :func:`evaluate_joint` draws the evaluation design's
test sets (seed streams ``(seed, 20000 + point, N index)``), fits each with every fitter and summarises one row
per (point, N) beside the bound (:func:`kernels.metrics.joint_point_metrics`); :func:`joint_figures` draws them.
``wcscan run`` (:mod:`orchestrator.jobs.joint_run`) and ``wcscan tune --config``
(:mod:`orchestrator.jobs.joint_tune`) both evaluate through here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orchestrator.config.joint_run import JointRunConfig
from orchestrator.runtime.progress import ProgressFactory, no_progress

__all__ = ["TEST_POINT_OFFSET", "JointEvaluation", "Estimates", "draw_test_sets", "estimators", "evaluate_joint",
           "joint_figures"]

log = logging.getLogger(__name__)

TEST_POINT_OFFSET = 20_000


@dataclass
class JointEvaluation:
    """One estimator's rows (one per (point, N), :func:`kernels.metrics.joint_columns`) and their summary."""

    name: str
    rows: list[dict]
    summary: dict = field(default_factory=dict)


@dataclass
class Estimates:
    """A network's estimates ``(M, n)`` and per-set covariances ``(M, n, n)``, as a fit's result reads."""

    values: np.ndarray
    covariances: np.ndarray


def draw_test_sets(table, ntable, prior_scale: float, c, n: int, n_sets: int, seed: int, i: int, j: int) -> np.ndarray:
    """``n_sets`` independent sets of ``n`` events at the shifts ``c``, ``(n_sets, n, 4)``: from ``table``, or, with
    the form factors' tables ``ntable``, each set in its own world drawn from their prior (world k of point i at
    size index j: :func:`kernels.nuisances.draw_worlds` of point ``TEST_POINT_OFFSET + 100 i + j``)."""
    from kernels import sampler

    if ntable is None:
        return sampler.sample_array(table, c, n_sets * n, (seed, TEST_POINT_OFFSET + i, j)).T.reshape(n_sets, n, 4)
    from kernels.nuisances import draw_worlds

    worlds = draw_worlds(n_sets, ntable.n_nuisances, prior_scale, seed, TEST_POINT_OFFSET + 100 * i + j)
    return np.stack([sampler.sample_array(ntable.at(u), c, n, (seed, TEST_POINT_OFFSET + i, j, k)).T
                     for k, u in enumerate(worlds)])


def estimators(cfg: JointRunConfig, table, ntable=None, ml_fit: bool = True,
               networks: Mapping[str, object] | None = None) -> dict[str, Callable]:
    """The fitters, ``name -> fit(sets, advance)``: the joint ML fit (and, with the form factors' tables ``ntable``,
    the profiled one) when ``ml_fit``, then each trained network of ``networks`` (``event_ratio``, ``deepsets``,
    ``resnet3d``; None entries skipped)."""
    from kernels import likelihood

    fitters: dict[str, Callable] = {}
    if ml_fit:
        fitters["ml_fit"] = lambda sets, adv: likelihood.fit_sets(table, sets, progress=adv or None)
        if ntable is not None:  # the form factors profiled with their prior: the fit real data allow
            from kernels import profile

            norm = profile.profile_normalisation(ntable)
            fitters["ml_fit_profiled"] = lambda sets, adv: profile.fit_sets_profiled(
                ntable, sets, prior_scale=cfg.nuisances.prior_scale, progress=adv or None, norm=norm)
    for name, net in (networks or {}).items():
        if net is None:
            continue
        if name == "event_ratio":
            from models.event_ratio import fit_sets_learned

            fitters[name] = lambda sets, adv, net=net: fit_sets_learned(net, sets, progress=adv or None)
        elif name == "resnet3d":
            from models.resnet_joint import set_images

            bins = cfg.models.resnet3d.bins
            fitters[name] = lambda sets, adv, net=net: Estimates(*net.estimate(set_images(sets, bins),
                                                                               progress=adv or None))
        else:
            fitters[name] = lambda sets, adv, net=net: Estimates(*net.estimate(sets, progress=adv or None))
    return fitters


def evaluate_joint(cfg: JointRunConfig, table, fitters: Mapping[str, Callable], ntable=None,
                   progress: ProgressFactory = no_progress,
                   stage: Callable[[str], None] = lambda msg: log.info(msg)) -> list[JointEvaluation]:
    """Every fitter on the same independent test sets of the evaluation design, one row per (point, N) each
    (with the efficient bound when ``ntable``; with the ResNet's image bound for ``resnet3d``)."""
    from kernels import likelihood, metrics
    from orchestrator.evaluate.joint import add_efficient_bound, add_image_bound, joint_summary

    shifts, evald, ec, nc = cfg.shift_columns, cfg.evaluation_design(), cfg.evaluation, cfg.nuisances
    rows: dict[str, list[dict]] = {name: [] for name in fitters}
    n_sets_total = len(evald.points) * len(ec.events_per_set) * ec.sets * len(fitters)
    stage(f"evaluating {', '.join(fitters)} on {len(evald.points)} points x {ec.sets} independent test sets at "
          f"N = {', '.join(f'{n:,}' for n in ec.events_per_set)}")
    columns = metrics.joint_columns(shifts, nuisances=ntable is not None)
    with progress("evaluate", n_sets_total, "sets") as adv:
        for i, c in enumerate(evald.points):
            fisher = likelihood.fisher_information(table, c)
            I_nuis = None if ntable is None else likelihood.fisher_information_nuisances(ntable, c)
            I_image = None
            if "resnet3d" in fitters:
                from kernels.image_information import image_information

                I_image = image_information(table, c, cfg.models.resnet3d.bins)["image"]
            for j, n in enumerate(ec.events_per_set):
                sets = draw_test_sets(table, ntable, nc.prior_scale, c, n, ec.sets, cfg.seed, i, j)
                bound = np.linalg.inv(fisher) / n
                eff = None if ntable is None else likelihood.efficient_bound(
                    I_nuis, len(shifts), n, np.eye(ntable.n_nuisances) / nc.prior_scale**2)
                for name, fit in fitters.items():
                    res = fit(sets, adv)
                    row = metrics.joint_point_metrics(res.values, res.covariances, truth=c, crb_covariance=bound,
                                                      n_events=n, shifts=shifts)
                    if eff is not None:
                        add_efficient_bound(row, shifts, *eff)
                    extra = ()
                    if name == "resnet3d":  # beside the bound of what its images keep
                        extra = add_image_bound(row, shifts, I_image, n)
                    rows[name].append({k: row[k] for k in columns + extra})
    return [JointEvaluation(name, r, joint_summary(r, shifts)) for name, r in rows.items()]


def joint_figures(fig_dir: Path, evaluations, shifts, ns, prefix: str = "") -> list[Path]:
    """Each estimator's corner plot at every N, and sigma / sigma_CRB of them all; file names start with ``prefix``."""
    from orchestrator.report import plots

    figures = []
    for ev in evaluations:
        for n in ns:
            rows = [r for r in ev.rows if r["n_events"] == n]
            figures.append(plots.plot_joint_fit(
                rows, shifts, fig_dir / f"{prefix}{ev.name}_regions_N{n}.png",
                title=f"{ev.name}: 68% regions of the estimates beside the bound's, {rows[0]['n_sets']} sets x {n:,} events"))
    figures.append(plots.plot_joint_sigma_over_crb(evaluations, shifts, fig_dir / f"{prefix}sigma_over_crb.png"))
    return figures
