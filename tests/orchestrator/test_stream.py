"""Training data streamed from Ray (orchestrator.build.stream): bytes, freshness, independence, the queue bound."""

from __future__ import annotations

import csv
import hashlib
import itertools

import numpy as np
import pytest
import torch

from kernels.bootstrap import INDEX_SEED_OFFSET, TEST_SET_SEED_OFFSET, index_seed, test_set_seed
from orchestrator.build import stream_work
from orchestrator.build.sources import STREAM_SPLIT_IDS, TEST_SEED_OFFSET
from orchestrator.build.stream import StreamDataset, StreamSource
from orchestrator.build.stream_work import (
    EPOCH_PHASE,
    FIT_PHASE,
    MODEL_STREAMS,
    STREAM_SEED_OFFSET,
    VAL_PHASE,
    StreamJob,
    stream_seed,
)
from orchestrator.evaluate.estimators import EVAL_POINT_OFFSET

torch.set_num_threads(1)

SEED = 3
GRID = (-1.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def table():
    from kernels import theory

    return theory.jtable(["C9_bsmumu"], [(1.1, 6.0)])


def _job(model, table, unit=100, **kw):
    return StreamJob(model, SEED, GRID, unit=unit, theory_key=table.key, **kw)


def _digest(batches) -> str:
    h = hashlib.sha256()
    for x, y in batches:
        h.update(x.numpy().tobytes())
        h.update(y.numpy().tobytes())
    return h.hexdigest()


def _epochs(source, epochs=2, per_point=8, batch=5, chunk_units=2) -> list[str]:
    ds = StreamDataset(source, per_point, batch, drop_last=False, chunk_units=chunk_units)
    return [_digest(ds.epoch(e)) for e in range(epochs)]


# --- seeds --------------------------------------------------------------------------------


def _pool(entropy) -> tuple:
    return tuple(np.random.SeedSequence(list(entropy)).pool.tolist())


def _with_level_entries(seeds):
    """Each entropy and what kernels.detector.sample_level derives from it at det levels."""
    for s in seeds:
        yield s
        yield (*s, 1)
        yield (*s, 2, 0)
        yield (*s, 3)


def test_streamed_seeds_never_meet_generation_test_images_test_mc_or_index_draws():
    points, chunks, images, sets = range(3), range(40), range(40), range(40)
    others = [(SEED, p, c) for p in points for c in chunks]  # generator chunks
    others += [(SEED, p, TEST_SEED_OFFSET + k) for p in points for k in images]  # test images
    others += [(SEED, p, STREAM_SPLIT_IDS[s], TEST_SEED_OFFSET + k) for p in points for s in STREAM_SPLIT_IDS
               for k in images]  # streamed image builds
    others += [test_set_seed(SEED, EVAL_POINT_OFFSET + i, k) for i in range(3) for k in sets]  # test MC
    others += [index_seed(SEED, p, s) for p in points for s in range(4)]  # index draws
    ours = [stream_seed(SEED, p, m, phase, k) for p in points for m in MODEL_STREAMS
            for phase in range(EPOCH_PHASE + 5) for k in range(40)]
    # structure: the third word of every other stream is below the streams' offset, ours at or above it
    assert max(s[2] for s in others) < STREAM_SEED_OFFSET <= min(s[2] for s in ours)
    assert max(TEST_SET_SEED_OFFSET, INDEX_SEED_OFFSET) < STREAM_SEED_OFFSET
    # and the SeedSequence states themselves, detector-level derivations included
    theirs = {_pool(s) for s in _with_level_entries(others)}
    mine = [_pool(s) for s in _with_level_entries(ours)]
    assert len(set(mine)) == len(mine)  # no two units of any epoch, model or phase share a stream
    assert theirs.isdisjoint(mine)


def test_the_seed_space_is_checked_for_a_config(tiny_run_yaml):
    import yaml

    from kernels.errors import ConfigError
    from orchestrator.config.run import RunConfig

    data = yaml.safe_load(tiny_run_yaml)
    stream_work.check_seed_space(RunConfig.model_validate(data))
    data["scan"]["chunk_size"] = 1  # 12,000 chunks per point: fine
    stream_work.check_seed_space(RunConfig.model_validate(data))
    data["evaluation"]["sets"] = 10**6
    with pytest.raises(ConfigError, match="test sets per point"):
        stream_work.check_seed_space(RunConfig.model_validate(data))


def _rows(events: np.ndarray) -> set[bytes]:
    ev = np.ascontiguousarray(events, dtype=np.float32).reshape(-1, 4)
    return {r.tobytes() for r in ev}


def _training_events(table, epochs=3) -> set[bytes]:
    """Every event a tiny Deep Sets stream and event-classifier stream trains on (and validates and fits on)."""
    seen: set[bytes] = set()
    for model, unit, per_point in (("deepsets", 200, 6), ("event_classifier", stream_work.EVENT_BLOCK, 3000)):
        source = StreamSource(_job(model, table, unit), workers=0)
        with StreamDataset(source, per_point, 4) as ds:
            for phase in (VAL_PHASE, FIT_PHASE):
                seen |= _rows(source.draw(phase, per_point, ds.chunk_units)[0])
            for e in range(epochs):
                for x, _ in ds.epoch(e):
                    seen |= _rows(x.numpy())
    return seen


def _test_mc(table) -> set[bytes]:
    from kernels.bootstrap import test_sets

    rows: set[bytes] = set()
    for i, d in enumerate(GRID[:2]):  # evaluation points on the training grid: the closest to training data
        rows |= _rows(test_sets(table, [d], 200, 6, SEED, "gen", point=EVAL_POINT_OFFSET + i).events)
    return rows


def test_test_mc_shares_no_event_with_any_streamed_training_event(table):
    train, test = _training_events(table), _test_mc(table)
    assert len(train) > 10_000 and len(test) == 2 * 6 * 200
    assert train.isdisjoint(test)


def test_the_event_check_finds_shared_events_when_the_streams_collide(table, monkeypatch):
    # Streams that met the test MC's (set k of point p drawn as test set k of eval point p): the check must see it.
    monkeypatch.setattr(stream_work, "stream_seed", lambda seed, point, model, phase, k:
                        test_set_seed(seed, EVAL_POINT_OFFSET + point, k))
    assert len(_training_events(table, epochs=1) & _test_mc(table)) >= 200


# --- bytes, freshness -----------------------------------------------------------------------


def test_streaming_reproduces_its_bytes_whatever_the_workers(table, ray_local):
    sets = _job("deepsets", table)
    images = _job("resnet3d", table, bins=4)
    ref_sets = _epochs(StreamSource(sets, 0))
    ref_images = _epochs(StreamSource(images, 0), per_point=4, chunk_units=1)
    assert ref_sets[0] != ref_sets[1] and ref_images[0] != ref_images[1]
    for workers in (1, 2):
        source = StreamSource(sets, workers)
        try:
            for in_flight in (1, 2 * workers, 5):  # the queue bound changes nothing either
                source.in_flight = in_flight
                assert _epochs(source) == ref_sets, (workers, in_flight)
            source.job = images  # the same actors draw any job
            assert _epochs(source, per_point=4, chunk_units=1) == ref_images, workers
        finally:
            source.close()


def test_a_streamed_epoch_never_repeats_a_set_and_epoch_1_differs_from_epoch_0(table):
    per_point = 7
    with StreamDataset(StreamSource(_job("deepsets", table), 0), per_point, 4, chunk_units=2) as ds:
        epochs = [[(x.numpy(), y.numpy()) for x, y in ds.epoch(e)] for e in range(3)]
    digests = []
    for batches in epochs:
        x = np.concatenate([b[0] for b in batches])
        y = np.concatenate([b[1] for b in batches])
        assert len(x) == len(GRID) * per_point // 4 * 4  # drop_last: whole batches only
        assert all(np.isin(y, GRID))
        digests.append([hashlib.sha256(s.tobytes()).hexdigest() for s in x])
    flat = list(itertools.chain.from_iterable(digests))
    assert len(set(flat)) == len(flat)  # no set twice, within an epoch or across epochs
    assert set(digests[0]).isdisjoint(digests[1])
    # every batch mixes points (a round holds a chunk of every point, shuffled)
    assert sum(len(np.unique(b[1])) > 1 for b in epochs[0]) >= len(epochs[0]) - 1


# --- the queue --------------------------------------------------------------------------------


class _Counting:
    """An actor handle that counts the calls submitted to it."""

    def __init__(self, actor, counter):
        self._actor, self._counter = actor, counter
        self.run = self

    def remote(self, *args):
        self._counter[0] += 1
        return self._actor.run.remote(*args)


@pytest.mark.parametrize("in_flight", [1, 3])
def test_the_queue_never_holds_more_than_its_bound(table, ray_local, in_flight):
    import time

    source = StreamSource(_job("deepsets", table), workers=2, in_flight=in_flight)
    submitted = [0]
    source._actors = [_Counting(a, submitted) for a in source._actors]
    chunks = stream_work.plan_chunks(source.job, EPOCH_PHASE, 12, 1)  # 36 chunks
    taken, ahead = 0, []
    try:
        for _ in source.results(chunks):
            taken += 1
            ahead.append(submitted[0] - taken)  # submitted and not yet handed on: the refs in flight
            time.sleep(0.02)  # a slow trainer: the workers would run ahead if nothing held them
    finally:
        source._actors = [a._actor for a in source._actors]
        source.close()
    assert taken == submitted[0] == len(chunks)
    assert max(ahead) == in_flight and ahead[-1] == 0
    assert source.stats["in_flight_max"] == in_flight


# --- training ---------------------------------------------------------------------------------


def test_train_takes_a_stream_as_an_epoch_source(table):
    from models.deepsets import DeepSets
    from models.training import TrainConfig, is_epoch_source, train

    source = StreamSource(_job("deepsets", table), 0)
    with StreamDataset(source, 8, 6, chunk_units=3) as ds:
        assert is_epoch_source(ds) and ds.steps_per_epoch == 4
        net = DeepSets(hidden=8, phi_layers=1, latent=8, rho_layers=1)
        hist = train(net, ds, None, TrainConfig(epochs=3, batch_size=6, patience=0, device="cpu"))
        # in this process the chunks are drawn as they are asked for: 3 epochs x 3 points x 3 chunks, no more
        assert source.stats["chunks"] == 3 * len(GRID) * 3
    assert hist["epochs_run"] == 3 and all(np.isfinite(hist["train_loss"]))


def test_the_stream_settings_need_data_stream():
    from orchestrator.config.run import DeepSetsConfig, load_config

    assert DeepSetsConfig(set_size=10, sets_per_point=2).data == "pool"
    with pytest.raises(ValueError, match="stream_workers needs data: stream"):
        DeepSetsConfig(set_size=10, sets_per_point=2, stream_workers=2)
    for name in ("demo", "gen24k", "det_bkg24k"):
        models = load_config(name).models
        # the presets' score summaries draw fresh MC; a section that does not say keeps the stored pool
        assert (models.deepsets.summary, models.deepsets.data) == ("score", "stream")
        assert (models.resnet3d.summary, models.resnet3d.data) == ("score", "stream")
        assert models.event_classifier.data == "pool"


STREAM_RUN = """\
name: tiny-stream
seed: 3
scan: {dc9: "-1:1:3", events_per_point: 6000}
models:
  deepsets: {hidden: 8, phi_layers: 1, rho_layers: 1, set_size: 400, sets_per_point: 6,
             data: stream, stream_sets_per_point: 8, stream_workers: 1, stream_in_flight: 2,
             train: {epochs: 2, batch_size: 4}}
  ml_fit: {enabled: false}
evaluation: {dc9: [-1.0, -0.5], sets: 3, events_per_set: 400}
"""


def test_a_tiny_run_trains_deepsets_on_streamed_data_and_evaluates_it(tmp_path, ray_local, own_mlflow_store):
    from mlflow.tracking import MlflowClient

    from orchestrator.cli import main

    cfg = tmp_path / "stream.yaml"
    cfg.write_text(STREAM_RUN)
    out = tmp_path / "out"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--workers", "0", "--quiet"]) == 0
    with open(out / "evaluation" / "deepsets" / "points.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["dc9_true"]) for r in rows] == [-1.0, -0.5]
    assert all(np.isfinite(float(r["mean"])) and float(r["sigma_over_crb"]) > 0 for r in rows)
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve()}/mlflow.db")
    child = [r for r in client.search_runs([client.get_experiment_by_name("wcscan").experiment_id])
             if r.info.run_name == "deepsets"][0]
    assert child.data.params["data"] == "stream" and child.data.metrics["epochs_run"] == 2
