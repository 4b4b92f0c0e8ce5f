"""``wcscan generate``: scan points x events -> an event dataset, with a progress bar."""

from __future__ import annotations

from pathlib import Path

from kernels.theory import DEFAULT_WINDOWS
from orchestrator.config.checks import output_dir
from orchestrator.config.services import check_services, event_bytes
from orchestrator.generate.dataset import GenerateResult, generate
from orchestrator.runtime.progress import no_progress


def generate_job(out: Path, dc9: list[float] | None, events: int, seed: int = 0, windows=None,
                 chunk_size: int = 1_000_000, level: str = "gen", workers: int | None = None,
                 address: str | None = None, progress=None, design=None) -> GenerateResult:
    """Check ``out`` (writable, room for the events), the Ray address, then
    :func:`~orchestrator.generate.dataset.generate` with a bar over all events. The scan is ``dc9`` (delta C9
    alone) or ``design`` (a :class:`kernels.design.Design` over any coefficients)."""
    output_dir(out)
    n_points = design.n_points if design is not None else len(dc9 or ())
    sized = isinstance(events, int) and events > 0 and isinstance(level, str)
    check_services(out, event_bytes(n_points, events, level) if sized else 0, address=address, uses_ray=workers != 0)
    total = max(events, 0) * n_points if isinstance(events, int) else 0
    with (progress or no_progress)("generate", total, "events") as advance:
        return generate(out, dc9, events, seed, list(windows or DEFAULT_WINDOWS), chunk_size=chunk_size,
                        progress=advance, level=level, workers=workers, address=address, design=design)
