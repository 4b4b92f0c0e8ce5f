"""One pool of Ray actors that runs whatever worker it is handed.

The pool never imports a job. It is given the dotted path of a worker
factory (``"package.module:Name"``); each actor takes one CPU, limits its
numerical thread pools to it (:func:`~orchestrator.runtime.ray.limit_threads`,
first thing in the actor, before the worker's module and the kernels are
imported), then builds its worker once with ``Name()`` and calls
``worker(job, item)`` for every item it is given. State that is costly to
build (theory tables, sampler set-up) lives in the worker and is kept
between items. The driver hands items out one at a time to idle actors
(each preferably on the scan point it worked on last, ``item.point``, which
saves the sampler's per-point set-up) and collects results with
``ray.wait`` as they finish, so a slow node never holds up the others and
the progress bar moves as results land.

Fault tolerance: an actor whose process dies is restarted by Ray and its
in-flight item retried (``max_restarts`` / ``max_task_retries``); if Ray gives
up on it, the driver replaces the actor and resubmits the item, up to
:data:`MAX_ATTEMPTS` times per item. Items must be pure functions of their
inputs (seeded work), so a retried item writes the same bytes.

Workers write their outputs straight into the job's directory, so on a
cluster of several nodes it must be storage every node sees at the same path
(NFS or another shared file system).

A pool can run several jobs in turn (the benchmark reuses one, so actor
start-up is not timed); use it as a context manager, or call :meth:`close`.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable

import ray
from ray.exceptions import RayActorError, RayTaskError

from kernels.errors import ConfigError, WcscanError
from orchestrator.runtime.ray import cluster_cpus, init_ray, limit_threads

__all__ = ["ActorPool", "MAX_ATTEMPTS", "CRASH_ENV"]

log = logging.getLogger(__name__)

#: Times one work item is submitted before the run gives up on it.
MAX_ATTEMPTS = 4
#: Seconds without any finished item after which the driver says it is waiting.
STALL_WARNING_S = 120
#: Test hook: ``POINT:PART:MARKER`` makes the worker running the item with that
#: ``point`` and ``part`` exit abruptly once (the marker file records that it
#: did, and the dying PID).
CRASH_ENV = "WCSCAN_TEST_CRASH_ONCE"


def resolve(path: str):
    """The object named by ``"package.module:Name"``.

    >>> resolve("os.path:join")("a", "b")
    'a/b'
    """
    module, _, name = path.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


@ray.remote(max_restarts=3, max_task_retries=3)
class PoolActor:
    """One actor: builds its worker from the factory path, runs items, reports where it ran."""

    def __init__(self, worker: str, crash: str | None = None):
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        self._threads = limit_threads(cpus)  # before the worker's module (and its thread pools) is imported
        self._worker = resolve(worker)()
        self._crash = crash
        self._node = ray.get_runtime_context().get_node_id()

    def where(self) -> dict:
        """Where this actor runs and how its thread pools are sized."""
        import pyarrow

        from orchestrator.runtime.ray import THREAD_VARIABLES

        env = {name: os.environ.get(name) for name in THREAD_VARIABLES}
        return {"node_id": self._node, "pid": os.getpid(), "threads": self._threads,
                "arrow_threads": pyarrow.cpu_count(), "env": env}

    def run(self, job, item) -> dict:
        self._maybe_crash(item)
        entry = self._worker(job, item)
        return {"entry": entry, "node_id": self._node, "pid": os.getpid()}

    def _maybe_crash(self, item) -> None:
        if not self._crash:
            return
        point, part, marker = self._crash.split(":", 2)
        if (item.point, getattr(item, "part", None)) == (int(point), int(part)) and not os.path.exists(marker):
            with open(marker, "w") as fh:
                fh.write(str(os.getpid()))
            os._exit(1)


def _describe(item) -> str:
    return " ".join(f"{k} {getattr(item, k)}" for k in ("point", "part", "split") if hasattr(item, k))


class _PointQueue:
    """Work items grouped by scan point, handed out so that workers stay on their points.

    A worker's first part of a point pays the sampler's per-point set-up (its
    envelope, about as long as a 500k-event part), so an idle worker takes
    the next part of the point it worked on last; failing that, a point no
    worker is on yet; failing that, the point with the most parts left.

    >>> from types import SimpleNamespace as Item
    >>> q = _PointQueue([Item(point=p, part=k) for p in (0, 1) for k in (0, 1)])
    >>> a, b = q.take(None), q.take(None)
    >>> (a.point, b.point)  # two idle workers start on different points
    (0, 1)
    >>> q.take(0).point, q.take(1).point  # and each keeps to its own
    (0, 1)
    """

    def __init__(self, items: Iterable):
        self._left: dict[int, deque] = {}
        for item in items:
            self._left.setdefault(item.point, deque()).append(item)
        self._active: Counter = Counter()  # parts in flight per point

    def __bool__(self) -> bool:
        return bool(self._left)

    def take(self, last_point):
        if last_point in self._left:
            point = last_point
        else:
            fresh = [p for p in self._left if not self._active[p]]
            point = fresh[0] if fresh else max(self._left, key=lambda p: len(self._left[p]))
        parts = self._left[point]
        item = parts.popleft()
        if not parts:
            del self._left[point]
        self._active[point] += 1
        return item

    def finished(self, item) -> None:
        self._active[item.point] -= 1

    def put_back(self, item) -> None:
        self.finished(item)
        self._left.setdefault(item.point, deque()).appendleft(item)


class ActorPool:
    """``workers`` actors running the worker built by ``factory`` (default: one per CPU of the Ray cluster)."""

    def __init__(self, factory: str, workers: int | None = None, address: str | None = None):
        init_ray(address)
        cpus = cluster_cpus()
        if workers is None:
            workers = cpus
        if workers > cpus:
            raise ConfigError(
                f"--workers {workers} is more than the {cpus} CPU(s) of the Ray cluster; "
                f"use at most {cpus}, or join a bigger cluster with --address"
            )
        self._factory = factory
        self._crash = os.environ.get(CRASH_ENV) or None
        self._actors = [self._new_actor() for _ in range(workers)]
        log.info("started %d workers (%s)", workers, factory)

    @property
    def size(self) -> int:
        return len(self._actors)

    def _new_actor(self):
        return PoolActor.options(num_cpus=1).remote(self._factory, self._crash)

    def warm_up(self) -> list[dict]:
        """Wait until every actor is up; return where each runs."""
        return ray.get([a.where.remote() for a in self._actors])

    def run(self, job, items: Iterable, on_done: Callable[[object, dict], None]) -> None:
        """Run every item of ``job``; call ``on_done(item, result)`` in the driver as each finishes.

        ``result`` is ``{"entry": <what the worker returned>, "node_id": ..., "pid": ...}``.
        Returns when all items are done; the first item that cannot be made
        raises (a user error as its own one-line exception).
        """
        if not self._actors:
            raise RuntimeError("the actor pool is closed")
        items = list(items)
        index = {id(item): i for i, item in enumerate(items)}  # items need not be hashable
        queue = _PointQueue(items)
        idle = [(actor, None) for actor in self._actors]  # (actor, the point it worked on last)
        pending: dict = {}
        attempts: Counter = Counter()
        while queue or pending:
            while queue and idle:
                actor, last = idle.pop()
                item = queue.take(last)
                attempts[index[id(item)]] += 1
                pending[actor.run.remote(job, item)] = (item, actor)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=STALL_WARNING_S)
            if not ready:
                free = ray.available_resources().get("CPU", 0)
                log.warning(
                    "no item finished in %d s (%d in flight; %g of %d CPUs free in the Ray cluster); "
                    "workers may be waiting for CPUs held by other jobs",
                    STALL_WARNING_S, len(pending), free, cluster_cpus(),
                )
            for ref in ready:
                item, actor = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayActorError as err:
                    if attempts[index[id(item)]] >= MAX_ATTEMPTS:
                        raise RuntimeError(
                            f"{_describe(item)}: worker died {attempts[index[id(item)]]} times; giving up"
                        ) from err
                    log.warning("worker for %s died (%s); retrying on a new worker", _describe(item),
                                type(err).__name__)
                    self._replace(actor)
                    idle.append((self._actors[-1], None))
                    queue.put_back(item)
                    continue
                except RayTaskError as err:
                    if isinstance(err.cause, WcscanError):
                        raise err.cause from None
                    raise
                queue.finished(item)
                idle.append((actor, item.point))
                on_done(item, result)

    def _replace(self, actor) -> None:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already gone
            pass
        self._actors.remove(actor)
        self._actors.append(self._new_actor())

    def close(self) -> None:
        """Stop the actors (in-flight work is abandoned)."""
        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self._actors = []

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
