"""``wcscan images``: events (a dataset, a user's file, or the sampler) -> a voxel-image dataset."""

from __future__ import annotations

from pathlib import Path

from kernels.errors import ConfigError
from kernels.event_store import events_file, load_events
from kernels.files import sha256_file
from orchestrator.build.images import DEFAULT_VAL_FRACTION, plan_build, run_plan
from orchestrator.config.checks import non_negative_int, output_dir, positive_int
from orchestrator.config.services import check_services, image_bytes
from orchestrator.runtime.progress import no_progress


def _source(dataset, events_file_, stream: bool) -> str:
    sources = [name for name, on in (("--dataset", dataset is not None), ("--events-file", events_file_ is not None),
                                     ("--stream", stream)) if on]
    if len(sources) != 1:
        raise ConfigError("give exactly one of --dataset, --events-file, --stream"
                          + (f" (got {', '.join(sources)})" if sources else ""))
    return sources[0]


def _images_per_point(stream: bool, events: int | None, events_per_image: int, images_per_point: int | None) -> int:
    """K, given directly or, with --stream, as --events / --events-per-image."""
    if stream and events is not None:
        positive_int(events_per_image, "--events-per-image")
        positive_int(events, "--events")
        k, rest = divmod(events, events_per_image)
        if rest or (images_per_point is not None and images_per_point != k):
            raise ConfigError(f"--events {events} must be --images-per-point x --events-per-image "
                              f"({images_per_point or 'K'} x {events_per_image})")
        return k
    if images_per_point is None:
        raise ConfigError("--images-per-point is required" + (" (or --events with --stream)" if stream else ""))
    return images_per_point


def images_job(out: Path, bins: int, events_per_image: int, images_per_point: int | None = None, *,
               dataset: Path | None = None, events_file_: str | None = None, stream: bool = False,
               column_map: dict | None = None, val_fraction: float = DEFAULT_VAL_FRACTION,
               test_images: int | None = None, seed: int | None = None, level: str = "gen", fill: float = 0.0,
               dc9=None, windows=None, events: int | None = None, workers: int | None = 0,
               address: str | None = None, progress=no_progress) -> dict:
    """Check every option and the output, plan the build, then make the images with a bar; return the manifest."""
    source = _source(dataset, events_file_, stream)
    stream_only = [o for o, v in (("--dc9", dc9), ("--q2-window", windows), ("--events", events)) if v is not None]
    if not stream and stream_only:
        raise ConfigError(f"{', '.join(stream_only)} only go with --stream")
    if column_map and events_file_ is None:
        raise ConfigError("--column-map only goes with --events-file")
    k = _images_per_point(stream, events, events_per_image, images_per_point)
    if workers is not None:
        non_negative_int(workers, "--workers")
    output_dir(out)
    data, info = dataset, None
    if source == "--events-file":
        data = load_events(events_file_, column_map)
        info = {"path": str(Path(events_file_).resolve()), "sha256": sha256_file(events_file(events_file_)),
                "column_map": column_map or {}}
    plan = plan_build(data, out, bins, events_per_image, k, val_fraction, test_images=test_images, seed=seed,
                      level=level, fill=fill, stream=stream, dc9=dc9, windows=windows, source=info)
    n_images = sum(t.images for t in plan.tasks)
    check_services(out, image_bytes(n_images, bins), address=address, uses_ray=bool(workers))
    with progress("images", n_images, "images") as advance:
        return run_plan(plan, advance, workers, address)
