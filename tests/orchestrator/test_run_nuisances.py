"""`wcscan run` with hadronic nuisances: test sets in prior-drawn worlds, the profiled fit, sigma_CRB,eff."""

import csv

import numpy as np
import pytest

from kernels import nuisances
from kernels.metrics import NUISANCE_COLUMNS, POINT_COLUMNS
from orchestrator.cli import main

FF = ("B->K* BSZ a0_V", "B->K* BSZ a1_T1", "B->K* BSZ a0_A1")

TINY_FF = """
name: tiny-ff
seed: 3
nuisances: {form_factors: bsz, prior_scale: 1.0, worlds: per_set}
scan: {dc9: [-1.0, 0.0], events_per_point: 2000, level: gen}
images: {bins: 4, events_per_image: 2000, images_per_point: 1}
models:
  resnet3d: {head: gaussian, summary: score, data: stream, stream_workers: 0, width: 4, blocks: 1, score_points: 3,
             score_images: 52, rho_points: 4, rho_images_per_point: 4,
             phi_train: {epochs: 1, batch_size: 8, lr: 0.003, loss: mse}, train: {epochs: 2, batch_size: 8, lr: 0.003}}
  ml_fit: {enabled: true}
  event_classifier:
    head: score
    hidden: 16
    layers: 2
    events_per_point: 1000
    train_events: 30000
    reference_events: 50000
    train: {epochs: 2, batch_size: 512, lr: 0.003, weight_decay: 0.0, patience: 2}
  deepsets:
    head: gaussian
    head_loss: gaussian_nll
    summary: score
    data: stream
    stream_workers: 0
    hidden: 8
    score_points: 4
    score_events: 20000
    rho_points: 4
    set_size: 500
    sets_per_point: 6
    profile_events: 40000
    phi_train: {epochs: 1, batch_size: 1024, lr: 0.003, loss: mse}
    train: {epochs: 2, batch_size: 16, lr: 0.003}
evaluation: {dc9: [-0.5], sets: 20, events_per_set: 2000}
"""


@pytest.fixture(scope="module")
def ff_run(tmp_path_factory, ff_tables_cache):
    """The job with three form factors instead of 19 (30 flavio calls instead of 630), the same code path."""
    tmp = tmp_path_factory.mktemp("ff")
    real = nuisances.nuisance_table
    mp = pytest.MonkeyPatch()
    mp.setattr(nuisances, "nuisance_table", lambda c, w, ff, **kw: real(c, w, FF, cache=ff_tables_cache, workers=1))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the runs go to OUT/mlflow.db (own_mlflow_store)
    cfg = tmp / "tiny-ff.yaml"
    cfg.write_text(TINY_FF)
    try:
        code = main(["run", "--config", str(cfg), "--out", str(tmp / "out"), "--workers", "0", "--quiet"])
    finally:
        mp.undo()
    return code, tmp / "out"


