"""The profiled fit at detector level, with and without the q2 window edges' loss in the pdf.

    .venv/bin/python tests/benchmarks/detector_edges.py [--sets 400] [--events 24000] [--dc9 -1.114]
        [--fit profiled|fixed] [--levels det,det_bkg] [--detector sigma_q2=0.3,sigma_cos_k=0.1]

Sets drawn each in its own world from flavio's form-factor prior, at ``det`` and ``det_bkg`` with the
toy's default resolution, fitted by the profiled fit (delta C9 and the 19 form factors) under two pdfs:
the acceptance alone, and the acceptance times kappa, the chance that the q2 smearing keeps an event in
the window (:meth:`kernels.detector.DetectorConfig.window_efficiency`, what ``pdf_model`` now uses). Prints
the bias in units of the fit's spread and of its error, the pull's mean and width, the 68% coverage and
the KS p-value of the pulls. ``--fit fixed``: the fixed-theory fit on sets at the central form factors
instead; ``--detector``: settings of the detector toy (det_res24k's, for one).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import kstest, norm

from kernels import likelihood, nuisances, profile
from kernels.detector import DetectorConfig, sample_level_truth
from kernels.likelihood import PdfModel


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=400)
    ap.add_argument("--events", type=int, default=24_000)
    ap.add_argument("--dc9", type=float, default=-1.114)
    ap.add_argument("--fit", choices=("profiled", "fixed"), default="profiled")
    ap.add_argument("--levels", default="det,det_bkg")
    ap.add_argument("--detector", default="", help="KEY=VALUE,... of kernels.detector.DetectorConfig")
    a = ap.parse_args(argv)
    nt = nuisances.nuisance_table(["C9_bsmumu"], workers=2)
    det = DetectorConfig.from_dict(dict(kv.split("=") for kv in a.detector.split(",") if kv))
    worlds = nuisances.draw_worlds(a.sets, nt.n_nuisances, 1.0, seed=7, point=0)
    if a.fit == "fixed":
        worlds = 0 * worlds  # the central form factors, where the fixed-theory fit is right
    where = "each in its own world" if a.fit == "profiled" else "at the central form factors"
    print(f"{a.sets} sets of {a.events} events at dC9 = {a.dc9}, {where}; {a.fit} fit; detector {a.detector or 'default'}")
    print(f"{'level':8s} {'pdf':22s} {'bias/sd':>8s} {'pull mean':>9s} {'pull sd':>7s} {'cov68':>6s} {'KS p':>8s}")
    central = nt.at(np.zeros(nt.n_nuisances))
    for level in a.levels.split(","):
        sets = np.stack([sample_level_truth(nt.at(u), [a.dc9], a.events, (9, k), level, det).events.T
                         for k, u in enumerate(worlds)])
        edges = det.pdf_model(level, nt.windows)
        acceptance_only = PdfModel(efficiency=det.efficiency, background=edges.background, bkg_fraction=edges.bkg_fraction)
        for name, model in (("acceptance only", acceptance_only), ("acceptance x edges", edges)):
            r = (profile.fit_sets_profiled(nt, sets, model) if a.fit == "profiled"
                 else likelihood.fit_sets(central, sets, model))
            v, e = np.ravel(r.values), np.ravel(r.errors)
            pull = (v - a.dc9) / e
            print(f"{level:8s} {name:22s} {(v.mean() - a.dc9) / v.std(ddof=1):+8.3f} {pull.mean():+9.3f} "
                  f"{pull.std(ddof=1):7.3f} {np.mean(np.abs(pull) < 1):6.3f} {kstest(pull, norm.cdf).pvalue:8.2g}")


if __name__ == "__main__":
    main()
