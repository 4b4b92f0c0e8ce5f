"""Benchmarks behind ``wcscan bench``: medians of repeated timings, on one core.

Each returns a flat dict that the CLI prints as JSON (``--json``) or a table.
Timings are single-process and single-threaded (BLAS pools limited to one
thread), so "per core" means what it says. Set-up (flavio tables, the sampler's
envelope) is done once before timing: it is paid once per scan point, not per
event.
"""

from __future__ import annotations

import platform

import numpy as np

from orchestrator.bench.timing import median_time, one_thread, seconds
from orchestrator.evaluate.bounds import LUMINOSITY_EVENTS


def bench_generate(events: int = 1_000_000, repeats: int = 5, dc9: float = 0.0) -> dict:
    """Generator-level events/s per core: ours against the textbook uniform-proposal sampler, and ours at two
    coefficients (delta C9 and delta C10 = 0.3, the table over both).

    The three are timed alternately in the same process, on the same shifts and event count.
    """
    from kernels import sampler, theory

    table = theory.jtable(["C9_bsmumu"])
    joint = theory.jtable(["C9_bsmumu", "C10_bsmumu"])  # two coefficients: (dc9, dc10 = 0.3)
    sampler.compiled(table, [dc9])  # envelope set-up, once per scan point
    sampler.compiled(joint, [dc9, 0.3])
    ours, base, two = [], [], []
    with one_thread():
        sampler.sample_array(table, [dc9], 10_000, (0,))  # warm-up
        sampler.sample_uniform_baseline(table, [dc9], 10_000, (0,))
        sampler.sample_array(joint, [dc9, 0.3], 10_000, (0,))
        for r in range(repeats):  # alternate them so that machine drifts hit all alike
            seed = (1, r)
            ours.append(seconds(lambda s=seed: sampler.sample_array(table, [dc9], events, s)))
            base.append(seconds(lambda s=seed: sampler.sample_uniform_baseline(table, [dc9], events, s)))
            two.append(seconds(lambda s=seed: sampler.sample_array(joint, [dc9, 0.3], events, s)))
    t_ours, t_base, t_two = float(np.median(ours)), float(np.median(base)), float(np.median(two))
    return {
        "benchmark": "generate",
        "events": events,
        "repeats": repeats,
        "dc9": dc9,
        "q2_window": list(table.windows[0]),
        "ours_seconds_median": t_ours,
        "baseline_seconds_median": t_base,
        "ours_events_per_s_per_core": events / t_ours,
        "baseline_events_per_s_per_core": events / t_base,
        "ratio": t_base / t_ours,
        "c9_c10_events_per_s_per_core": events / t_two,
        "c9_c10_over_c9_rate": t_ours / t_two,
        "machine": platform.processor() or platform.machine(),
    }