def _rows(out, name):
    with open(out / "evaluation" / name / "points.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_profiled_fit_is_measured_against_the_efficient_bound(ff_run):
    code, out = ff_run
    assert code == 0
    for name in ("ml_fit", "ml_fit_profiled"):
        rows = _rows(out, name)
        assert list(rows[0]) == list(POINT_COLUMNS + NUISANCE_COLUMNS)
        assert float(rows[0]["sigma_crb_eff"]) > float(rows[0]["sigma_crb"])
    prof, fixed = _rows(out, "ml_fit_profiled")[0], _rows(out, "ml_fit")[0]
    assert 0.6 < float(prof["sigma_over_crb_eff"]) < 1.5  # 20 sets: sigma known to about 16%
    assert float(prof["coverage_68"]) > float(fixed["coverage_68"])  # the naive fit's bars ignore the form factors


def test_the_event_posterior_gets_a_version_with_the_form_factors_profiled(ff_run):
    """Beside the naive event posterior (central form factors) the job trains its u-slopes and profiles each set."""
    code, out = ff_run
    assert code == 0
    naive, aware = _rows(out, "event_posterior")[0], _rows(out, "event_posterior_profiled")[0]
    assert list(aware) == list(POINT_COLUMNS + NUISANCE_COLUMNS)
    assert aware["sigma_crb_eff"] == naive["sigma_crb_eff"]
    # its errors carry the form factors (the efficient bound's size), the naive ones do not
    assert float(aware["pull_width"]) < float(naive["pull_width"])


def test_deep_sets_marginalises_the_form_factors(ff_run):
    """With nuisances the job trains the nuisance-aware Deep Sets (and not the naive one): its summary
    carries the nuisances' scores, and its rho's sets come from prior-drawn worlds."""
    import torch

    code, out = ff_run
    assert code == 0
    assert not (out / "evaluation" / "deepsets").exists()
    row = _rows(out, "deepsets_marginal")[0]
    assert list(row) == list(POINT_COLUMNS + NUISANCE_COLUMNS)
    assert np.isfinite(float(row["sigma_over_crb_eff"])) and np.isfinite(float(row["pull_width"]))
    states = [torch.load(m, weights_only=True) for m in out.glob("mlartifacts/*/artifacts/model/model.pt")]
    pooled = [s for s in states if "pooled_std" in s and "coords" not in s]  # not the ResNet
    assert len(pooled) == 1 and pooled[0]["pooled_std"].shape == (4 + len(FF),)  # 4 delta C9 scores, 3 nuisances'
    # the summary's moments in (delta C9, u) are kept with it, for its profiled fit: P_c Q = 3 x 10 for 3 nuisances
    state = pooled[0]
    assert state["profile1"].shape == (30, 4 + len(FF)) and float(state["profile0"][0]) > 0
    assert state["profile_box"][1:].tolist() == [[-6.0, 6.0]] * len(FF)


def test_the_resnet_marginalises_the_form_factors(ff_run):
    """With nuisances the job trains the score ResNet's nuisance-aware version: its voxel outputs carry the
    3 nuisances' scores beside the 3 delta C9 scores."""
    import torch

    code, out = ff_run
    assert code == 0
    assert not (out / "evaluation" / "resnet3d").exists()
    row = _rows(out, "resnet3d_marginal")[0]
    assert np.isfinite(float(row["sigma_over_crb_eff"])) and np.isfinite(float(row["pull_width"]))
    states = [torch.load(m, weights_only=True) for m in out.glob("mlartifacts/*/artifacts/model/model.pt")]
    scales = [s["score_scale"] for s in states if "coords" in s]
    assert len(scales) == 1 and scales[0].shape == (3 + len(FF),) and bool((scales[0] != 1).all())


def test_the_voxel_scores_of_the_nuisances_sum_their_events_scores(ff_tables_cache):
    from kernels import joint, joint_nuisance, theory
    from kernels.voxels import voxelize

    ntable = nuisances.nuisance_table(["C9_bsmumu"], [[1.1, 6.0]], FF, cache=ff_tables_cache)
    table = theory.jtable(["C9_bsmumu"], [[1.1, 6.0]])
    from kernels.sampler import sample_array

    z = sample_array(table, [0.3], 2000, (1, 2)).T.astype(np.float64)
    lin = joint.normalisation(joint_nuisance.nuisance_linear_table(ntable))
    sums = joint_nuisance.voxel_nuisance_score_sums(ntable, z, z, 0.3, 4, lin)
    assert sums.shape == (len(FF), 4, 4, 4)
    assert np.allclose(sums.sum(axis=(1, 2, 3)), joint_nuisance.nuisance_scores(ntable, z, 0.3, lin).sum(0), rtol=1e-5)
    counts = voxelize(z[:, 1], z[:, 2], z[:, 3], z[:, 0], 4, n_images=1)[0][1]
    assert np.array_equal(sums[0] != 0, np.nan_to_num(counts) > 0)  # the events' own voxels


def test_the_marginal_stream_draws_every_set_in_its_own_world(ff_tables_cache, monkeypatch):
    from kernels import theory
    from orchestrator.build import stream_work as sw

    real = nuisances.nuisance_table
    monkeypatch.setattr(nuisances, "nuisance_table", lambda c, w, ff, **kw: real(c, w, FF, cache=ff_tables_cache))
    sw._nuisance_table.cache_clear()
    ntable = nuisances.nuisance_table(["C9_bsmumu"], [[1.1, 6.0]], "bsz")
    key = theory.jtable(["C9_bsmumu"], [[1.1, 6.0]]).key
    job = sw.StreamJob("deepsets_marginal", 5, (0.0,), unit=300, theory_key=key, form_factors="bsz",
                       prior_scale=1.0, nuisance_key=ntable.key, worlds=True)
    sets, _ = sw.make_chunk(job, sw.Chunk(0, sw.EPOCH_PHASE, 0, 0, 2, 2))
    from kernels.sampler import sample_array

    for k in range(2):
        seed = sw.stream_seed(5, 0, "deepsets_marginal", sw.EPOCH_PHASE, k)
        world = ntable.at(nuisances.world_of(seed, len(FF), 1.0))
        assert np.array_equal(sets[k], sample_array(world, [0.0], 300, seed).T)  # the set's own world
    central = sw.StreamJob("deepsets_marginal", 5, (0.0,), unit=300, theory_key=key)
    assert not np.array_equal(sw.make_chunk(central, sw.Chunk(0, sw.EPOCH_PHASE, 0, 0, 2, 2))[0], sets)
    bad = sw.StreamJob("deepsets_marginal", 5, (0.0,), unit=300, theory_key=key, form_factors="bsz",
                       nuisance_key="0" * 16, worlds=True)
    sw._nuisance_table.cache_clear()
    with pytest.raises(Exception, match="nuisance tables"):
        sw.make_chunk(bad, sw.Chunk(0, sw.EPOCH_PHASE, 0, 0, 1, 1))
    sw._nuisance_table.cache_clear()


def test_deep_sets_with_nuisances_needs_the_streamed_score_summary(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(TINY_FF.replace("    data: stream\n    stream_workers: 0\n", ""))
    code = main(["run", "--config", str(cfg), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "summary: score and data: stream" in err
    assert not (tmp_path / "out").exists()


def test_the_report_shows_the_efficient_bound(ff_run):
    _, out = ff_run
    assert "σ/CRB,eff mean" in (out / "report.md").read_text()


def test_the_worlds_of_the_test_sets_are_recorded(ff_run):
    _, out = ff_run
    with open(out / "evaluation" / "worlds.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 and list(rows[0])[:2] == ["dc9_true", "set"]
    u = np.array([[float(r[f"u:{n}"]) for n in FF] for r in rows])
    assert len({tuple(x) for x in u}) == 20  # per_set: a world each
    assert np.allclose(u, nuisances.draw_worlds(20, 3, 1.0, seed=3, point=10_000))


@pytest.mark.parametrize("field, value, message", [
    ("prior_scale", "0", "prior_scale must be a finite number > 0"),
    ("form_factors", "lcsr", "nuisances.form_factors"),
    ("power_corrections", "maybe", "power_corrections"),
])
def test_bad_nuisance_settings_are_one_line_errors(tmp_path, capsys, field, value, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(TINY_FF.replace("form_factors: bsz, prior_scale: 1.0", f"form_factors: bsz, prior_scale: 1.0, {field}: {value}")
                   if field == "power_corrections" else TINY_FF.replace(f"{field}: " + ("1.0" if field == "prior_scale" else "bsz"), f"{field}: {value}"))
    code = main(["run", "--config", str(cfg), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()


# --- the power corrections in the run -------------------------------------------------------------------------------

TINY_PC = """
name: tiny-pc
seed: 4
nuisances: {form_factors: bsz, power_corrections: true}
scan: {dc9: [-1.0, 0.0], events_per_point: 2000, level: gen}
models:
  ml_fit: {enabled: true}
  event_classifier:
    head: score
    hidden: 16
    layers: 2
    events_per_point: 1000
    train_events: 30000
    reference_events: 50000
    train: {epochs: 2, batch_size: 512, lr: 0.003, weight_decay: 0.0, patience: 2}
evaluation: {dc9: [-0.5], sets: 40, events_per_set: 3000}
"""
PC = ("B0->K*0 delta_C7 b_- Re", "B0->K*0 delta_C7 a_0 Re")


@pytest.fixture(scope="module")
def pc_run(tmp_path_factory, ff_tables_cache):
    """The job with 3 form factors and 2 power corrections (the strongest): 40 sets in worlds drawn with both."""
    from kernels import amplitudes

    tmp = tmp_path_factory.mktemp("pc")
    real_ff, real_amp = nuisances.nuisance_table, amplitudes.amplitude_table
    mp = pytest.MonkeyPatch()
    mp.setattr(nuisances, "nuisance_table", lambda c, w, ff, **kw: real_ff(c, w, FF, cache=ff_tables_cache, workers=1))
    mp.setattr(amplitudes, "amplitude_table", lambda c, w, ff, **kw: real_amp(c, w, FF, PC, cache=ff_tables_cache))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tmp / "tiny-pc.yaml"
    cfg.write_text(TINY_PC)
    try:
        code = main(["run", "--config", str(cfg), "--out", str(tmp / "out"), "--workers", "0", "--quiet"])
    finally:
        mp.undo()
    return code, tmp / "out"


def test_with_power_corrections_the_worlds_and_the_profiled_fit_carry_them(pc_run, ff_tables_cache):
    from kernels import amplitudes, likelihood

    code, out = pc_run
    assert code == 0
    with open(out / "evaluation" / "worlds.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert all(any(n in h for h in header) for n in FF + PC)
    table = amplitudes.amplitude_table(["C9_bsmumu"], [(1.1, 6.0)], FF, PC, cache=ff_tables_cache)
    I = likelihood.fisher_information_nuisances(table, [-0.5])
    eff = likelihood.efficient_bound(I, 1, 3000, np.eye(5))[0][0]
    ff_only = likelihood.efficient_bound(I[:4, :4], 1, 3000, np.eye(3))[0][0]
    prof, ff, fixed = (_rows(out, n)[0] for n in ("ml_fit_profiled", "ml_fit_profiled_ff", "ml_fit"))
    for row in (prof, ff, fixed):  # every estimator against the bound with the power corrections
        assert float(row["sigma_crb_eff"]) == pytest.approx(eff, rel=1e-9)
    assert ff_only < 0.85 * eff
    assert 0.65 < float(prof["sigma_over_crb_eff"]) < 1.4  # 40 sets: sigma known to about 11%
    assert float(prof["coverage_68"]) > float(ff["coverage_68"])  # the form factors alone are not enough


def test_power_corrections_need_the_form_factors(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_PC.replace("form_factors: bsz", "form_factors: none"))
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "power_corrections: true needs form_factors: bsz" in err
    assert not (tmp_path / "o").exists()


def test_with_power_corrections_the_event_posterior_profiles_them_too(pc_run):
    code, out = pc_run
    assert code == 0
    naive, aware = _rows(out, "event_posterior")[0], _rows(out, "event_posterior_profiled")[0]
    assert aware["sigma_crb_eff"] == _rows(out, "ml_fit_profiled")[0]["sigma_crb_eff"]
    assert float(aware["pull_width"]) < float(naive["pull_width"])  # its errors carry the 5 nuisances
    assert float(aware["coverage_68"]) > float(naive["coverage_68"])


def test_the_report_has_the_bound_against_luminosity(ff_run, pc_run):
    from orchestrator.evaluate.bounds import BOUNDS_COLUMNS, LUMINOSITY_EVENTS

    for (code, out), pc in ((ff_run, False), (pc_run, True)):
        assert code == 0
        with open(out / "evaluation" / "bounds.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert tuple(rows[0]) == BOUNDS_COLUMNS
        assert [int(r["n_events"]) for r in rows] == list(LUMINOSITY_EVENTS)
        eff, fixed = (np.array([float(r[k]) for r in rows]) for k in ("sigma_crb_eff", "sigma_crb"))
        assert np.all(eff > fixed) and np.all(np.diff(eff / fixed) > 0)  # the prior does not tighten with N
        assert np.isfinite(float(rows[0]["sigma_crb_eff_pc"])) == pc
        text = (out / "report.md").read_text()
        assert "## The bound against luminosity" in text and "figures/luminosity_bounds.png" in text
        assert (out / "figures" / "luminosity_bounds.png").stat().st_size > 0
