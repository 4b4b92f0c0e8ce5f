"""Training of the joint job's 3D ResNet (:mod:`models.resnet_joint`) on simulated images, none stored.

1. **Voxel scores.** ``score_images`` images, each of N events at shifts uniform over the scan's and
   evaluation's box widened by ``rho_margin`` and sizes log-uniform over the evaluation's range of N
   (:func:`orchestrator.jobs.joint_train.rho_sizes`), with the per-voxel sums of their events' exact joint scores
   at the scan's points; the trunk regresses them (``phi_train``), validated on ``val_fraction`` as many fresh
   images (seed streams ``(seed, 60001, image)``).
2. **rho.** ``rho_images`` images over the same box and sizes, reduced once to their summaries by the frozen
   trunk; rho and the multivariate Gaussian head learn the estimate and its covariance from them
   (``rho_train``), validated on ``rho_val_images`` fresh ones (``(seed, 70001, image)``), so both validation
   losses are the real images'.
3. **The summary's emulator** (``refine``): its mean and covariance as functions of the shift and N, regressed
   on rho's training summaries (:func:`models.summary_fit.fit_emulator`); the network's estimates are then
   rho's refined by the summary's own fit.

The training images of both stages are thinned from one pool of ``pool_events`` events over the box's corners
and centre (:class:`kernels.pool.EventPool`, seed ``(seed, 75000)``; their scores from the pool's stored
projections): tens of thousands of images for the cost of a few million events. ``pool_events: 0`` draws
each afresh instead (seed streams ``(seed, 60000, image)`` and ``(seed, 70000, image)``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["SCORE_IMAGE_STREAM", "RHO_IMAGE_STREAM", "POOL_STREAM", "draw_images", "pool_images",
           "train_joint_resnet"]

SCORE_IMAGE_STREAM = 60_000
RHO_IMAGE_STREAM = 70_000
POOL_STREAM = 75_000


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


def pool_images(pool, shifts, sizes, bins: int, rng, batch: int = 256, score_points=None, advance=None):
    """Batches ``(images (b, 2, B, B, B), shifts (b, n), labels)`` of sets of ``sizes[k]`` events thinned from
    ``pool`` (:class:`kernels.pool.EventPool`) at ``shifts[k]``, ``batch`` images at a time (bounded memory); with
    ``score_points`` the labels are :func:`draw_images`' voxel score sums, from the pool's stored projections (else
    None). ``advance(1)`` per image."""
    from kernels.joint import voxel_sums
    from kernels.voxels import voxelize
    from models.event_ratio import ratio_scores

    c_all = np.asarray(shifts, dtype=np.float64)
    pts = None if score_points is None else np.asarray(score_points, dtype=np.float64)
    for s in range(0, len(c_all), batch):
        chunk = range(s, min(len(c_all), s + batch))
        rows = [pool.take(c_all[k], int(sizes[k]), rng) for k in chunk]
        x = pool.events[np.concatenate(rows)]
        image_id = np.repeat(np.arange(len(chunk)), [r.size for r in rows])
        images = voxelize(x[:, 1], x[:, 2], x[:, 3], x[:, 0], bins, image_id=image_id, n_images=len(chunk))
        labels = None
        if pts is not None:
            ends = np.cumsum([r.size for r in rows])
            labels = np.stack([voxel_sums(ratio_scores(pool.a[r], pts).reshape(r.size, -1), x[e - r.size:e], bins)
                               for r, e in zip(rows, ends)]).astype(np.float32)
        yield images, c_all[chunk], labels
        if advance:
            advance(len(chunk))


def train_joint_resnet(cfg, table, scan, tracker, progress, stage):
    """The ResNet of ``cfg.models.resnet3d`` (module docstring); returns the network and its histories."""
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
    pooled = rc.pool_events > 0
    where = f"thinned from a pool of {rc.pool_events:,} events" if pooled else "drawn afresh"
    pool = None
    if pooled:
        from kernels.pool import EventPool, corners_and_centre

        with progress("resnet3d: the event pool", rc.pool_events, "events") as adv:
            pool = EventPool(table, corners_and_centre(box), rc.pool_events, (cfg.seed, POOL_STREAM), box=box,
                             advance=adv or None)
        rng = np.random.default_rng([cfg.seed, POOL_STREAM, 1])

    def from_pool(what, n_images, score_points=None):
        shifts = rng.uniform(box[:, 0], box[:, 1], (n_images, table.n_shifts))
        sizes = rho_sizes(counts, n_images, rng)
        with progress(what, n_images, "images") as adv:
            yield from pool_images(pool, shifts, sizes, rc.bins, rng, score_points=score_points, advance=adv or None)

    stage(f"resnet3d: {rc.score_images:,} {rc.bins}^3 images {where} with their voxel scores at the scan's "
          f"{len(points)} points ({n_val:,} fresh ones to validate), {min(counts):,} to {max(counts):,} events over "
          f"the box {np.round(box, 2).tolist()}")
    xv, yv, _ = draw("resnet3d: validation images with voxel scores", n_val, SCORE_IMAGE_STREAM + 1, points)
    if pooled:
        parts = list(from_pool("resnet3d: images with voxel scores", rc.score_images, points))
        x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[2] for p in parts])
        del parts
    else:
        x, y, _ = draw("resnet3d: images with voxel scores", rc.score_images, SCORE_IMAGE_STREAM, points)
    seed_everything(cfg.seed)
    net = JointScoreResNet3d(table.n_shifts, points, bins=rc.bins, width=rc.width, blocks=rc.blocks,
                             rho_hidden=rc.rho_hidden, rho_layers=rc.rho_layers)
    with progress("train resnet3d (voxel scores)", rc.phi_train.epochs, "epochs") as adv:
        phi_hist = pretrain_voxel_scores(net, x, y, xv, yv, config(rc.phi_train, "mse"),
                                         on_epoch=EpochLogger(tracker, adv, prefix="phi_"))
    del x, y, xv, yv
    stage(f"resnet3d: rho on the summaries of {rc.rho_images:,} images {where} ({rc.rho_val_images:,} fresh ones "
          "to validate)")
    summaries = []
    if pooled:
        summaries.append(image_summaries(net, ((x, c) for x, c, _ in from_pool("resnet3d rho: images", rc.rho_images))))
        stage(f"resnet3d: {pool.overflow / max(pool.kept, 1):.1e} of the pool's kept events above its weight bound "
              f"{pool.w_max:.2f}")
        del pool
    fresh = [("validation", rc.rho_val_images, RHO_IMAGE_STREAM + 1)]
    if not pooled:
        fresh.insert(0, ("train", rc.rho_images, RHO_IMAGE_STREAM))
    for what, n_images, stream in fresh:
        x, _, shifts = draw(f"resnet3d rho: {what} images", n_images, stream)
        summaries.append(image_summaries(net, [(x, shifts)]))
        del x
    summaries = [(p, c.float()) for p, c in summaries]
    seed_everything(cfg.seed)
    with progress("train resnet3d rho", rc.rho_train.epochs, "epochs") as adv:
        rho_hist = train_rho(net, *summaries[0], *summaries[1], config(rc.rho_train, "mvn_nll"),
                             on_epoch=EpochLogger(tracker, adv, prefix="rho_"))
    if rc.refine:  # the summary's mean and covariance at any shift and N, from rho's own training summaries
        from models.summary_fit import fit_emulator

        raw, shifts = (t.double().numpy() for t in summaries[0])
        net.set_emulator(fit_emulator(raw[:, :-1], shifts, np.rint(np.exp(raw[:, -1])), table.rate_integral()), box,
                         rc.refine_min_events)
        stage(f"resnet3d: the summary's emulator regressed on {len(raw):,} images; the estimates of "
              f"{rc.refine_min_events:,} events or more refined by its fit")
    net.to("cpu").eval()  # batch norm's statistics are the training images' from here on
    return net, {"phi": phi_hist, "rho": rho_hist}
