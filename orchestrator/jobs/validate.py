"""``wcscan validate``: the generator against flavio, and toy ML fits against the Cramér–Rao bound."""

from __future__ import annotations

from kernels.errors import ConfigError
from orchestrator.config.checks import non_negative_int, positive_int
from orchestrator.evaluate.validate import validate_fit, validate_generator
from orchestrator.runtime.progress import no_progress


def validate_job(dc9: list[float], events: int = 1_000_000, fit_sets: int = 100, events_per_set: int = 24_000,
                 seed: int = 0, progress=no_progress) -> tuple[list[dict], dict | None]:
    """(observable rows, the fit row or None when ``fit_sets`` is 0); options checked first."""
    positive_int(events, "--events")
    positive_int(events_per_set, "--events-per-set")
    if non_negative_int(fit_sets, "--fit-sets") == 1:
        raise ConfigError(f"--fit-sets must be 0 (skip) or at least 2, got {fit_sets}")
    non_negative_int(seed, "--seed")
    with progress("validate", len(dc9), "points") as advance:
        rows = validate_generator(dc9, events, seed, progress=advance)
    fit = None
    if fit_sets:
        with progress("fit", fit_sets, "sets") as advance:
            fit = validate_fit(dc9[0], events_per_set, fit_sets, seed, progress=advance)
    return rows, fit
