"""Every benchmark behind ``wcscan bench``, by name; each returns a flat dict of figures (medians).

- ``generate``, ``fit``: :mod:`orchestrator.bench.kernels` (events/s and fits/s per core, beside baselines);
- ``images``: :mod:`orchestrator.bench.images` (voxelising against scipy's ``binned_statistic_dd``);
- ``scan``: :mod:`orchestrator.bench.scan` (Ray generation with 1 and 2 workers);
- ``resnet``: :mod:`orchestrator.bench.kernels` (ResNet training images/s, a GPU node's figure);
- ``stream``: :mod:`orchestrator.bench.stream` (training samples/s, streamed from Ray against from memory).
"""

from __future__ import annotations

from orchestrator.config.checks import positive_int

BENCHMARKS = ("generate", "fit", "images", "scan", "resnet", "globalfit", "stream")


def run_bench(what: str, **resnet) -> dict:
    """Run one benchmark; ``resnet``: the options of :func:`orchestrator.bench.kernels.bench_resnet`
    (and ``nuisances``, bench fit's)."""
    nuisances = resnet.pop("nuisances", None) or "none"
    if nuisances != "none" and what != "fit":
        from kernels.errors import ConfigError

        raise ConfigError(f"--nuisances is an option of bench fit, not of bench {what}")
    if what == "images":
        from orchestrator.bench.images import bench_images

        return bench_images()
    if what == "scan":
        from orchestrator.bench.scan import bench_scan

        return bench_scan()
    if what == "stream":
        from orchestrator.bench.stream import bench_stream

        return bench_stream()
    if what == "globalfit":
        from orchestrator.bench.globalfit import bench_globalfit

        return bench_globalfit()
    from orchestrator.bench import kernels

    if what == "resnet":
        for name in ("width", "bins", "batch", "steps", "repeats"):
            positive_int(resnet[name], f"--{name}")
        from orchestrator.config.checks import device

        device(resnet.get("device"))
        return kernels.bench_resnet(**resnet)
    if what == "generate":
        return kernels.bench_generate()
    return kernels.bench_fit(nuisances=nuisances)