def bench_fit(events_per_set: int = 24_000, sets: int = 60, repeats: int = 3, dc9: float = 0.0,
              nuisances: str = "none", prior_scale: float = 1.0) -> dict:
    """ML fits per second per core on sets of ``events_per_set`` (projection + MIGRAD + HESSE); without
    nuisances, the joint fit of (delta C9, delta C10) too, on sets drawn at (dc9, 0.3).

    ``nuisances="bsz"``: the sets are drawn each in its own world from flavio's form-factor prior, and
    the profiled fit (delta C9 and the 19 form factors, :func:`kernels.profile.fit_sets_profiled`) is
    timed beside the fixed-theory fit on the same sets, alternately, with its spread against
    sigma_CRB,eff. The bi-quadratic tables (cached) are built before any timing.
    """
    from kernels import likelihood, sampler, theory

    table = theory.jtable(["C9_bsmumu"])
    if nuisances not in ("none", "bsz", "bsz+pc"):
        from kernels.errors import ConfigError

        raise ConfigError(f"--nuisances must be none, bsz or bsz+pc, got {nuisances!r}")
    if nuisances == "none":
        arr = sampler.sample_array(table, [dc9], events_per_set * sets, (2,)).T.reshape(sets, events_per_set, 4)
    else:
        from kernels import nuisances as nuis
        from kernels import profile

        ff_table = nuis.nuisance_table(["C9_bsmumu"], workers=2)
        if nuisances == "bsz":
            ntable, norm = ff_table, likelihood.normalisation(ff_table.flat)
        else:
            from kernels.amplitudes import amplitude_table

            ntable = amplitude_table(["C9_bsmumu"], workers=2)
            norm = profile.node_normalisation(ntable)
        worlds = nuis.draw_worlds(sets, ntable.n_nuisances, prior_scale, seed=2, point=0)
        arr = np.stack([sampler.sample_array(ntable.at(u), [dc9], events_per_set, (2, k)).T for k, u in enumerate(worlds)])
    with one_thread():
        likelihood.fit_sets(table, arr[:2])  # warm-up (imports iminuit)
        if nuisances == "none":
            t = median_time(lambda: likelihood.fit_sets(table, arr), repeats)
        else:
            fixed, prof = [], []
            for _ in range(repeats):  # alternate the two so that machine drifts hit both alike
                fixed.append(seconds(lambda: likelihood.fit_sets(table, arr)))
                prof.append(seconds(lambda: profile.fit_sets_profiled(ntable, arr, prior_scale=prior_scale, norm=norm)))
            t, t_prof = float(np.median(fixed)), float(np.median(prof))
        res = likelihood.fit_sets(table, arr)
        if nuisances == "none":  # the joint fit of (delta C9, delta C10) on sets drawn at (dc9, 0.3), beside it
            joint = theory.jtable(["C9_bsmumu", "C10_bsmumu"])
            arr2 = sampler.sample_array(joint, [dc9, 0.3], events_per_set * sets, (3,)).T.reshape(sets, events_per_set, 4)
            likelihood.fit_sets(joint, arr2[:2])
            t_joint = median_time(lambda: likelihood.fit_sets(joint, arr2), repeats)
    out = {
        "benchmark": "fit",
        "events_per_set": events_per_set,
        "sets": sets,
        "repeats": repeats,
        "dc9": dc9,
        "seconds_median": t,
        "sets_per_s_per_core": sets / t,
        "fits_valid_fraction": float(np.mean(res.valid)),
        "machine": platform.processor() or platform.machine(),
    }
    if nuisances == "none":
        out.update(joint_c9_c10_sets_per_s_per_core=sets / t_joint, joint_over_single_time=t_joint / t)
    if nuisances != "none":
        pr = profile.fit_sets_profiled(ntable, arr, prior_scale=prior_scale, norm=norm)
        I = likelihood.fisher_information_nuisances(ntable, [dc9])
        eff = float(likelihood.efficient_bound(I, 1, events_per_set, np.eye(ntable.n_nuisances) / prior_scale**2)[0][0])
        fix = float(likelihood.sigma_crb(table, [dc9], events_per_set))
        out.update({
            "nuisances": nuisances,
            "prior_scale": prior_scale,
            "profiled_seconds_median": t_prof,
            "profiled_sets_per_s_per_core": sets / t_prof,
            "profiled_over_fixed_time": t_prof / t,
            "profiled_valid_fraction": float(np.mean(pr.valid)),
            "profiled_median_iterations": float(np.median(pr.iterations)),
            "sigma_crb_fixed": fix,
            "sigma_crb_eff": eff,
            "profiled_sigma_over_crb_eff": float(np.std(pr.values, ddof=1)) / eff,
            "profiled_median_error_over_crb_eff": float(np.nanmedian(pr.errors)) / eff,
            "fixed_fit_sigma_over_crb_eff": float(np.std(np.asarray(res.values), ddof=1)) / eff,
            "fixed_fit_coverage_68": float(np.mean(np.abs(np.asarray(res.values) - dc9) <= np.asarray(res.errors))),
            "profiled_coverage_68": float(np.mean(np.abs(pr.values - dc9) <= pr.errors)),
        })
        if nuisances == "bsz+pc":  # the form factors alone profiled, on the same sets: what ignoring the corrections costs
            ff = profile.fit_sets_profiled(ff_table, arr, prior_scale=prior_scale)
            out.update({
                "sigma_crb_eff_form_factors_only": float(likelihood.efficient_bound(
                    I[:1 + ntable.n_form_factors, :1 + ntable.n_form_factors], 1, events_per_set,
                    np.eye(ntable.n_form_factors) / prior_scale**2)[0][0]),
                "form_factor_fit_sigma_over_crb_eff": float(np.std(ff.values, ddof=1)) / eff,
                "form_factor_fit_median_error_over_crb_eff": float(np.nanmedian(ff.errors)) / eff,
                "form_factor_fit_coverage_68": float(np.mean(np.abs(ff.values - dc9) <= ff.errors)),
            })
        for n in LUMINOSITY_EVENTS:  # the bounds at the seeds' luminosities (about 100 events per ab^-1)
            b_fix = float(likelihood.sigma_crb(table, [dc9], n))
            b_eff = float(likelihood.efficient_bound(I, 1, n, np.eye(ntable.n_nuisances) / prior_scale**2)[0][0])
            out.update({f"sigma_crb_fixed_{n}": b_fix, f"sigma_crb_eff_{n}": b_eff, f"eff_over_fixed_{n}": b_eff / b_fix})
    return out


def bench_resnet(depth: int = 34, bins: int = 50, batch: int = 32, steps: int = 10, repeats: int = 3,
                 amp: bool = True, device: str | None = None, width: int = 64) -> dict:
    """ResNet training throughput (images/s, forward + backward + AdamW step): the median of ``repeats`` timings
    of ``steps`` steps each, after warm-up (:func:`models.bench.resnet_throughput`). The seed study's network is
    the default: ResNet-34 of width 64 on 50^3 images, batch 32, AMP (on CUDA). On a CPU use e.g.
    ``depth=10, bins=16, width=16``. Uses the torch threads it is given (not one core)."""
    from models.bench import resnet_throughput

    runs = [resnet_throughput(depth=depth, bins=bins, batch=batch, steps=steps, amp=amp, device=device,
                              width=width, warmup=3 if i == 0 else 1) for i in range(repeats)]
    rates = [r["images_per_s"] for r in runs]
    out = {k: v for k, v in runs[0].items() if k not in ("images_per_s", "seconds", "step_ms", "images")}
    out.update(images_per_s_median=float(np.median(rates)), images_per_s_runs=rates,
               step_ms_median=float(np.median([r["step_ms"] for r in runs])), repeats=repeats,
               peak_memory_gb=max((r["peak_memory_gb"] or 0.0) for r in runs) or None)
    return out
