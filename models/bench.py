r"""Training throughput of the 3D ResNet: images per second for forward + backward + optimiser step.

Synthetic images (random occupancy and mean q2, with empty voxels) are made
once on the device, so the number measures the network and the optimiser, not
the data pipeline. ``warmup`` steps run first (cuDNN autotuning, allocator
growth) and are not timed; on CUDA the timing is bracketed by synchronisations.
The seed study's configuration is the default: depth 34, 50 bins, batch 32.

>>> r = resnet_throughput(depth=10, bins=8, batch=2, steps=1, warmup=0, width=4, amp=False, device="cpu")
>>> r["device"], r["images"], r["images_per_s"] > 0
('cpu', 2, True)
"""

from __future__ import annotations

import time

import torch
from torch import nn

from kernels.errors import ConfigError
from models.resnet3d import ResNet3d
from models.training import resolve_device

__all__ = ["resnet_throughput"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resnet_throughput(
    depth: int = 34,
    bins: int = 50,
    batch: int = 32,
    steps: int = 20,
    amp: bool = True,
    device: str | torch.device | None = None,
    *,
    width: int = 64,
    warmup: int = 3,
    amp_dtype: str = "float16",
    channels_last: bool = False,
    cudnn_benchmark: bool = True,
    seed: int = 0,
) -> dict:
    """Measure training images/s of ``ResNet3d(depth, width)`` on ``batch`` images of ``bins``^3 voxels.

    ``amp`` (mixed precision, ``amp_dtype`` float16 with a GradScaler or bfloat16)
    applies on CUDA only. ``channels_last`` uses the ``channels_last_3d`` memory
    format; ``cudnn_benchmark`` lets cuDNN pick kernels during warm-up (the
    global flag is restored afterwards). Returns a dict: ``images_per_s``,
    ``seconds`` (timed), ``step_ms``, ``images`` (timed), ``device``,
    ``device_name``, ``depth``, ``width``, ``bins``, ``batch``, ``steps``, ``amp``
    (as actually used), ``amp_dtype``, ``channels_last``, ``parameters``,
    ``peak_memory_gb`` (CUDA only, else None).
    """
    if steps < 1 or batch < 1 or warmup < 0:
        raise ConfigError(f"steps and batch must be >= 1 and warmup >= 0, got {steps}, {batch}, {warmup}")
    if amp_dtype not in ("float16", "bfloat16"):
        raise ConfigError(f"amp_dtype must be float16 or bfloat16, got {amp_dtype!r}")
    dev = resolve_device(device)
    use_amp = bool(amp) and dev.type == "cuda"
    dtype = torch.float16 if amp_dtype == "float16" else torch.bfloat16
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    model = ResNet3d(depth=depth, width=width).to(dev)
    counts = torch.poisson(torch.full((batch, bins, bins, bins), 0.2), generator=gen)
    q2 = torch.where(counts > 0, 1.1 + 4.9 * torch.rand(counts.shape, generator=gen), torch.nan)
    x = torch.stack([q2, counts], dim=1).to(dev)
    y = torch.randn(batch, generator=gen).to(dev)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_amp and dtype == torch.float16)
    loss_fn = nn.L1Loss()
    saved_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step() -> None:
        with torch.autocast(device_type=dev.type, dtype=dtype, enabled=use_amp):
            out = model(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    try:
        model.train()
        for _ in range(warmup):
            step()
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(dev)
        seconds = time.perf_counter() - t0
    finally:
        torch.backends.cudnn.benchmark = saved_benchmark
    images = steps * batch
    return {
        "images_per_s": images / seconds if seconds > 0 else float("inf"),
        "seconds": seconds,
        "step_ms": 1e3 * seconds / max(steps, 1),
        "images": images,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "depth": depth,
        "width": width,
        "bins": bins,
        "batch": batch,
        "steps": steps,
        "amp": use_amp,
        "amp_dtype": amp_dtype if use_amp else None,
        "channels_last": channels_last,
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_memory_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
    }
