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

**With hadronic nuisances** (``ntable``, the run's bi-quadratic tables; the estimator
``deepsets_marginal``): phi also regresses the exact joint scores in the 19 whitened
form factors u at u = 0 and delta C9 = the middle of the range
(:func:`kernels.joint_nuisance.nuisance_scores`; seed streams 6 and 7), so the pooled vector
carries what the set says about u beside delta C9; and every one of rho's sets is
drawn in its own world from the prior (stream ``deepsets_marginal``,
:func:`kernels.nuisances.world_of`). The set's likelihood is not a product of
per-event marginals, because u is shared by the set; rho, trained by the Gaussian
NLL on sets whose u is drawn once per set, learns the posterior of delta C9 with u
marginalised, from summaries that see u.
"""

from __future__ import annotations

import logging

import numpy as np

from kernels.errors import ConfigError

log = logging.getLogger(__name__)

#: Seed streams of :func:`kernels.joint.joint_seed` for phi's training and validation events.
PHI_STREAMS = (3, 4)
#: ... and with nuisances (the event posterior's u-slopes use 3 to 5).
MARGINAL_PHI_STREAMS = (6, 7)
#: ... and the pool of the summary's moments in (delta C9, u): chunk a of shift k from ``(*joint_seed(seed, 8), k, a)``.
PROFILE_STREAM = 8
#: The pool's shifts (an equal mixture, at u = 0, evenly over the training range) and its chunks' size.
PROFILE_POOL_POINTS, PROFILE_CHUNK = 8, 50_000
#: The box of the summary's fit in the nuisances, in prior widths (delta C9's is the training range).
PROFILE_U_WIDTHS = 6.0


def rho_range(section, grid, evaluation) -> tuple[float, float]:
    """The section's ``rho_range``, else the scan and evaluation range widened by 0.5 on each side."""
    from orchestrator.jobs.event_posterior import widened_range

    return widened_range(section.rho_range, grid, evaluation, 0.5)


def nuisance_score_points(span) -> tuple[float, ...]:
    """Where stage 1 takes the nuisances' joint scores (Deep Sets and the score ResNet): the middle of ``span``.

    >>> nuisance_score_points((-2.0, 1.0))
    (-0.5,)
    """
    return (0.5 * (float(span[0]) + float(span[1])),)


