r"""Which of flavio's power corrections widen the bound on delta C9, and by how much.

Run it as a script (it prints a table; nothing is asserted)::

    .venv/bin/python tests/benchmarks/power_corrections.py             # seconds once the tables are cached
    .venv/bin/python tests/benchmarks/power_corrections.py --events 6000 --high-q2

From the amplitude tables of :mod:`kernels.amplitudes` (delta C9, flavio's 19 BSZ form factors and
its power corrections; built, or loaded from ``$WCSCAN_CACHE``, as ``wcscan bounds
--power-corrections`` builds them) and the per-event Fisher matrix at delta C9 = 0 and the prior's
centre, for sets of ``--events``: sigma_CRB with everything fixed, with the form factors profiled,
with the form factors and each power correction alone profiled, with the form factors and all but
that one, and with all of them. Each correction's flavio prior width is printed beside it.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=24_000, help="events per set in the windows")
    parser.add_argument("--high-q2", action="store_true", help="the windows [1.1, 6.0] + [15.0, 19.0]")
    parser.add_argument("--level", default="gen", choices=["gen", "det", "det_bkg"])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    from kernels import likelihood
    from kernels.amplitudes import amplitude_table
    from kernels.detector import DetectorConfig

    windows = ((1.1, 6.0), (15.0, 19.0)) if args.high_q2 else ((1.1, 6.0),)
    table = amplitude_table(["C9_bsmumu"], windows, "bsz", workers=2)
    model = DetectorConfig().pdf_model(args.level, table.windows)
    I = likelihood.fisher_information_nuisances(table, [0.0], model=model)
    nf, n = table.n_form_factors, table.n_nuisances

    def bound(profiled) -> float:
        keep = np.r_[0, 1 + np.asarray(sorted(profiled), dtype=int)]
        return float(likelihood.efficient_bound(I[np.ix_(keep, keep)], 1, args.events, np.eye(len(keep) - 1))[0][0])

    ff, pcs = list(range(nf)), list(range(nf, n))
    rows = []
    for k in pcs:
        rows.append({"parameter": table.prior.names[k], "prior_sd": float(np.sqrt(table.prior.cov[k, k])),
                     "sigma_ff_and_this": bound(ff + [k]), "sigma_all_but_this": bound(ff + [j for j in pcs if j != k])})
    out = {"events": args.events, "windows": [list(w) for w in windows], "level": args.level,
           "sigma_fixed": bound([]), "sigma_ff": bound(ff), "sigma_all": bound(ff + pcs), "parameters": rows}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"sigma_CRB(dC9), {args.events:,} events in {windows}, level {args.level}: everything fixed "
          f"{out['sigma_fixed']:.4f}; form factors profiled {out['sigma_ff']:.4f}; with every power correction "
          f"{out['sigma_all']:.4f}")
    print(f"{'power correction':32s} {'prior sd':>9s} {'ff + this':>10s} {'all but this':>13s}")
    for r in sorted(rows, key=lambda r: -r["sigma_ff_and_this"]):
        print(f"{r['parameter']:32s} {r['prior_sd']:9.3g} {r['sigma_ff_and_this']:10.4f} {r['sigma_all_but_this']:13.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
