r"""Training data streamed from Ray: fresh Monte Carlo every epoch, through a bounded queue.

With ``data: stream`` in a model's section of the run config, the network never
trains on stored events. Every epoch, Ray actors draw new events and turn them
into the model's inputs where they are drawn: voxel images
(:func:`kernels.voxels.voxelize`, the config's bins and events per image) for the
ResNet, sets of ``set_size`` events for Deep Sets, labelled events for the event
classifier. :class:`StreamDataset` (a torch ``IterableDataset`` and an *epoch
source* of :func:`models.training.train`) hands them to the trainer in shuffled
batches. Validation data are drawn once, from a stream of their own, and stay
fixed; so are the few samples that fit the input standardisation.

Seeds
-----

Unit ``k`` (an image, a set, or a block of :data:`EVENT_BLOCK` events) of point
``p`` in phase ``phase`` is drawn with the seed entropy (:func:`~orchestrator.build.stream_work.stream_seed`)::

    (seed, p, STREAM_SEED_OFFSET + model, phase, k)      STREAM_SEED_OFFSET = 4 * 10**6

``model`` is 0 (ResNet), 1 (Deep Sets), 2 (event classifier), 3 (the sets of a Deep Set with the
score summary, :mod:`orchestrator.jobs.deepsets_score`, whose ``p`` indexes its own grid of shifts), 4 and 5
(the ResNet's score summary and its rho), or 6 (the score summary's sets with hadronic nuisances, each set
in its own world: :func:`kernels.nuisances.world_of` appends ``5 * 10**6`` to the set's entropy); ``phase`` is 0
for validation, 1 for the standardisation sample and ``2 + e`` for training
epoch ``e``. So the seed is a function of (seed, epoch, point, k), and the units
of one epoch, of two epochs, of two models never share a seed. At ``det`` and
``det_bkg`` levels :func:`kernels.detector.sample_level` appends its own entries
to the entropy, as it does for every stream.

Why these streams can never meet the others of a run (:mod:`kernels.bootstrap`):
numpy's ``SeedSequence`` hashes the entropy as a sequence of 32-bit words, one
word per entry below 2**32. Every stream of a run starts with the words of the
same ``seed`` and then one word for the point; the next word tells them apart:

======================================  ==============================  ===============
stream                                  entropy                         third word
======================================  ==============================  ===============
generator chunk ``c``                   ``(seed, p, c)``                < 10**6
test image ``k``                        ``(seed, p, 10**6 + k)``        [10**6, 2*10**6)
streamed image build, split ``s``       ``(seed, p, s, 10**6 + k)``     0, 1, 2
test MC set ``k`` of eval point ``i``   ``(seed, 10_000 + i, 2*10**6 + k)``  [2*10**6, 3*10**6)
index draws                             ``(seed, p, 3*10**6 + s)``      [3*10**6, 4*10**6)
**streamed training data**              ``(seed, p, 4*10**6 + m, ...)``  4*10**6 + {0, ..., 6}
======================================  ==============================  ===============

as long as a point has fewer than 10**6 generator chunks, test images and test
sets, which :func:`check_seed_space` checks for a config. Two entropies that
differ in a word give different streams (and numpy's "trailing zeros are
ignored" only pads sequences shorter than four words; ours have five). The test
suite checks this on the seeds and, independently, on the events themselves.

The queue, and why an actor pool and the object store rather than Ray Data
------------------------------------------------------------------------

:class:`StreamSource` keeps ``workers`` actors (the project's
:class:`~orchestrator.runtime.pool.PoolActor`: one CPU each, thread pools
limited before the kernels are imported, restarted by Ray with their calls
retried if their process dies; the theory table and the compiled samplers stay
in the actor between chunks and epochs). An epoch is a fixed list of chunks
(a few units of one point), in *round* order: chunk ``r`` of every point, then
chunk ``r + 1``. The driver submits the first ``in_flight`` chunks, each to the
least-loaded actor, and then, strictly first in first out, waits for the oldest
ref, submits the next chunk, and hands the oldest result on. There are never more
than ``in_flight`` refs in flight (``stats["in_flight_max"]`` records it), and
the trainer holds at most one round (a chunk per point, read from the object
store without a copy) plus the batches cut from it: memory stays below
``in_flight + points + 1`` chunks, whatever the epoch's size. Chunks are at most
:data:`CHUNK_EVENTS` (2**18) events or :data:`CHUNK_BYTES` (8 MiB) of output.
Each round, with the few samples the last one left over, is shuffled by a
generator seeded from (seed, model, epoch) and cut into batches, so every batch
mixes the points. The queue runs on from one epoch into the next: while the
trainer takes the last round of epoch ``e`` and validates, the workers already
draw the first chunks of epoch ``e + 1`` (still at most ``in_flight``).

Ray Data (``map_batches`` over an actor pool, ``iter_torch_batches``) would do the
plumbing, but: its bound is a budget of object-store bytes and operator-queue
heuristics, not a count of refs that a test can hold it to; its output order
follows completion unless ``preserve_order`` is set, and its blocks are split by
its own autoscaling, so the batches of an epoch would depend on the cluster; and
it plans and starts an executor on every pass. Here a chunk is a pure function
of its job and its (phase, point, k), and the driver consumes in list order,
so **the bytes of an epoch are the same whatever the number of workers or the
queue bound** (they do depend on the chunk size, a constant of each kind of
data). A retried chunk makes the same bytes. For data-parallel training, split
the (deterministic) chunk list by rank.

``workers=0`` draws the same chunks in the trainer's process, one at a time.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from kernels.errors import ConfigError, WcscanError
from orchestrator.build.stream_work import (
    EPOCH_PHASE,
    EVENT_BLOCK,
    FIT_PHASE,
    MODEL_STREAMS,
    STREAM_SEED_OFFSET,
    VAL_PHASE,
    WORKER,
    Chunk,
    StreamJob,
    StreamWorker,
    check_seed_space,
    default_chunk_units,
    plan_chunks,
)

__all__ = ["StreamSource", "StreamDataset", "releasing", "streamed_data"]

log = logging.getLogger(__name__)

#: Samples that fit the input standardisation, over all points: images, events.
FIT_IMAGES, FIT_EVENTS = 256, 1_000_000


# --- the bounded queue ----------------------------------------------------------------------


class StreamSource:
    """``workers`` actors drawing a job's chunks, at most ``in_flight`` object refs in flight.

    ``workers``: default the Ray cluster's CPUs less one (the trainer's), at least 1; 0 draws in
    this process. ``in_flight``: default the points plus the workers, so that the next round (a
    chunk per point) is drawn while the trainer takes this one, and no worker idles. ``stats``:
    ``in_flight_max`` (the most refs ever in flight), ``chunks`` (handed out), ``wait_s`` (the
    trainer's time blocked on a chunk).
    """

    def __init__(self, job: StreamJob, workers: int | None = None, in_flight: int | None = None,
                 address: str | None = None) -> None:
        self.job = job
        self.stats = {"in_flight_max": 0, "chunks": 0, "wait_s": 0.0}
        self._actors: list = []
        self._abandoned: list = []  # refs of closed result streams, cancelled or finishing
        self._local = StreamWorker() if workers == 0 else None
        if workers != 0:
            from orchestrator.runtime.ray import cluster_cpus, init_ray

            init_ray(address)
            cpus = cluster_cpus()
            workers = max(1, cpus - 1) if workers is None else int(workers)
            if workers > cpus:
                raise ConfigError(f"stream_workers {workers} is more than the {cpus} CPU(s) of the Ray cluster")
            self._actors = [self._new_actor() for _ in range(workers)]
        self.workers = len(self._actors)
        self.in_flight = int(in_flight) if in_flight is not None else len(job.grid) + max(1, self.workers)
        if self.in_flight < 1:
            raise ConfigError(f"stream_in_flight must be >= 1, got {in_flight}")

    @staticmethod
    def _new_actor():
        from orchestrator.runtime.pool import PoolActor

        return PoolActor.options(num_cpus=1).remote(WORKER)

    def results(self, chunks: Iterable[Chunk]) -> Iterator[tuple[Chunk, np.ndarray, np.ndarray]]:
        """``(chunk, inputs, targets)`` for every chunk, in the order given (never in completion order).

        ``chunks`` may be endless: they are submitted as results are taken, never more than
        ``in_flight`` ahead. Closing the iterator cancels the chunks in flight that have not started."""
        if self._local is not None:
            for c in chunks:
                t0 = time.perf_counter()
                x, y = self._local(self.job, c)
                self.stats["wait_s"] += time.perf_counter() - t0
                self.stats["in_flight_max"] = max(self.stats["in_flight_max"], 1)
                self.stats["chunks"] += 1
                yield c, x, y
            return
        if not self._actors:
            raise RuntimeError("the stream source is closed")
        todo = iter(chunks)
        queue: deque = deque()  # [chunk, ref, actor index, attempts, actor], oldest first
        load = [0] * len(self._actors)

        def submit(chunk: Chunk, attempts: int = 1, at_head: bool = False) -> None:
            i = min(range(len(load)), key=load.__getitem__)
            actor = self._actors[i]
            entry = [chunk, actor.run.remote(self.job, chunk), i, attempts, actor]
            load[i] += 1
            queue.appendleft(entry) if at_head else queue.append(entry)
            self.stats["in_flight_max"] = max(self.stats["in_flight_max"], len(queue))

        for chunk in todo:
            submit(chunk)
            if len(queue) >= self.in_flight:
                break
        try:
            while queue:
                x, y = self._take(queue, load, submit)
                chunk = queue.popleft()[0]
                nxt = next(todo, None)
                if nxt is not None:
                    submit(nxt)
                self.stats["chunks"] += 1
                yield chunk, x, y
        finally:  # closed early (the next epoch's chunks ahead, or an error): cancel what has not started
            import ray

            for entry in queue:
                with contextlib.suppress(Exception):
                    ray.cancel(entry[1])
                self._abandoned.append(entry[1])

    def _take(self, queue: deque, load: list, submit) -> tuple[np.ndarray, np.ndarray]:
        """The result of the oldest chunk (left at the head of ``queue``); a dead actor is replaced."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        from orchestrator.runtime.pool import MAX_ATTEMPTS

        while True:
            chunk, ref, i, attempts, actor = queue[0]
            t0 = time.perf_counter()
            try:
                out = ray.get(ref)
            except RayActorError as err:
                queue.popleft()
                load[i] -= 1
                if attempts >= MAX_ATTEMPTS:
                    raise RuntimeError(f"stream chunk {chunk}: worker died {attempts} times; giving up") from err
                log.warning("stream worker died (%s); drawing point %d part %d again on a new worker",
                            type(err).__name__, chunk.point, chunk.part)
                if self._actors[i] is actor:  # not yet replaced (by an earlier chunk of the dead actor)
                    with contextlib.suppress(Exception):
                        ray.kill(actor, no_restart=True)
                    self._actors[i] = self._new_actor()
                submit(chunk, attempts + 1, at_head=True)
                continue
            except RayTaskError as err:
                if isinstance(err.cause, WcscanError):
                    raise err.cause from None
                raise
            finally:
                self.stats["wait_s"] += time.perf_counter() - t0
            load[i] -= 1
            return out["entry"]

    def draw(self, phase: int, per_point: int, chunk_units: int, advance=None) -> tuple[np.ndarray, np.ndarray]:
        """Every unit of ``phase``, all points, concatenated in (point, k) order (validation, fitting);
        ``advance(n)``, if given, after each chunk of n units."""
        got = {}
        for c, x, y in self.results(plan_chunks(self.job, phase, per_point, chunk_units)):
            got[(c.point, c.part)] = (x, y)
            if advance is not None:
                advance(len(x))
        keys = sorted(got)
        return np.concatenate([got[k][0] for k in keys]), np.concatenate([got[k][1] for k in keys])

    def close(self, wait_s: float = 30.0) -> None:
        """Stop the actors, once the chunks they have started are done (at most ``wait_s``)."""
        import ray

        if self._abandoned:
            ray.wait(self._abandoned, num_returns=len(self._abandoned), timeout=wait_s)
            self._abandoned = []
        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self._actors = []


class StreamDataset(IterableDataset):
    """Fresh training data every epoch: ``per_point`` samples of every point, in shuffled batches.

    An *epoch source* of :func:`models.training.train`: ``epoch(e)`` yields the batches ``(inputs,
    targets)`` of epoch ``e`` (tensors), ``steps_per_epoch`` counts them and ``len()`` the samples.
    As an ``IterableDataset`` it yields the batches of the epoch set by :meth:`set_epoch` (use it
    with ``DataLoader(ds, batch_size=None)``). A batch of fewer than ``batch_size`` samples comes
    last, and only when ``drop_last`` is False or the epoch is smaller than a batch (as
    ``models.training`` does). A context manager: leaving it closes the source.
    """

    def __init__(self, source: StreamSource, per_point: int, batch_size: int, drop_last: bool = True,
                 chunk_units: int | None = None) -> None:
        super().__init__()
        if per_point < 1 or batch_size < 1:
            raise ConfigError(f"a stream needs per_point >= 1 and batch_size >= 1, got {per_point}, {batch_size}")
        self.source = source
        self.per_point = int(per_point)
        self.batch_size = int(batch_size)
        self.chunk_units = int(chunk_units or default_chunk_units(source.job))
        self._epoch = 0
        self._feed: Iterator | None = None  # the source's results, running from one epoch into the next
        self._feed_epoch: int | None = None  # the epoch the feed is at the start of
        n = len(self)
        self.drop_last = bool(drop_last) and n >= self.batch_size
        self.steps_per_epoch = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return len(self.source.job.grid) * self.per_point

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(self._epoch)

    def epoch(self, e: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch ``e`` (drawn as they are asked for)."""
        job, e = self.source.job, int(e)
        phase = EPOCH_PHASE + e
        n_chunks = len(self._plan(e))
        if self._feed is None or self._feed_epoch != e:  # not the epoch after the last one: start afresh
            self._stop_feed()
            plans = (self._plan(k) for k in itertools.count(e))
            self._feed = self.source.results(itertools.chain.from_iterable(plans))
        self._feed_epoch = None  # until this epoch is drawn to the end
        rng = np.random.default_rng([job.seed, STREAM_SEED_OFFSET + MODEL_STREAMS[job.model], phase])
        points, bs = len(job.grid), self.batch_size
        xs: list = []
        ys: list = []
        for i, (_, x, y) in enumerate(itertools.islice(self._feed, n_chunks)):
            xs.append(x)
            ys.append(y)
            if (i + 1) % points and i + 1 < n_chunks:
                continue
            # a round is complete (a chunk of every point): shuffle it with what was left, cut batches
            X, Y = np.concatenate(xs), np.concatenate(ys)
            order = rng.permutation(len(X))
            full = len(X) // bs * bs
            for s in range(0, full, bs):
                idx = order[s : s + bs]
                yield torch.from_numpy(X[idx]), torch.from_numpy(Y[idx])
            xs, ys = [X[order[full:]]], [Y[order[full:]]]
        self._feed_epoch = e + 1  # the feed runs on into the next epoch's chunks
        if xs and len(xs[0]) and not self.drop_last:
            yield torch.from_numpy(xs[0]), torch.from_numpy(ys[0])

    def _plan(self, e: int) -> list[Chunk]:
        return plan_chunks(self.source.job, EPOCH_PHASE + e, self.per_point, self.chunk_units)

    def _stop_feed(self) -> None:
        if self._feed is not None:
            self._feed.close()  # its chunks in flight are cancelled or, if started, left to finish
        self._feed = None

    def close(self) -> None:
        self._stop_feed()
        self.source.close()

    def __enter__(self) -> StreamDataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def releasing(data):
    """A context that closes ``data`` on leaving if it is a :class:`StreamDataset` (a no-op for any other)."""
    return data if isinstance(data, StreamDataset) else contextlib.nullcontext(data)


# --- from a run config ------------------------------------------------------------------------


def _sizes(cfg, model: str) -> tuple[StreamJob, int, int, int]:
    """``(job, per_point per epoch, validation per point, standardisation sample per point)``."""
    from kernels import theory

    section = getattr(cfg.models, model)
    grid = tuple(float(d) for d in cfg.scan.dc9)
    windows = tuple(tuple(float(x) for x in w) for w in cfg.theory.windows)
    common = dict(seed=cfg.seed, grid=grid, level=cfg.scan.level, windows=windows,
                  detector=tuple(sorted(cfg.scan.detector.items())),
                  theory_key=theory.jtable(["C9_bsmumu"], [list(w) for w in windows]).key)
    if model == "resnet3d":
        from orchestrator.build.sources import split_counts

        ic = cfg.images
        n_train, n_val = split_counts(ic.images_per_point, ic.val_fraction)
        job = StreamJob(model, unit=ic.events_per_image, bins=ic.bins, **common)
        return job, section.stream_images_per_point or n_train, max(1, n_val), math.ceil(FIT_IMAGES / len(grid))
    if model == "deepsets":
        job = StreamJob(model, unit=section.set_size, **common)
        n_val = max(4, section.sets_per_point // 5)  # as the pool's (models.splits.deepsets_data)
        return job, section.stream_sets_per_point or section.sets_per_point, n_val, math.ceil(20_000 / section.set_size)
    from models.splits import train_events

    n_train = train_events(section.events_per_point)
    per_point = section.stream_events_per_point or n_train
    job = StreamJob(model, unit=EVENT_BLOCK, **common)
    return job, per_point, max(1, section.events_per_point - n_train), min(per_point, math.ceil(FIT_EVENTS / len(grid)))


def streamed_data(cfg, model: str, train_config, *, chunk_units: int | None = None, address: str | None = None):
    """``(train StreamDataset, fixed validation dataset, standardisation sample)`` of ``model`` under ``cfg``.

    The sample is what the model's input scaling is fitted on: images (n, 2, B, B, B) for the ResNet,
    events (n, 4) for Deep Sets, an :class:`~models.data.EventDataset` for the classifier. Close the
    training dataset when done (``with releasing(train_set):``); it holds the actors.
    """
    from torch.utils.data import TensorDataset

    from models.data import EventDataset

    check_seed_space(cfg)
    section = getattr(cfg.models, model)
    job, per_point, n_val, n_fit = _sizes(cfg, model)
    source = StreamSource(job, section.stream_workers, section.stream_in_flight, address)
    try:
        train_set = StreamDataset(source, per_point, train_config.batch_size, train_config.drop_last, chunk_units)
        units = train_set.chunk_units
        xv, yv = source.draw(VAL_PHASE, n_val, units)
        xf, yf = source.draw(FIT_PHASE, n_fit, units)
    except BaseException:
        source.close()
        raise
    log.info("streaming %s: %d samples per epoch from %d worker(s), at most %d chunks in flight",
             model, len(train_set), source.workers, source.in_flight)
    if job.kind == "events":
        return train_set, EventDataset(xv, yv), EventDataset(xf, yf)
    val_set = TensorDataset(torch.from_numpy(xv), torch.from_numpy(yv))
    return train_set, val_set, (xf if job.kind == "images" else xf.reshape(-1, xf.shape[-1]))
