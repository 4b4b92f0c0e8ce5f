"""The learned per-event ratio in (delta C9, delta C10) against the joint ML fit and the Fisher bound.

    .venv/bin/python tests/benchmarks/joint_event_ratio.py [--level gen|det] [--train 2000000] [--epochs 12]
        [--sets 100] [--events 24000] [--dc9 -2:1:3] [--dc10 -1:1:3] [--luminosity 2000,6000,24000,70000]

Trains :class:`models.event_ratio.EventRatio` on events drawn at the Standard Model (its targets: each
event's exact monomial coefficients from its true kinematics), calibrates its normaliser on other SM
events (at generator level with their exact coefficients as a control variate, and, side by side in the
column ``(plain-f)``, without it), then at every point of the grid draws ``--sets`` independent sets of ``--events`` events and fits
each twice on the same sets: with the learned likelihood and with the exact one (the joint ML fit). Prints,
per point and coefficient, sigma / sigma_CRB (the marginal bound, the other coefficient free), |bias| /
sigma_CRB and the ratio of the two fits' spreads; per point the estimates' correlation against the bound's
and the joint 68% / 95% coverage of each set's own ellipse. ``--luminosity``: the same trained model at the
grid's centre at each N. One model serves every point and every N.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from kernels import likelihood, metrics, theory
from kernels.detector import DetectorConfig, sample_level_truth
from models.event_ratio import EventRatio, fit_sets_learned, log_ratio_targets, ratio_targets
from models.training import TrainConfig, train
from orchestrator.config.grammar import parse_counts, parse_dc9


def _draw(table, c, n, seed, level, det):
    s = sample_level_truth(table, list(c), n, seed, level, det)
    return s.events.T, s.truth.T


def _row(values, covs, truth, bound, n, shifts):
    return metrics.joint_point_metrics(values, covs, truth=truth, crb_covariance=bound, n_events=n, shifts=shifts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--level", choices=("gen", "det"), default="gen")
    ap.add_argument("--train", type=int, default=2_000_000)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--sets", type=int, default=100)
    ap.add_argument("--events", type=int, default=24_000)
    ap.add_argument("--dc9", default="-2:1:3")
    ap.add_argument("--dc10", default="-1:1:3")
    ap.add_argument("--mixture", action="store_true",
                    help="gen only: draw the training events from the grid's points, not the SM alone (the targets "
                         "are a deterministic function of the event there, so any sampling is right; this one "
                         "covers where the far points put their events)")
    ap.add_argument("--log-loss", action="store_true",
                    help="regress ln q at the grid's points instead of q's coefficients (exact at gen level)")
    ap.add_argument("--no-control-variate", action="store_true",
                    help="calibrate Z by the plain mean over the reference events (at gen level the default is "
                         "their exact coefficients as a control variate)")
    ap.add_argument("--luminosity", default="", help="N,N,...: the same model at the grid's centre at each N")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    table = theory.jtable(["C9_bsmumu", "C10_bsmumu"])
    shifts = table.shift_columns
    det = DetectorConfig()
    model_pdf = det.pdf_model(a.level, table.windows)
    t0 = time.perf_counter()
    grid = [(u, v) for u in parse_dc9(a.dc9) for v in parse_dc9(a.dc10)]
    if a.mixture and a.level != "gen":
        raise SystemExit("--mixture needs --level gen (at detector level the targets' conditional mean is under the SM)")
    where = grid if a.mixture else [(0.0, 0.0)]
    parts = [_draw(table, c, a.train // len(where), (31, i), a.level, det) for i, c in enumerate(where)]
    order = np.random.default_rng(31).permutation(sum(p[0].shape[0] for p in parts))
    ev = np.concatenate([p[0] for p in parts])[order]
    truth = np.concatenate([p[1] for p in parts])[order]
    proj = likelihood.project(table, truth.astype(np.float64))
    targets = ratio_targets(proj)
    loss_points = [c for c in grid if any(c)] if a.log_loss else None
    net = EventRatio(2, hidden=a.hidden, layers=a.layers, loss_points=loss_points).fit_features(ev).fit_scale(targets)
    n_val = a.train // 10
    x = torch.from_numpy(np.ascontiguousarray(ev))
    y = (torch.from_numpy(log_ratio_targets(proj, loss_points)).float() if a.log_loss
         else torch.from_numpy(targets).float() / net.scale)
    data = torch.utils.data.TensorDataset
    hist = train(net, data(x[n_val:], y[n_val:]), data(x[:n_val], y[:n_val]),
                 TrainConfig(loss="mse", lr=2e-3, batch_size=4096, epochs=a.epochs, patience=0, device="cpu",
                             weight_decay=0.0))
    ref, ref_truth = _draw(table, [0.0, 0.0], 2_000_000, (32,), a.level, det)
    exact_z = likelihood.normalisation(table, model_pdf)
    z_plain = net.calibrate(ref).copy()  # the plain mean over the reference events
    cv = a.level == "gen" and not a.no_control_variate
    if cv:  # the exact mean: the generator's rate
        net.calibrate(ref, control=ratio_targets(likelihood.project(table, ref_truth.astype(np.float64))),
                      control_mean=exact_z[1:] / exact_z[0])
    z_used = net.z.clone()
    print(f"trained on {ev.shape[0]:,} events at {a.level} ({'the grid points' if a.mixture else 'the SM'}) in {time.perf_counter() - t0:.0f} s; val MSE "
          f"{hist['val_loss'][0]:.4f} -> {hist['best_val_loss']:.5f} (targets scaled to unit spread); "
          f"Z's coefficients minus the exact ones: {np.round(net.z.numpy() - exact_z / exact_z[0], 4).tolist()}")
    print(f"{a.sets} sets x {a.events} events per point; learned = the trained ratio, fit = the exact joint ML fit; "
          f"(plain-f): the same network with Z the plain mean over the reference events, without the control variate")
    print(f"{'point':>12s} {'coef':>5s} {'learned s/CRB':>13s} {'fit s/CRB':>9s} {'learned/fit':>11s} "
          f"{'|bias|/CRB':>10s} {'(l-f)/CRB':>9s} {'(plain-f)':>9s} {'corr':>6s} {'CRB corr':>8s} {'joint 68':>8s} {'joint 95':>8s}")
    summary = []
    for k, c in enumerate(grid):
        sets = _draw(table, c, a.sets * a.events, (33, k), a.level, det)[0].reshape(a.sets, a.events, 4)
        learned = fit_sets_learned(net, sets)
        if cv:  # the same network with Z the plain mean, side by side
            net.z.copy_(torch.from_numpy(z_plain))
            plain = fit_sets_learned(net, sets).values.mean(axis=0)
            net.z.copy_(z_used)
        exact = likelihood.fit_sets(table, sets, model_pdf)
        bound = np.linalg.inv(likelihood.fisher_information(table, c, model_pdf)) / a.events
        rl = _row(learned.values, learned.covariances, c, bound, a.events, shifts)
        rf = _row(exact.values, exact.covariances, c, bound, a.events, shifts)
        summary.append((rl, rf))
        for i, s in enumerate(shifts):
            tail = (f"{rl['corr_dc9_dc10']:+6.2f} {rl['corr_crb_dc9_dc10']:+8.2f} {rl['joint_coverage_68']:8.2f} "
                    f"{rl['joint_coverage_95']:8.2f}") if i == 0 else ""
            print(f"{str(tuple(round(v, 2) for v in c)):>12s} {s:>5s} {rl[f'sigma_over_crb_{s}']:13.3f} "
                  f"{rf[f'sigma_over_crb_{s}']:9.3f} {rl[f'sigma_{s}'] / rf[f'sigma_{s}']:11.3f} "
                  f"{abs(rl[f'bias_{s}']) / rl[f'sigma_crb_{s}']:10.3f} "
                  f"{(rl[f'mean_{s}'] - rf[f'mean_{s}']) / rl[f'sigma_crb_{s}']:+9.3f} "
                  + (f"{(plain[i] - rf[f'mean_{s}']) / rl[f'sigma_crb_{s}']:+9.3f} " if cv else f"{'':9s} ") + tail)
    for name, j in (("learned", 0), ("joint ML fit", 1)):
        rows = [r[j] for r in summary]
        so = {s: [r[f"sigma_over_crb_{s}"] for r in rows] for s in shifts}
        bias = max(abs(r[f"bias_{s}"]) / r[f"sigma_crb_{s}"] for r in rows for s in shifts)
        dcorr = max(abs(r["corr_dc9_dc10"] - r["corr_crb_dc9_dc10"]) for r in rows)
        j68 = [r["joint_coverage_68"] for r in rows]
        j95 = [r["joint_coverage_95"] for r in rows]
        print(f"{name}: sigma/CRB " + ", ".join(f"{s} mean {np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})"
                                                for s, v in so.items())
              + f"; max |bias|/CRB {bias:.3f}; max |corr - CRB corr| {dcorr:.3f}; joint 68% {min(j68):.2f}-"
                f"{max(j68):.2f} (mean {np.mean(j68):.3f}), 95% {min(j95):.2f}-{max(j95):.2f} (mean {np.mean(j95):.3f})")
    if a.luminosity:
        c = grid[len(grid) // 2]
        print(f"the same model at {c} against N ({a.sets} sets each)")
        print(f"{'N':>7s} {'coef':>5s} {'learned s/CRB':>13s} {'fit s/CRB':>9s} {'learned/fit':>11s} {'joint 68':>8s}")
        for j, n in enumerate(parse_counts(a.luminosity)):
            sets = _draw(table, c, a.sets * n, (34, j), a.level, det)[0].reshape(a.sets, n, 4)
            learned = fit_sets_learned(net, sets)
            exact = likelihood.fit_sets(table, sets, model_pdf)
            bound = np.linalg.inv(likelihood.fisher_information(table, c, model_pdf)) / n
            rl = _row(learned.values, learned.covariances, c, bound, n, shifts)
            rf = _row(exact.values, exact.covariances, c, bound, n, shifts)
            for i, s in enumerate(shifts):
                print(f"{n:7d} {s:>5s} {rl[f'sigma_over_crb_{s}']:13.3f} {rf[f'sigma_over_crb_{s}']:9.3f} "
                      f"{rl[f'sigma_{s}'] / rf[f'sigma_{s}']:11.3f} "
                      + (f"{rl['joint_coverage_68']:8.2f}" if i == 0 else ""))


if __name__ == "__main__":
    main()
