"""Training of the event posterior with the simulator's joint score (``head: score``).

The network :class:`models.event_posterior.EventLikelihoodNet` models
``p(x|d) / p(x|d_ref)`` as a quadratic in d, regressed on the exact joint score
of fresh simulated events (:func:`kernels.joint.sample_joint`: delta C9 drawn
continuously over ``train_range``, wider than the evaluation range, so nothing
is truncated at its ends). Its normalisation Z(d) is then fixed exactly on an
independent reference sample (:meth:`~models.event_posterior.EventLikelihoodNet.calibrate`,
with the joint quadratics as control variate), never learned. The events are
fresh MC from their own seed streams (:func:`kernels.joint.joint_seed`), apart
from the stored pools and from the test MC.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def widened_range(given, grid, evaluation, margin: float) -> tuple[float, float]:
    """``given`` (a config's range) if set, else the scan and evaluation range widened by ``margin`` on each side.

    >>> widened_range(None, [-2.0, 1.1], [-2.0, 1.0], 0.5)
    (-2.5, 1.6)
    """
    if given is not None:
        return tuple(map(float, given))
    values = [*grid, *evaluation]
    return float(min(values)) - margin, float(max(values)) + margin


def train_range(section, grid, evaluation) -> tuple[float, float]:
    """The section's ``train_range``, else the scan and evaluation range widened by 1 on each side.

    >>> train_range(type("S", (), {"train_range": None})(), [-2.0, 1.1], [-2.0, 1.0])
    (-3.0, 2.1)
    """
    return widened_range(section.train_range, grid, evaluation, 1.0)


def train_event_posterior(cfg, table, det, level: str, train_config, on_epoch, progress):
    """Train and calibrate the score-regression event posterior of ``cfg.models.event_classifier``.

    Returns ``(net, history)``; the calibration's slope error is logged in the history.
    """
    from kernels import joint
    from models.data import EventDataset
    from models.event_posterior import EventLikelihoodNet
    from models.training import seed_everything, train

    cc = cfg.models.event_classifier
    span = train_range(cc, cfg.scan.dc9, cfg.evaluation.dc9)
    gamma = joint.normalisation(table, joint.true_efficiency(level, table.windows, det))
    n_train = cc.train_events
    tr = joint.sample_joint(table, span, n_train, joint.joint_seed(cfg.seed, 0), level, det, gamma)
    va = joint.sample_joint(table, span, max(10_000, n_train // 10), joint.joint_seed(cfg.seed, 1), level, det, gamma)
    seed_everything(cfg.seed)
    net = EventLikelihoodNet(hidden=cc.hidden, layers=cc.layers, train_range=span)
    net.fit_features(tr.events).set_normalisation(gamma)
    with progress("train event posterior", train_config.epochs, "epochs") as adv:
        hist = train(net, EventDataset.from_joint(tr.events, tr.shifts, tr.score),
                     EventDataset.from_joint(va.events, va.shifts, va.score), train_config, on_epoch=on_epoch(adv))
    ref = joint.reference_sample(table, cc.reference_events, joint.joint_seed(cfg.seed, 2), level, det, norm=gamma)
    net.calibrate(ref.events, control=ref.control, control_mean=ref.control_mean)
    log.info("event posterior: trained on %d events with d in %s, Z(d) calibrated on %d reference events",
             n_train, span, cc.reference_events)
    return net, hist


def train_nuisance_posterior(cfg, ntable, base, det, level: str, train_config, on_epoch, progress):
    """Train and calibrate the u-slopes of the event posterior (:class:`models.nuisance_posterior.NuisanceScoreNet`)
    beside the trained ``base`` (frozen): score regression in the whitened nuisances of ``ntable`` (the 19 form
    factors, and with an amplitude table the power corrections) at u = 0 on fresh joint MC over the base's
    training range. Returns ``(net, history)``."""
    import numpy as np

    from kernels import joint, joint_nuisance
    from models.data import EventDataset
    from models.nuisance_posterior import NuisanceScoreNet
    from models.training import seed_everything, train

    cc = cfg.models.event_classifier
    table = ntable.at(np.zeros(ntable.n_nuisances))
    span = tuple(base.hparams["train_range"])
    eff = joint.true_efficiency(level, table.windows, det)
    gamma = joint.normalisation(table, eff)
    lin_norm = joint.normalisation(joint_nuisance.nuisance_linear_table(ntable), eff)

    def data(n: int, stream: int) -> EventDataset:
        s = joint.sample_joint(table, span, n, joint.joint_seed(cfg.seed, stream), level, det, gamma)
        scores = np.empty((n, ntable.n_nuisances), dtype=np.float32)
        for a in range(0, n, 1 << 17):  # the linear tables' projections, a chunk at a time
            b = slice(a, a + (1 << 17))
            scores[b] = joint_nuisance.nuisance_scores(ntable, s.truth[b], s.shifts[b], lin_norm, s.is_signal[b])
        return EventDataset.from_joint(s.events, s.shifts, scores)

    n_train = cc.train_events
    tr, va = data(n_train, 3), data(max(10_000, n_train // 10), 4)
    seed_everything(cfg.seed + 1)
    net = NuisanceScoreNet(base, ntable.n_nuisances, hidden=cc.hidden, layers=cc.layers)
    net.set_normalisation(joint_nuisance.normalisation_slopes(lin_norm, base.d_ref))
    with progress("train event posterior (form factors)", train_config.epochs, "epochs") as adv:
        hist = train(net, tr, va, train_config, on_epoch=on_epoch(adv))
    # all of the section's reference events, streamed: the sets' fit needs Z's u-slopes to about 1e-5
    # (models.nuisance_posterior.NuisanceScoreNet.calibrate); 300,000 left det_bkg24k-ff biased by ~1 sigma
    chunks = joint_nuisance.nuisance_reference_chunks(ntable, cc.reference_events, joint.joint_seed(cfg.seed, 5), level, det,
                                             base.d_ref, lin_norm)
    with progress("calibrate event posterior (form factors)", cc.reference_events, "events") as adv:
        err = net.calibrate(_advancing(chunks, adv))
    hist["zeta_max_standard_error"] = float(np.max(err))
    log.info("event posterior (form factors): u-slopes trained on %d events, Z's calibrated on %d reference events "
             "(largest standard error %.2e)", n_train, cc.reference_events, float(np.max(err)))
    return net, hist


def _advancing(chunks, advance):
    """``chunks`` passed through, ``advance(n)`` with each chunk's events (a progress bar's)."""
    for part in chunks:
        yield part
        if advance:
            advance(part.events.shape[0])
