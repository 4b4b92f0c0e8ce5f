"""Training of Deep Sets with the score summary (``summary: score``), in the two stages of :mod:`models.deepsets_score`.

1. phi regresses the simulator's exact joint scores at ``score_points`` reference
   shifts, evenly over ``train_range``, on ``score_events`` fresh joint draws
   (:func:`kernels.joint.sample_joint`, delta C9 continuous over the range; own
   seed streams :func:`kernels.joint.joint_seed` 3 and 4, apart from the event
   posterior's 0 to 2, the stored pools and the test MC).
2. rho learns the value and the width on sets of ``set_size`` events, each
   reduced once to its pooled vector by the frozen phi. With ``data: stream``
   the sets are fresh Monte Carlo drawn by Ray actors
   (:class:`orchestrator.build.stream.StreamSource`, stream ``deepsets_score``)
   at ``rho_points`` shifts evenly over ``rho_range`` (default: the evaluation
   and scan range widened by 0.5 on each side, so no estimate is pulled in at
   the ends), ``sets_per_point`` per shift; with ``data: pool``, bootstrap sets of
   the stored training pools at the scan's points (:func:`models.splits.deepsets_data`).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

#: Seed streams of :func:`kernels.joint.joint_seed` for phi's training and validation events.
PHI_STREAMS = (3, 4)


def rho_range(section, grid, evaluation) -> tuple[float, float]:
    """The section's ``rho_range``, else the scan and evaluation range widened by 0.5 on each side."""
    from orchestrator.jobs.event_posterior import widened_range

    return widened_range(section.rho_range, grid, evaluation, 0.5)


def _phi_data(table, det, level: str, span, points, n: int, seed: int):
    from kernels import joint

    gamma = joint.normalisation(table, joint.true_efficiency(level, table.windows, det))
    out = []
    for stream, size in zip(PHI_STREAMS, (n, max(10_000, n // 10))):
        s = joint.sample_joint(table, span, size, joint.joint_seed(seed, stream), level, det, gamma)
        scores = np.stack([joint.joint_score(table, s.truth, d, gamma, s.is_signal) for d in points], axis=1)
        out += [s.events, scores]
    return out


def _stream_sets(cfg, section, grid: tuple[float, ...], address):
    """(train batches, val batches, source): iterables of ``(sets, d)`` per chunk from a Ray stream over ``grid``."""
    from kernels import theory
    from orchestrator.build.stream import StreamSource
    from orchestrator.build.stream_work import EPOCH_PHASE, VAL_PHASE, StreamJob, default_chunk_units, plan_chunks

    windows = tuple(tuple(float(x) for x in w) for w in cfg.theory.windows)
    job = StreamJob("deepsets_score", cfg.seed, grid, unit=section.set_size, level=cfg.scan.level, windows=windows,
                    detector=tuple(sorted(cfg.scan.detector.items())),
                    theory_key=theory.jtable(["C9_bsmumu"], [list(w) for w in windows]).key)
    source = StreamSource(job, section.stream_workers, section.stream_in_flight, address)
    units = default_chunk_units(job)
    n_val = max(2, section.sets_per_point // 5)

    def batches(phase, per_point, adv):
        for _, x, y in source.results(plan_chunks(job, phase, per_point, units)):
            if adv is not None:
                adv(len(y))
            yield x, y

    return batches, (EPOCH_PHASE, section.sets_per_point), (VAL_PHASE, n_val), source


def train_score_deepsets(cfg, table, det, level: str, phi_config, rho_config, pools, on_epoch, progress,
                         address: str | None = None):
    """Train ``cfg.models.deepsets`` (``summary: score``); returns ``(net, history)``.

    ``phi_config``/``rho_config``: the two stages' :class:`models.training.TrainConfig`;
    ``on_epoch(advance, prefix="")``: the per-epoch logger of a stage, given its progress tick (phi's metrics
    are prefixed ``phi_``).
    """
    import torch

    from models.deepsets import DeepSets
    from models.deepsets_score import pooled_vectors, pretrain_phi, train_rho
    from models.training import seed_everything
    from orchestrator.jobs.event_posterior import train_range

    dc = cfg.models.deepsets
    grid = [float(d) for d in cfg.scan.dc9]
    span = train_range(dc, grid, cfg.evaluation.dc9)
    points = tuple(float(d) for d in np.linspace(*span, dc.score_points))
    x_tr, t_tr, x_va, t_va = _phi_data(table, det, level, span, points, dc.score_events, cfg.seed)
    seed_everything(cfg.seed)
    net = DeepSets(hidden=dc.hidden, phi_layers=dc.phi_layers, rho_layers=dc.rho_layers, pool="mean", head=dc.head,
                   summary="score", score_points=points)
    with progress("train deepsets phi (joint scores)", phi_config.epochs, "epochs") as adv:
        h_phi = pretrain_phi(net, x_tr, t_tr, x_va, t_va, phi_config, on_epoch=on_epoch(adv, "phi_"))
    if dc.data == "stream":
        lo, hi = rho_range(dc, grid, cfg.evaluation.dc9)
        rho_grid = tuple(float(d) for d in np.linspace(lo, hi, dc.rho_points))
        batches, tr, va, source = _stream_sets(cfg, dc, rho_grid, address)
        try:
            with progress("deepsets rho: pooled sets", len(rho_grid) * (tr[1] + va[1]), "sets") as adv:
                pooled, d = pooled_vectors(net, batches(*tr, adv))
                val_pooled, val_d = pooled_vectors(net, batches(*va, adv))
        finally:
            source.close()
    else:
        from models.splits import deepsets_data

        train_set, val_set, _ = deepsets_data(pools, grid, dc.set_size, dc.sets_per_point, cfg.seed)

        def batches(data):
            for i in range(0, len(data), 8):
                items = [data[j] for j in range(i, min(i + 8, len(data)))]
                yield torch.stack([torch.as_tensor(x) for x, _ in items]).numpy(), np.array([float(y) for _, y in items])

        pooled, d = pooled_vectors(net, batches(train_set))
        val_pooled, val_d = pooled_vectors(net, batches(val_set))
    seed_everything(cfg.seed)
    with progress("train deepsets rho", rho_config.epochs, "epochs") as adv:
        h_rho = train_rho(net, pooled, d, val_pooled, val_d, rho_config, on_epoch=on_epoch(adv))
    log.info("deepsets (score summary): phi on %d joint events, %d reference shifts in %s; rho on %d sets",
             dc.score_events, len(points), span, len(d))
    hist = dict(h_rho)
    hist.update(phi_val_loss=h_phi["val_loss"], phi_train_loss=h_phi["train_loss"], rho_sets=int(len(d)),
                seconds=h_phi.get("seconds", 0.0) + h_rho.get("seconds", 0.0))
    return net, hist
