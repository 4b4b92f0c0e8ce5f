"""A trained joint ResNet's estimates, rho's against the summary's own fit on its emulator, on the same test sets.

    .venv/bin/python tests/benchmarks/resnet_summary_fit.py --model OUT/tracking/models/resnet3d/model.pt
        [--config gen24k-c9c10] [--images 30000] [--luminosity 2000,6000,24000,70000] [--ridge 0.01]

Rebuilds the ResNet of the config's ``models.resnet3d`` from the state dict ``wcscan run`` saved, regresses the
summary's emulator (:func:`models.summary_fit.fit_emulator`) on ``--images`` images thinned from the training's
own event pool (same seed) at shifts over rho's box and sizes over the evaluation's range, as training does, then
fits the evaluation's test sets (the same seeds as ``wcscan run``: :func:`orchestrator.jobs.joint_evaluate.draw_test_sets`)
twice: with rho alone and refined by the fit. Prints per N and estimator, sigma / sigma_CRB per coefficient (mean
and max over the points), max |bias| / sigma_CRB, the largest correlation gap, the joint 68% / 95% coverage, and the
spread over the predicted width (mean). Training images only: no test set enters the emulator.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from kernels import likelihood, theory
from kernels.pool import EventPool, corners_and_centre
from models.resnet_joint import JointScoreResNet3d, set_images
from models.resnet_score import image_summaries
from models.summary_fit import fit_emulator
from orchestrator.config.run import load_config
from orchestrator.jobs.joint_evaluate import draw_test_sets
from orchestrator.jobs.joint_resnet import POOL_STREAM, pool_images
from orchestrator.jobs.joint_train import rho_box, rho_sizes

CHI2_2 = {68: 2.2789, 95: 5.9915}  # the 2D chi-square quantiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--config", default="gen24k-c9c10")
    ap.add_argument("--images", type=int, default=30_000)
    ap.add_argument("--luminosity", default="2000,6000,24000,70000")
    ap.add_argument("--ridge", type=float, default=0.01)
    a = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(a.config)
    rc = cfg.models.resnet3d
    table = theory.jtable(list(cfg.theory.coefficients), [tuple(w) for w in cfg.theory.windows])
    if table.n_shifts != 2:
        raise SystemExit("error: --config: the benchmark's coverage quantiles are two-coefficient ones")
    pts = np.asarray(cfg.scan_design().points)
    net = JointScoreResNet3d(table.n_shifts, pts, bins=rc.bins, width=rc.width, blocks=rc.blocks,
                             rho_hidden=rc.rho_hidden, rho_layers=rc.rho_layers)
    net.load_state_dict(torch.load(a.model, weights_only=True), strict=False)  # older runs hold no emulator
    net.eval()
    ev = np.asarray(cfg.evaluation_design().points)
    box = rho_box(np.concatenate([pts, ev]), rc.rho_margin)
    t0 = time.time()
    pool = EventPool(table, corners_and_centre(box), rc.pool_events, (cfg.seed, POOL_STREAM), box=box)
    rng = np.random.default_rng([cfg.seed, POOL_STREAM, 2])
    shifts = rng.uniform(box[:, 0], box[:, 1], (a.images, table.n_shifts))
    sizes = rho_sizes(cfg.evaluation.events_per_set, a.images, rng)
    raw, c = image_summaries(net, ((x, s) for x, s, _ in pool_images(pool, shifts, sizes, rc.bins, rng)))
    raw, c = raw.numpy(), c.numpy()
    del pool
    emulator = fit_emulator(raw[:, :-1], c, np.rint(np.exp(raw[:, -1])), table.rate_integral(), ridge=a.ridge)
    net.set_emulator(emulator, box)
    print(json.dumps({"emulator_images": a.images, "seconds": round(time.time() - t0, 1)}), flush=True)
    counts = [int(x) for x in a.luminosity.split(",")]
    for j, n in enumerate(cfg.evaluation.events_per_set):
        if n not in counts:
            continue
        rows = {"rho": [], "refined": []}
        for i, truth in enumerate(ev):
            images = set_images(draw_test_sets(table, None, 1.0, truth, n, cfg.evaluation.sets, cfg.seed, i, j),
                                rc.bins)
            bound = np.linalg.inv(likelihood.fisher_information(table, truth)) / n
            sb = np.sqrt(np.diag(bound))
            for name, refine in (("rho", False), ("refined", True)):
                v, cov = net.estimate(images, refine=refine)
                sp = np.cov(v.T)
                r = v - truth
                d2 = np.einsum("ni,nij,nj->n", r, np.linalg.inv(cov), r)
                rows[name].append(dict(
                    ratio=np.sqrt(np.diag(sp)) / sb, bias=np.abs(v.mean(0) - truth) / sb,
                    corr_gap=abs(sp[0, 1] / np.sqrt(sp[0, 0] * sp[1, 1]) - bound[0, 1] / np.prod(sb)),
                    c68=np.mean(d2 < CHI2_2[68]), c95=np.mean(d2 < CHI2_2[95]),
                    pull=np.sqrt(np.diag(sp)) / np.sqrt(np.einsum("nii->ni", cov)).mean(0)))
        for name, rr in rows.items():
            ratio = np.array([x["ratio"] for x in rr])
            print(json.dumps({
                "N": n, "estimator": name, "sigma_over_crb_mean": ratio.mean(0).round(3).tolist(),
                "sigma_over_crb_max": ratio.max(0).round(3).tolist(),
                "max_abs_bias_over_crb": np.max([x["bias"] for x in rr], axis=0).round(3).tolist(),
                "max_corr_gap": round(float(max(x["corr_gap"] for x in rr)), 3),
                "coverage_68": round(float(np.mean([x["c68"] for x in rr])), 3),
                "coverage_95": round(float(np.mean([x["c95"] for x in rr])), 3),
                "spread_over_predicted": np.mean([x["pull"] for x in rr], axis=0).round(3).tolist()}), flush=True)


if __name__ == "__main__":
    main()
