r"""Benchmark: the score-trained event likelihood net against the ML fit, at the generator level, 24k-event sets.

Run it as a script (it prints figures; nothing is asserted, timings included)::

    .venv/bin/python tests/benchmarks/event_posterior_toy.py            # ~5-10 min on one core

1. training: :func:`kernels.joint.sample_joint` draws events with delta C9 uniform on
   ``--train-range`` (default [-3, 2]) in the 1.1-6 GeV^2 window, each with its exact joint
   score; an :class:`models.event_posterior.EventLikelihoodNet` regresses its score on it
   (squared loss), with Z(d) from the tables;
2. calibration: Z(d) is then fixed by the reference mean of q over ``--reference`` events at
   d = 0 (:func:`kernels.joint.reference_sample`, the joint quadratics as control variate);
3. evaluation: ``--sets`` independent sets of 24,000 events at each point (seeds
   :func:`kernels.bootstrap.test_set_seed`, fresh MC), the posterior mean and width of the net
   (:class:`models.estimators.EventPosteriorEstimator`) and the ML fit with HESSE errors
   (:func:`kernels.likelihood.fit_sets`) on the same sets. Per point: bias / sigma_CRB
   (+- its standard error), sigma / sigma_CRB, mean width / sigma_CRB, and the coverage of the
   +-1 and +-1.96 width intervals (+- binomial error); the paired mean difference net - ML
   (a much sharper measure of the net's own bias); and the asymptotic bias predicted from
   ``E_d[t_net(x, d) - t(x, d)]`` on ``--check-events`` fresh events (a set's score error
   moves its estimate by that / I(d)).

``--extra`` points (default 2.5, outside the training range) get ``--extra-sets`` sets: the
set likelihood is defined beyond the training range, nothing truncates it. ``--level det`` or
``det_bkg`` runs the same at detector level (default :class:`kernels.detector.DetectorConfig`;
the ML fit there neglects the resolution, the net does not).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _coverage(values, widths, truth, z):
    hit = np.abs(values - truth) <= z * widths
    p = hit.mean()
    return p, np.sqrt(max(p * (1 - p), 1.0 / len(hit)) / len(hit))


def _row(values, widths, truth, crb):
    n = len(values)
    bias = values.mean() - truth
    sd = values.std(ddof=1)
    c68, e68 = _coverage(values, widths, truth, 1.0)
    c95, e95 = _coverage(values, widths, truth, 1.959964)
    return (f"{bias / crb:+6.3f}+-{sd / np.sqrt(n) / crb:5.3f}  {sd / crb:5.3f}  {np.mean(widths) / crb:5.3f}  "
            f"{c68:4.2f}+-{e68:4.2f}  {c95:4.2f}+-{e95:4.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-events", type=int, default=1_000_000)
    ap.add_argument("--train-range", type=float, nargs=2, default=(-3.0, 2.0))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--reference", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=24_000)
    ap.add_argument("--sets", type=int, default=100)
    ap.add_argument("--points", type=float, nargs="+", default=(-2.0, -1.0, 0.0, 1.0))
    ap.add_argument("--extra", type=float, nargs="*", default=(2.5,))
    ap.add_argument("--extra-sets", type=int, default=20)
    ap.add_argument("--check-events", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--level", choices=("gen", "det", "det_bkg"), default="gen")
    args = ap.parse_args(argv)

    import torch

    from kernels import detector, joint, likelihood, theory
    from kernels.bootstrap import test_sets
    from models.data import EventDataset
    from models.estimators import EventPosteriorEstimator
    from models.event_posterior import EventLikelihoodNet
    from models.training import TrainConfig, seed_everything, train

    torch.set_num_threads(1)
    clock = {}
    t0 = time.perf_counter()
    table = theory.jtable(["C9_bsmumu"], [(1.1, 6.0)])
    level, det = args.level, detector.DetectorConfig()
    pdf = det.pdf_model(level, table.windows)  # the ML fit's and the bound's pdf
    gamma = joint.normalisation(table, joint.true_efficiency(level, table.windows, det))
    tr = joint.sample_joint(table, args.train_range, args.train_events, joint.joint_seed(args.seed, 0), level, det, gamma)
    va = joint.sample_joint(table, args.train_range, max(10_000, args.train_events // 10), joint.joint_seed(args.seed, 1),
                            level, det, gamma)
    clock["training data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    seed_everything(args.seed)
    net = EventLikelihoodNet(hidden=args.hidden, layers=args.layers, train_range=tuple(args.train_range))
    net.fit_features(tr.events).set_normalisation(gamma)
    cfg = TrainConfig(lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, loss="mse", scheduler="cosine",
                      weight_decay=0.0, patience=0, seed=args.seed, device="cpu")
    hist = train(net, EventDataset.from_joint(tr.events, tr.shifts, tr.score),
                 EventDataset.from_joint(va.events, va.shifts, va.score), cfg)
    clock["training"] = time.perf_counter() - t0
    print(f"training: {args.train_events} events, d ~ U{tuple(args.train_range)}, {args.epochs} epochs; "
          f"val MSE {hist['val_loss'][-1]:.3g} = {hist['val_loss'][-1] / va.score.var():.4f} x Var(t)")

    t0 = time.perf_counter()
    ref = joint.reference_sample(table, args.reference, joint.joint_seed(args.seed, 2), level, det, norm=gamma)
    cal = net.calibrate(ref.events, control=ref.control, control_mean=ref.control_mean)
    clock["calibration"] = time.perf_counter() - t0
    z_table = gamma / gamma[0]
    print(f"calibrated Z(d) = 1 + c1 d + c2 d^2 on {cal.n_events} reference events: c1 = {cal.coef[1]:.6f} "
          f"+- {np.sqrt(cal.cov[0, 0]):.1e}, c2 = {cal.coef[2]:.6f} +- {np.sqrt(cal.cov[1, 1]):.1e} "
          f"(true model: {z_table[1]:.6f}, {z_table[2]:.6f})")

    est = EventPosteriorEstimator(net, batch_size=4)
    points = [(d, args.sets) for d in args.points] + [(d, args.extra_sets) for d in args.extra]
    print(f"\nN = {args.events} events per set, level {level}, q2 in [1.1, 6.0] GeV^2, "
          f"net trained on d in {tuple(args.train_range)}, flat prior on {net.prior_range}")
    print("   d  sets  s_CRB | net bias/s_CRB  s/s_CRB  <w>/s_CRB  cov68      cov95     "
          "| ML  bias/s_CRB  s/s_CRB  <w>/s_CRB  cov68      cov95     | (net-ML)/s_CRB | "
          "asymptotic bias/s_CRB, calibration slope error/s_CRB", flush=True)
    clock["test MC"] = clock["net"] = clock["ML fit"] = clock["score check"] = 0.0
    for i, (d, n_sets) in enumerate(points):
        t0 = time.perf_counter()
        sets = test_sets(table, [d], args.events, n_sets, args.seed, level, det, point=100 + i).events
        crb = likelihood.sigma_crb(table, [d], args.events, pdf)
        fisher = likelihood.fisher_information(table, [d], pdf)[0, 0]
        clock["test MC"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        nn_val, nn_err = est.predict(sets)
        clock["net"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        fit = likelihood.fit_sets(table, sets, pdf)
        clock["ML fit"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        chk = detector.sample_level_truth(table, [d], args.check_events, joint.joint_seed(args.seed, 10 + i), level, det)
        with torch.no_grad():
            x = chk.events.T
            chunks = [torch.from_numpy(np.ascontiguousarray(x[a : a + (1 << 18)])) for a in range(0, len(x), 1 << 18)]
            s_net = torch.cat([net(c, torch.full((len(c),), d)) for c in chunks]).double().numpy()
        # E_d[t(z; d)] = 0 for the joint score too, so this is E_d[t_net], the bias's driver
        diff = s_net - joint.joint_score(table, chk.truth.T, d, gamma, chk.is_signal)
        scale = np.sqrt(args.events / fisher)  # a mean score error e moves the estimate by e / I = e * scale sigma_CRB
        clock["score check"] += time.perf_counter() - t0
        paired = nn_val - fit.values
        print(
            f"{d:+5.2f} {n_sets:4d} {crb:6.4f} | net {_row(nn_val, nn_err, d, crb)} | "
            f"ML {_row(fit.values, fit.errors, d, crb)} | net-ML {paired.mean() / crb:+6.3f}+-{paired.std(ddof=1) / np.sqrt(n_sets) / crb:5.3f} | "
            f"asym {diff.mean() * scale:+6.3f}+-{diff.std() / np.sqrt(diff.size) * scale:5.3f} "
            f"cal {net.slope_error(d) * scale:5.3f}"
            + ("" if fit.valid.all() else f" ({int((~fit.valid).sum())} ML fits invalid)"),
            flush=True,
        )
    print("\nseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in clock.items()))


if __name__ == "__main__":
    main()
