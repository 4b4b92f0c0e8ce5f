"""Training of the joint job's learned estimators on the scan's events (:mod:`orchestrator.jobs.joint_run`).

- :func:`train_event_ratio`: the per-event ratio (:mod:`models.event_ratio`), calibrated on fresh SM events
  (seed stream ``(seed, 30000)``) with their exact coefficients as a control variate.
- :func:`train_joint_deepsets`: Deep Sets with the multivariate Gaussian head (:mod:`models.deepsets_joint`):
  phi on the scan's events and their exact scores at the scan's points, then rho on synthetic sets (the
  summary's moments over ``moment_events`` fresh events at the scan's points, seed streams ``(seed, 50000, point)``,
  reweighted exactly to any shift: :func:`models.deepsets_joint.synthetic_pooled`)
  at shifts uniform over the scan's and evaluation's box widened by ``rho_margin`` on each side and sizes
  log-uniform over the evaluation's range of N, validated on fresh simulated sets (seed streams ``(seed, 40000, k)``);
  with ``refine``, the moments and the box are kept in the network, whose estimates are then refined by the
  summary's own fit (:func:`models.deepsets_joint.summary_fit`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.config.joint_run import JointRunConfig

__all__ = ["CALIBRATION_STREAM", "RHO_STREAM", "MOMENT_STREAM", "scan_events", "train_event_ratio", "train_joint_deepsets"]

CALIBRATION_STREAM = 30_000
RHO_STREAM = 40_000
MOMENT_STREAM = 50_000


def scan_events(events_dir: Path, n_events: int, seed: int) -> tuple[np.ndarray, int]:
    """``n_events`` of the scan's generator-level events in equal parts of every point, shuffled (float32
    ``(n, 4)``), and the number of points. At generator level every learned target is a function of the event,
    so any mix of points is right; this one covers where every point puts its events."""
    from kernels.event_store import COLUMNS, read_event_manifest, read_point

    m = read_event_manifest(events_dir)
    per_point = n_events // len(m.points)
    parts = []
    for p in m.points:
        t = read_point(events_dir, m.raw, "gen", p["index"]).slice(0, per_point)
        parts.append(np.stack([t.column(c).to_numpy() for c in COLUMNS], axis=-1))
    ev = np.concatenate(parts)
    return ev[np.random.default_rng([seed, 7]).permutation(ev.shape[0])].astype(np.float32), len(m.points)


def train_event_ratio(cfg: JointRunConfig, table, scan, events_dir: Path, tracker, progress, stage):
    """The event ratio, trained on the scan's events (equal parts of every point; at generator level the targets
    are a function of the event, so any mix of points is right) and calibrated on fresh SM events."""
    import torch

    from kernels import likelihood, sampler
    from models.event_ratio import EventRatio, log_ratio_targets, ratio_targets
    from models.training import TrainConfig, seed_everything, train
    from orchestrator.track.epochs import EpochLogger

    ec = cfg.models.event_ratio
    ev, n_points = scan_events(events_dir, ec.train_events, cfg.seed)
    proj = likelihood.project(table, ev.astype(np.float64))
    targets = ratio_targets(proj)
    points = [list(p) for p in scan.points if np.any(p)] if ec.loss == "log" else None
    seed_everything(cfg.seed)
    net = EventRatio(table.n_shifts, hidden=ec.hidden, layers=ec.layers, loss_points=points)
    net.fit_features(ev).fit_scale(targets)
    n_val = max(1, int(ec.val_fraction * ev.shape[0]))
    x = torch.from_numpy(np.ascontiguousarray(ev))
    y = (torch.from_numpy(log_ratio_targets(proj, points)).float() if points is not None
         else torch.from_numpy(targets).float() / net.scale)
    data = torch.utils.data.TensorDataset
    tc = TrainConfig(loss="mse", lr=ec.train.lr, batch_size=ec.train.batch_size, epochs=ec.train.epochs, patience=0,
                     weight_decay=ec.train.weight_decay, seed=cfg.seed, device=cfg.device)
    stage(f"training event_ratio on {ev.shape[0] - n_val:,} events of the scan's {n_points} points")
    with progress("train event_ratio", tc.epochs, "epochs") as adv:
        hist = train(net, data(x[n_val:], y[n_val:]), data(x[:n_val], y[:n_val]), tc,
                     on_epoch=EpochLogger(tracker, adv))
    net.to("cpu")
    stage(f"calibrating event_ratio's normaliser on {ec.reference_events:,} fresh SM events")
    ref = sampler.sample_array(table, np.zeros(table.n_shifts), ec.reference_events, (cfg.seed, CALIBRATION_STREAM)).T
    gamma = likelihood.normalisation(table)  # generator level: the truth is the event, and Z's exact mean is known
    net.calibrate(ref, control=ratio_targets(likelihood.project(table, ref.astype(np.float64))),
                  control_mean=gamma[1:] / gamma[0])
    return net, hist


def rho_sizes(counts, n_sets: int, rng) -> np.ndarray:
    """Set sizes for rho's training: log-uniform over ``[min(counts), max(counts)]`` (one N: that N).

    >>> n = rho_sizes([2000, 70000], 10000, np.random.default_rng(0))
    >>> bool(n.min() >= 2000 and n.max() <= 70000), bool(abs(np.median(n) - np.sqrt(2000 * 70000)) < 600)
    (True, True)
    >>> rho_sizes([24000], 3, np.random.default_rng(0)).tolist()
    [24000, 24000, 24000]
    """
    lo, hi = np.log(min(counts)), np.log(max(counts))
    return np.rint(np.exp(rng.uniform(lo, hi, n_sets))).astype(int)


def rho_box(points, margin: float) -> np.ndarray:
    """The box of rho's training shifts: the points' bounding box widened by ``margin`` on each side, ``(n, 2)``.

    >>> rho_box([[-2.0, -1.0], [1.0, 1.0]], 0.5).tolist()
    [[-2.5, 1.5], [-1.5, 1.5]]
    """
    p = np.asarray(points, dtype=np.float64)
    return np.stack([p.min(axis=0) - margin, p.max(axis=0) + margin], axis=1)


def train_joint_deepsets(cfg: JointRunConfig, table, scan, events_dir: Path, tracker, progress, stage):
    """Deep Sets in every coefficient of ``cfg`` (module docstring); returns the network and its histories."""
    import torch

    from kernels import likelihood, sampler
    from kernels.pool import mixture_density
    from models.deepsets_joint import JointDeepSets, summary_moments, synthetic_pooled
    from models.deepsets_score import pooled_vectors, pretrain_phi, train_rho
    from models.event_ratio import ratio_scores
    from models.training import TrainConfig, seed_everything
    from orchestrator.track.epochs import EpochLogger

    dc = cfg.models.deepsets
    ev, n_points = scan_events(events_dir, dc.train_events, cfg.seed)
    points = np.asarray(scan.points, dtype=np.float64)
    scores = ratio_scores(likelihood.project(table, ev.astype(np.float64)), points).reshape(ev.shape[0], -1)
    seed_everything(cfg.seed)
    net = JointDeepSets(table.n_shifts, points, hidden=dc.hidden, phi_layers=dc.phi_layers, rho_hidden=dc.rho_hidden,
                        rho_layers=dc.rho_layers)
    n_val = max(1, int(dc.val_fraction * ev.shape[0]))

    def config(t, loss):
        return TrainConfig(loss=loss, lr=t.lr, batch_size=t.batch_size, epochs=t.epochs, patience=0,
                           weight_decay=t.weight_decay, seed=cfg.seed, device=cfg.device)

    stage(f"deepsets: phi on {ev.shape[0] - n_val:,} events of the scan's {n_points} points, their exact scores "
          f"at the {len(points)} points")
    with progress("train deepsets phi", dc.phi_train.epochs, "epochs") as adv:
        phi_hist = pretrain_phi(net, ev[n_val:], scores[n_val:], ev[:n_val], scores[:n_val],
                                config(dc.phi_train, "mse"), on_epoch=EpochLogger(tracker, adv, prefix="phi_"))
    net.to("cpu")
    per_point = dc.moment_events // len(points)
    stage(f"deepsets: the summary's moments over {per_point * len(points):,} fresh events at the scan's points, "
          "reweighted to any shift")
    gamma = likelihood.normalisation(table)
    parts = []
    with progress("deepsets moments", len(points), "points") as adv:
        for k, c in enumerate(points):  # the pool's density: equal parts of every point
            pool = sampler.sample_array(table, c, per_point, (cfg.seed, MOMENT_STREAM, k)).T.astype(np.float32)
            proj = likelihood.project(table, pool.astype(np.float64))
            parts.append(summary_moments(net, pool, proj / mixture_density(proj, gamma, points)[:, None]))
            if adv:
                adv(1)
    moments = tuple(np.mean([p[i] for p in parts], axis=0) for i in range(3))
    rng = np.random.default_rng([cfg.seed, RHO_STREAM])
    box = rho_box(np.concatenate([points, np.asarray(cfg.evaluation_design().points)]), dc.rho_margin)

    def draw(k):
        return rng.uniform(box[:, 0], box[:, 1], (k, table.n_shifts)), rho_sizes(cfg.evaluation.events_per_set, k, rng)

    shifts, sizes = draw(dc.rho_sets)
    pooled = synthetic_pooled(moments, shifts, sizes, cfg.seed)
    val_shifts, val_sizes = draw(dc.rho_val_sets)
    stage(f"deepsets: {dc.rho_sets:,} synthetic sets for rho, {dc.rho_val_sets:,} simulated ones to validate it, "
          f"{sizes.min():,} to {sizes.max():,} events over the box {np.round(box, 2).tolist()}")

    def sets(adv):
        for k in range(dc.rho_val_sets):
            x = sampler.sample_array(table, val_shifts[k], int(val_sizes[k]), (cfg.seed, RHO_STREAM, k)).T
            yield x[None], val_shifts[k][None]
            if adv:
                adv(1)

    with progress("deepsets validation sets", dc.rho_val_sets, "sets") as adv:
        val_pooled, val_labels = pooled_vectors(net, sets(adv))
    with progress("train deepsets rho", dc.rho_train.epochs, "epochs") as adv:
        rho_hist = train_rho(net, pooled, torch.from_numpy(shifts).float(), val_pooled, val_labels,
                             config(dc.rho_train, "mvn_nll"), on_epoch=EpochLogger(tracker, adv, prefix="rho_"))
    net.to("cpu")
    if dc.refine:  # the estimates refined by the summary's own fit on the same moments
        net.set_moments(moments, box)
    return net, {"phi": phi_hist, "rho": rho_hist}
