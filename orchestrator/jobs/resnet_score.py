"""Training of the 3D ResNet with the score summary (``resnet3d: {summary: score}``), :mod:`models.resnet_score`.

1. **Voxel scores.** ``score_images`` images (and a fifth as many for validation) of
   ``events_per_image`` events are drawn once by Ray actors from fresh Monte Carlo
   (stream ``resnet3d_score``) at the 52 shifts of a grid over ``train_range``
   (default: the scan and evaluation range widened by 1 on each side), each with the
   per-voxel sums of its events' joint scores at ``score_points`` shifts over the same
   range (:func:`kernels.joint.voxel_score_sums`); the network regresses them for
   ``phi_train.epochs`` epochs.
2. **rho.** Fresh images (stream ``resnet3d_rho``), ``rho_images_per_point`` at each of
   ``rho_points`` shifts over ``rho_range`` (default: the range widened by 0.5), are
   reduced to their K summaries by the frozen network, and rho learns the value and
   the width from them.

No stored image is used: the stored images stay for ``summary: learned``.

**With hadronic nuisances** (``ntable``; the estimator ``resnet3d_marginal``): stage 1's labels
also carry the voxel sums of the 19 form factors' joint scores at u = 0 and delta C9 = the middle
of the range (its images stay at the central world), and every one of rho's images is drawn in its
own world from the prior (stream ``resnet3d_rho_marginal``), as Deep Sets does
(:mod:`orchestrator.jobs.deepsets_score`).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

#: Shifts of the stage-1 image grid over the training range.
SCORE_GRID_POINTS = 52


def _job(cfg, model: str, grid, score_points=(), ntable=None, **nuisance):
    from kernels import theory
    from orchestrator.build.stream_work import StreamJob

    windows = tuple(tuple(float(x) for x in w) for w in cfg.theory.windows)
    if ntable is not None:
        nuisance.update(form_factors=cfg.nuisances.form_factors, prior_scale=float(cfg.nuisances.prior_scale),
                        nuisance_key=ntable.key)
    return StreamJob(model, cfg.seed, tuple(grid), unit=cfg.images.events_per_image, bins=cfg.images.bins,
                     level=cfg.scan.level, windows=windows, detector=tuple(sorted(cfg.scan.detector.items())),
                     theory_key=theory.jtable(["C9_bsmumu"], [list(w) for w in windows]).key,
                     score_points=tuple(score_points), **nuisance)


def train_score_resnet(cfg, phi_config, rho_config, on_epoch, progress, address: str | None = None, ntable=None):
    """Train ``cfg.models.resnet3d`` (``summary: score``); returns ``(net, history)``. With ``ntable`` (the
    nuisances' tables), the nuisance-aware version of the module docstring.

    ``on_epoch(advance, prefix="")``: the per-epoch logger of a stage (stage 1's metrics prefixed ``phi_``).
    """
    import math

    from models.resnet_score import ScoreResNet3d, image_summaries, pretrain_voxel_scores, train_rho
    from models.training import seed_everything
    from orchestrator.build.stream import StreamSource
    from orchestrator.build.stream_work import EPOCH_PHASE, VAL_PHASE, default_chunk_units
    from orchestrator.jobs.deepsets_score import nuisance_score_points, rho_range
    from orchestrator.jobs.event_posterior import train_range

    rc = cfg.models.resnet3d
    grid = [float(d) for d in cfg.scan.dc9]
    span = train_range(rc, grid, cfg.evaluation.dc9)
    points = tuple(float(d) for d in np.linspace(*span, rc.score_points))
    score_grid = tuple(float(d) for d in np.linspace(*span, SCORE_GRID_POINTS))
    per_point = math.ceil(rc.score_images / SCORE_GRID_POINTS)
    n_val = max(1, per_point // 5)
    u_points = () if ntable is None else nuisance_score_points(span)
    source = StreamSource(_job(cfg, "resnet3d_score", score_grid, points, ntable, nuisance_points=u_points),
                          rc.stream_workers, rc.stream_in_flight, address)
    units = default_chunk_units(source.job)
    try:
        with progress("resnet3d: images with voxel scores", SCORE_GRID_POINTS * (per_point + n_val), "images") as adv:
            x_tr, t_tr = source.draw(EPOCH_PHASE, per_point, units, adv)
            x_va, t_va = source.draw(VAL_PHASE, n_val, units, adv)
    finally:
        source.close()
    seed_everything(cfg.seed)
    net = ScoreResNet3d(points, bins=cfg.images.bins, width=rc.width, blocks=rc.blocks, head=rc.head,
                        nuisance_scores=0 if ntable is None else ntable.n_nuisances, nuisance_points=u_points or None)
    with progress("train resnet3d (voxel scores)", phi_config.epochs, "epochs") as adv:
        h_phi = pretrain_voxel_scores(net, x_tr, t_tr, x_va, t_va, phi_config, on_epoch=on_epoch(adv, "phi_"))
    del t_tr, t_va
    lo, hi = rho_range(rc, grid, cfg.evaluation.dc9)
    rho_grid = tuple(float(d) for d in np.linspace(lo, hi, rc.rho_points))
    n_rho, n_rho_val = rc.rho_images_per_point, max(1, rc.rho_images_per_point // 5)
    rho_job = (_job(cfg, "resnet3d_rho", rho_grid) if ntable is None
               else _job(cfg, "resnet3d_rho_marginal", rho_grid, (), ntable, worlds=True))
    source = StreamSource(rho_job, rc.stream_workers, rc.stream_in_flight, address)
    units = default_chunk_units(source.job)
    try:
        with progress("resnet3d rho: image summaries", len(rho_grid) * (n_rho + n_rho_val), "images") as adv:
            pooled, d = image_summaries(net, [source.draw(EPOCH_PHASE, n_rho, units, adv)])
            val_pooled, val_d = image_summaries(net, [source.draw(VAL_PHASE, n_rho_val, units, adv)])
    finally:
        source.close()
    seed_everything(cfg.seed)
    with progress("train resnet3d rho", rho_config.epochs, "epochs") as adv:
        h_rho = train_rho(net, pooled, d, val_pooled, val_d, rho_config, on_epoch=on_epoch(adv))
    log.info("resnet3d (score summary): %d images with voxel scores at %d shifts in %s; rho on %d images",
             len(x_tr), len(points), span, len(d))
    hist = dict(h_rho)
    hist.update(phi_val_loss=h_phi["val_loss"], phi_train_loss=h_phi["train_loss"], rho_images=int(len(d)),
                seconds=h_phi.get("seconds", 0.0) + h_rho.get("seconds", 0.0))
    return net, hist
