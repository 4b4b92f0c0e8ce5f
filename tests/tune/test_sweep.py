"""Tiny Ray Tune sweeps (Tune only, no MLflow): every trial runs, retry after a crash, resume."""

import pytest

from tune.tuner import CRASH_ENV, best_checkpoint, load_checkpoint, run_sweep


@pytest.fixture
def sweep(tiny_sweep_data):
    def run(dataset, out, **kw):
        args = dict(num_samples=2, search="random", scheduler="fifo", epochs=1, tiny=True,
                    spec_overrides=tiny_sweep_data, max_concurrent=2)
        args.update(kw)
        return run_sweep("deepsets", dataset, out, **args)

    return run


def test_tiny_sweep_runs_every_trial_and_picks_the_best(ray_local, tiny_dataset, tmp_path, sweep):
    res = sweep(tiny_dataset, tmp_path / "out")
    assert len(res.trials) == 2 and res.errors == 0
    assert all(t["status"] == "TERMINATED" and t["epochs"] == 1 for t in res.trials)
    assert res.best["best_val_loss"] == min(t["best_val_loss"] for t in res.trials)
    assert res.settings["model"] == "deepsets" and res.spec.set_size == 200
    net, state = load_checkpoint(best_checkpoint(res.best["result"]))
    assert state["model"] == "deepsets" and state["set_size"] == 200
    assert not net.training and net.hparams["hidden"] == res.best["config"]["hidden"]


def test_a_crashed_trial_is_retried_from_its_checkpoint(ray_local, tiny_dataset, tmp_path, monkeypatch, sweep):
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, str(marker))
    res = sweep(tiny_dataset, tmp_path / "out", num_samples=1, epochs=2)
    assert marker.exists()  # it did crash once
    assert res.errors == 0
    last = res.trials[0]["result"].metrics
    # resumed from the checkpoint of epoch 0: epoch 1 is the 2nd report (from scratch it would be the 3rd)
    assert last["epoch"] == 1 and last["training_iteration"] == 2


def test_resume_finishes_an_interrupted_sweep_without_rerunning_finished_trials(
    ray_local, tiny_dataset, tmp_path, interrupt_after_first_trial, sweep
):
    out = tmp_path / "out"
    first = sweep(tiny_dataset, out, max_concurrent=1, callbacks=[interrupt_after_first_trial])
    finished = {t["trial_id"]: t["result"].metrics["timestamp"] for t in first.trials if t["epochs"]}
    assert len(finished) == 1 and first.interrupted
    with pytest.raises(Exception, match="--resume"):
        sweep(tiny_dataset, out, max_concurrent=1)
    resumed = sweep(tiny_dataset, out, max_concurrent=1, resume=True)
    assert len(resumed.trials) == 2 and all(t["epochs"] == 1 for t in resumed.trials) and not resumed.interrupted
    again = {t["trial_id"]: t["result"].metrics["timestamp"] for t in resumed.trials}
    for trial_id, stamp in finished.items():
        assert again[trial_id] == stamp


def test_trials_can_take_their_events_from_the_object_store(ray_local, tiny_dataset, tmp_path, sweep):
    res = sweep(tiny_dataset, tmp_path / "out", num_samples=1, data="object-store")
    assert res.errors == 0 and res.trials[0]["epochs"] == 1 and res.settings["data"] == "object-store"


def test_shared_pools_replace_the_dataset_files(tiny_dataset, tiny_sweep_data):
    import numpy as np

    from kernels.event_store import read_pools
    from tune.trainables import DataSpec, _datasets

    spec = DataSpec(model="deepsets", dataset=str(tiny_dataset), **tiny_sweep_data)
    pools = [np.full_like(p, i) for i, p in enumerate(read_pools(tiny_dataset))]
    _, train_set, _, _ = _datasets(spec, {"hidden": 8}, pools)
    x, y = train_set[0]
    assert float(x.max()) == 0.0 and float(y) == -1.0  # the shared arrays, not the files
    with pytest.raises(Exception, match="2 pools of events"):
        _datasets(spec, {"hidden": 8}, pools[:2])


def test_an_unknown_data_source_is_a_config_error(tiny_dataset, tmp_path, sweep):
    with pytest.raises(Exception, match="data must be one of path, object-store"):
        sweep(tiny_dataset, tmp_path / "out", data="s3")


def test_retrain_gives_an_evaluable_network_and_its_state(tiny_dataset, tiny_sweep_data):
    from tune.trainables import DataSpec, retrain

    spec = DataSpec(model="deepsets", dataset=str(tiny_dataset), epochs=1, **tiny_sweep_data)
    net, state = retrain({"hidden": 8, "phi_layers": 1, "rho_layers": 1}, spec)
    assert not net.training and state["model"] == "deepsets" and state["set_size"] == 200
    assert state["hparams"]["hidden"] == 8 and state["val_loss"] == state["val_loss"]  # finite, not NaN
