"""``wcscan images``."""

from __future__ import annotations

import click

from orchestrator.cli.common import PATH, common_options, progress_factory, stdout
from orchestrator.cli.types import COLUMN_MAP, DC9, WINDOW

EPILOG = """\b
Examples:
  # the seed study's images: 50^3 voxels, 24k events each, 3300 train+val
  # images per point (20% val) and 900 test images from independent MC
  wcscan images --dataset out/events --bins 50 --events-per-image 24000 \\
      --images-per-point 3300 --test-images 900 --out out/images
\b
  # a laptop-sized set: 16^3 voxels
  wcscan images --dataset out/events --bins 16 --events-per-image 2000 \\
      --images-per-point 50 --out out/images16
\b
  # streaming: images straight from the sampler, no events stored
  wcscan images --stream --dc9 -2:1.1:22 --bins 16 --events-per-image 2000 \\
      --images-per-point 50 --seed 1 --out out/images16
\b
  # your own events (train/val only); map your column names to wcscan's
  wcscan images --events-file my.parquet --column-map q2=Q2,cos_theta_mu=ctl \\
      --bins 16 --events-per-image 2000 --images-per-point 10 --out out/mine

--bins 50 --events-per-image 24000 reproduces the seed study. Train and val images use disjoint consecutive
blocks of each point's events (train first); test images come from fresh MC seeded (seed, point, 1000000 + k).
The output receives split=<train|val|test>/point=NNN.npy, float32 arrays of shape (images, 2, B, B, B):
channel 0 the mean q2 per voxel (--fill where empty), channel 1 the event count; manifest.json is written last.
"""


@click.command(epilog=EPILOG, short_help="Turn events into a voxel-image dataset (mean q2, occupancy).")
@click.option("--dataset", type=PATH, metavar="DIR", help="Event dataset from 'wcscan generate' (one source of three).")
@click.option("--events-file", metavar="FILE",
              help="Your own events: a Parquet file, or ROOT as FILE.root[:TREE] (needs uproot).")
@click.option("--stream", is_flag=True, help="Sample every split straight into images (needs --dc9).")
@click.option("--column-map", type=COLUMN_MAP, default=None,
              help="With --events-file: wcscan column = the file's column, e.g. q2=Q2,cos_theta_mu=ctl.")
@click.option("--bins", type=int, required=True, metavar="B", help="Bins per angle (50 = seed, 16 = laptop).")
@click.option("--events-per-image", type=int, required=True, metavar="N", help="Events in each image.")
@click.option("--images-per-point", type=int, default=None, metavar="K",
              help="Train + val images per scan point (required unless --stream --events).")
@click.option("--val-fraction", type=float, default=0.2, show_default=True, metavar="F", help="Fraction of K for val.")
@click.option("--test-images", type=int, default=None, metavar="T",
              help="Test images per point from fresh MC (default: as many as val).")
@click.option("--seed", type=int, default=None, metavar="S", help="Seed of the sampled MC (default: the dataset's, else 0).")
@click.option("--level", type=click.Choice(["gen", "det", "det_bkg"]), default="gen", show_default=True,
              help="With --dataset: event level.")
@click.option("--fill", type=float, default=0.0, show_default=True, metavar="V",
              help="Mean q2 of an empty voxel: a number or nan.")
@click.option("--dc9", type=DC9, default=None, help="With --stream: scan points, START:STOP:NUM or A,B,...")
@click.option("--q2-window", "q2_windows", type=WINDOW, multiple=True,
              help="With --stream: q2 window in GeV^2; repeat for several (default: 1.1,6.0).")
@click.option("--events", type=int, default=None, metavar="N",
              help="With --stream: train + val events per point (sets K = N / events-per-image).")
@click.option("--out", type=PATH, required=True, metavar="DIR", help="New image-dataset directory.")
@click.option("--workers", type=int, default=0, show_default=True, metavar="N",
              help="Ray actors, one (point, split) at a time each (0: in this process).")
@click.option("--address", default=None, metavar="ADDR", help="Join this Ray cluster (with --workers).")
@common_options
def images(dataset, events_file, stream, column_map, bins, events_per_image, images_per_point, val_fraction,
           test_images, seed, level, fill, dc9, q2_windows, events, out, workers, address, quiet, verbose):
    """Bin events in (cos_theta_mu, cos_theta_k, chi) into voxel images with two channels, the mean q2 and the
    event count per voxel, and write train, val and test splits per scan point as memory-mappable .npy files."""
    from rich.table import Table

    from orchestrator.jobs.images import images_job

    manifest = images_job(out, bins, events_per_image, images_per_point, dataset=dataset, events_file_=events_file,
                          stream=stream, column_map=column_map, val_fraction=val_fraction, test_images=test_images,
                          seed=seed, level=level, fill=fill, dc9=dc9, windows=list(q2_windows) or None,
                          events=events, workers=workers, address=address, progress=progress_factory(quiet))
    table = Table(title=f"{manifest['bins']}^3 voxels, {manifest['events_per_image']} events per image")
    for col in ("point", "dc9", "train", "val", "test"):
        table.add_column(col, justify="right")
    n_images = 0
    for p in manifest["points"]:
        counts = [p["splits"][s]["images"] for s in ("train", "val", "test")]
        n_images += sum(counts)
        d = p["shifts"].get("dc9")
        table.add_row(f"{p['index']:03d}", "-" if d is None else f"{d:.4g}", *map(str, counts))
    console = stdout()
    console.print(table)
    size = n_images * 4 * 2 * manifest["bins"] ** 3
    console.print(f"wrote {n_images} images ({size / 2**30:.3g} GiB) to {out}", soft_wrap=True)
