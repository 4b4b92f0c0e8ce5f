"""Training of the joint job's 3D ResNet (:mod:`models.resnet_joint`), on fresh images, none stored.

1. **Voxel scores.** ``score_images`` images (and ``val_fraction`` more for validation), each of N events at
   shifts uniform over the scan's and evaluation's box widened by ``rho_margin`` and sizes log-uniform over the
   evaluation's range of N (:func:`orchestrator.jobs.joint_train.rho_sizes`), seed streams
   ``(seed, 60000, image)``, with the per-voxel sums of their events' exact joint scores at the scan's points;
   the trunk regresses them (``phi_train``).
2. **rho.** ``rho_images`` fresh images (and ``rho_val_images``) over the same box and sizes, seed streams
   ``(seed, 70000, image)``, reduced once to their summaries by the frozen trunk; rho and the multivariate
   Gaussian head learn the estimate and its covariance from them (``rho_train``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["SCORE_IMAGE_STREAM", "RHO_IMAGE_STREAM", "draw_images", "train_joint_resnet"]

SCORE_IMAGE_STREAM = 60_000
RHO_IMAGE_STREAM = 70_000


def draw_images(table, shifts, sizes, bins: int, seed: int, stream: int, score_points=None, advance=None):
    """Images ``(M, 2, B, B, B)`` of ``sizes[k]`` events at ``shifts[k]`` (seed ``(seed, stream, k)``), and, with
    ``score_points`` (K, n), the per-voxel sums of the events' joint scores there, ``(M, K n, B, B, B)``
    (else None). ``advance(1)`` per image.

    >>> from kernels import theory
    >>> t = theory.jtable(["C9_bsmumu", "C10_bsmumu"], [(1.1, 6.0)])
    >>> x, y = draw_images(t, [[0.0, 0.0], [0.5, -0.5]], [300, 500], 4, 1, 2, score_points=[[0.0, 0.0]])
    >>> x.shape, y.shape, np.nansum(x[:, 1], axis=(1, 2, 3)).tolist()
    ((2, 2, 4, 4, 4), (2, 2, 4, 4, 4), [300.0, 500.0])
    """
    from kernels import likelihood, sampler
    from kernels.joint import voxel_sums
    from models.event_ratio import ratio_scores
    from models.resnet_joint import set_images

    c_all = np.asarray(shifts, dtype=np.float64)
    images = np.empty((len(c_all), 2, bins, bins, bins), dtype=np.float32)
    labels = None
    if score_points is not None:
        pts = np.asarray(score_points, dtype=np.float64)
        labels = np.empty((len(c_all), pts.size, bins, bins, bins), dtype=np.float32)
    for k, (c, n) in enumerate(zip(c_all, sizes)):
        x = sampler.sample_array(table, c, int(n), (seed, stream, k)).T
        images[k] = set_images(x[None], bins)[0]
        if labels is not None:
            labels[k] = voxel_sums(ratio_scores(likelihood.project(table, x), pts).reshape(x.shape[0], -1), x, bins)
        if advance:
            advance(1)
    return images, labels


def train_joint_resnet(cfg, table, scan, tracker, progress, stage):
    """The ResNet of ``cfg.models.resnet3d`` (module docstring); returns the network and its histories."""
    import torch

    from models.resnet_joint import JointScoreResNet3d
    from models.resnet_score import image_summaries, pretrain_voxel_scores, train_rho
    from models.training import TrainConfig, seed_everything
    from orchestrator.jobs.joint_train import rho_box, rho_sizes
    from orchestrator.track.epochs import EpochLogger

    rc = cfg.models.resnet3d
    points = np.asarray(scan.points, dtype=np.float64)
    box = rho_box(np.concatenate([points, np.asarray(cfg.evaluation_design().points)]), rc.rho_margin)
    counts = cfg.evaluation.events_per_set

    def config(t, loss):
        return TrainConfig(loss=loss, lr=t.lr, batch_size=t.batch_size, epochs=t.epochs, patience=0,
                           weight_decay=t.weight_decay, seed=cfg.seed, device=cfg.device)

    def draw(what, n_images, stream, score_points=None):
        rng = np.random.default_rng([cfg.seed, stream])
        shifts = rng.uniform(box[:, 0], box[:, 1], (n_images, table.n_shifts))
        sizes = rho_sizes(counts, n_images, rng)
        with progress(what, n_images, "images") as adv:
            x, y = draw_images(table, shifts, sizes, rc.bins, cfg.seed, stream, score_points, adv or None)
        return x, y, shifts

    n_val = max(1, int(rc.val_fraction * rc.score_images))
    stage(f"resnet3d: {rc.score_images:,} + {n_val:,} fresh {rc.bins}^3 images with their voxel scores at the "
          f"scan's {len(points)} points, {min(counts):,} to {max(counts):,} events over the box "
          f"{np.round(box, 2).tolist()}")
    x, y, _ = draw("resnet3d: images with voxel scores", rc.score_images + n_val, SCORE_IMAGE_STREAM, points)
    seed_everything(cfg.seed)
    net = JointScoreResNet3d(table.n_shifts, points, bins=rc.bins, width=rc.width, blocks=rc.blocks,
                             rho_hidden=rc.rho_hidden, rho_layers=rc.rho_layers)
    with progress("train resnet3d (voxel scores)", rc.phi_train.epochs, "epochs") as adv:
        phi_hist = pretrain_voxel_scores(net, x[n_val:], y[n_val:], x[:n_val], y[:n_val], config(rc.phi_train, "mse"),
                                         on_epoch=EpochLogger(tracker, adv, prefix="phi_"))
    del x, y
    stage(f"resnet3d: rho on the summaries of {rc.rho_images:,} fresh images ({rc.rho_val_images:,} to validate)")
    summaries = []
    for what, n_images, stream in (("train", rc.rho_images, RHO_IMAGE_STREAM),
                                   ("validation", rc.rho_val_images, RHO_IMAGE_STREAM + 1)):
        x, _, shifts = draw(f"resnet3d rho: {what} images", n_images, stream)
        pooled, _ = image_summaries(net, [(x, shifts)])
        summaries.append((pooled, torch.from_numpy(shifts).float()))
        del x
    seed_everything(cfg.seed)
    with progress("train resnet3d rho", rc.rho_train.epochs, "epochs") as adv:
        rho_hist = train_rho(net, *summaries[0], *summaries[1], config(rc.rho_train, "mvn_nll"),
                             on_epoch=EpochLogger(tracker, adv, prefix="rho_"))
    net.to("cpu")
    return net, {"phi": phi_hist, "rho": rho_hist}