def _phi_data(table, det, level: str, span, points, n: int, seed: int, ntable=None, nuisance_points=()):
    """phi's training and validation events and targets: the joint scores at ``points``, then (with
    ``ntable``) the nuisances' joint scores at u = 0 at each of ``nuisance_points``."""
    from kernels import joint, joint_nuisance

    eff = joint.true_efficiency(level, table.windows, det)
    gamma = joint.normalisation(table, eff)
    lin_norm = None if ntable is None else joint.normalisation(joint_nuisance.nuisance_linear_table(ntable), eff)
    out = []
    for stream, size in zip(PHI_STREAMS if ntable is None else MARGINAL_PHI_STREAMS, (n, max(10_000, n // 10))):
        s = joint.sample_joint(table, span, size, joint.joint_seed(seed, stream), level, det, gamma)
        scores = [joint.joint_score(table, s.truth, d, gamma, s.is_signal)[:, None] for d in points]
        for d in nuisance_points if ntable is not None else ():
            u = np.empty((size, ntable.n_nuisances))
            for a in range(0, size, 1 << 17):  # the linear tables' projections, a chunk at a time
                b = slice(a, a + (1 << 17))
                u[b] = joint_nuisance.nuisance_scores(ntable, s.truth[b], d, lin_norm, s.is_signal[b])
            scores.append(u)
        out += [s.events, np.concatenate(scores, axis=1)]
    return out


def _stream_sets(cfg, section, grid: tuple[float, ...], address, ntable=None):
    """(train batches, val batches, source): iterables of ``(sets, d)`` per chunk from a Ray stream over ``grid``;
    with ``ntable``, every set in its own world from the prior (stream ``deepsets_marginal``)."""
    from kernels import theory
    from orchestrator.build.stream import StreamSource
    from orchestrator.build.stream_work import EPOCH_PHASE, VAL_PHASE, StreamJob, default_chunk_units, plan_chunks

    windows = tuple(tuple(float(x) for x in w) for w in cfg.theory.windows)
    nuisance = {} if ntable is None else dict(
        form_factors=cfg.nuisances.form_factors, prior_scale=float(cfg.nuisances.prior_scale), nuisance_key=ntable.key,
        worlds=True)
    job = StreamJob("deepsets_score" if ntable is None else "deepsets_marginal", cfg.seed, grid, unit=section.set_size,
                    level=cfg.scan.level, windows=windows, detector=tuple(sorted(cfg.scan.detector.items())),
                    theory_key=theory.jtable(["C9_bsmumu"], [list(w) for w in windows]).key, **nuisance)
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
                         address: str | None = None, ntable=None):
    """Train ``cfg.models.deepsets`` (``summary: score``); returns ``(net, history)``. With ``ntable`` (the
    nuisances' tables), the nuisance-aware version of the module docstring (it needs ``data: stream``).

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
    if ntable is not None and dc.data != "stream":
        raise ConfigError("Deep Sets with nuisances draws each of rho's sets in its own world: it needs data: stream")
    u_points = () if ntable is None else nuisance_score_points(span)
    x_tr, t_tr, x_va, t_va = _phi_data(table, det, level, span, points, dc.score_events, cfg.seed, ntable, u_points)
    seed_everything(cfg.seed)
    net = DeepSets(hidden=dc.hidden, phi_layers=dc.phi_layers, rho_layers=dc.rho_layers, pool="mean", head=dc.head,
                   summary="score", score_points=points, nuisance_scores=0 if ntable is None else ntable.n_nuisances,
                   nuisance_points=u_points or None)
    with progress("train deepsets phi (joint scores)", phi_config.epochs, "epochs") as adv:
        h_phi = pretrain_phi(net, x_tr, t_tr, x_va, t_va, phi_config, on_epoch=on_epoch(adv, "phi_"))
    if dc.data == "stream":
        lo, hi = rho_range(dc, grid, cfg.evaluation.dc9)
        rho_grid = tuple(float(d) for d in np.linspace(lo, hi, dc.rho_points))
        batches, tr, va, source = _stream_sets(cfg, dc, rho_grid, address, ntable)
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
    if ntable is not None and dc.profile_events:
        net.set_profile(_profile_moments(net, ntable, det, level, span, dc.profile_events, cfg.seed, progress),
                        [span] + [[-PROFILE_U_WIDTHS * cfg.nuisances.prior_scale, PROFILE_U_WIDTHS *
                                   cfg.nuisances.prior_scale]] * ntable.n_nuisances, cfg.nuisances.prior_scale)
    log.info("deepsets (score summary%s): phi on %d joint events, %d reference shifts in %s; rho on %d sets",
             "" if ntable is None else f", {ntable.n_nuisances} nuisance scores, sets in prior-drawn worlds",
             dc.score_events, len(points), span, len(d))
    hist = dict(h_rho)
    hist.update(phi_val_loss=h_phi["val_loss"], phi_train_loss=h_phi["train_loss"], rho_sets=int(len(d)),
                seconds=h_phi.get("seconds", 0.0) + h_rho.get("seconds", 0.0))
    return net, hist


def _profile_moments(net, ntable, det, level: str, span, n: int, seed: int, progress):
    """phi's moments for the summary's fit in (delta C9, u) (:func:`models.deepsets_score.profile_moments`) over
    ``n`` fresh events at ``level``: an equal mixture of :data:`PROFILE_POOL_POINTS` shifts over ``span`` at u = 0,
    reweighted exactly by :func:`kernels.joint_nuisance.nuisance_mixture_weights`."""
    from kernels import detector, joint, joint_nuisance
    from models.deepsets_score import profile_moments

    central = ntable.at(np.zeros(ntable.n_nuisances))
    eff = joint.true_efficiency(level, central.windows, det)
    norm_flat, norm_central = joint.normalisation(ntable.flat, eff), joint.normalisation(central, eff)
    points = np.linspace(*span, PROFILE_POOL_POINTS)
    per = max(1, n // PROFILE_POOL_POINTS)
    base = joint.joint_seed(seed, PROFILE_STREAM)

    def chunks(adv):
        for k, d in enumerate(points):
            for a in range(0, per, PROFILE_CHUNK):
                m = min(PROFILE_CHUNK, per - a)
                s = detector.sample_level_truth(central, [float(d)], m, (*base, k, a), level, det)
                yield (np.ascontiguousarray(s.events.T, dtype=np.float32),
                       joint_nuisance.nuisance_mixture_weights(ntable, s.truth.T, points[:, None], norm_flat,
                                                               norm_central, s.is_signal))
                if adv:
                    adv(m)

    with progress("deepsets: the summary's moments in (delta C9, u)", per * len(points), "events") as adv:
        return profile_moments(net, chunks(adv))
