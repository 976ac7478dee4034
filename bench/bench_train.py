"""Training throughput through ``UnetClassifier.fit`` against a bare torch training step, side by side.

    python bench/bench_train.py               # ResNet-34 U-Net, batch 8 x 256², 4 bands, 12 timed steps
    python bench/bench_train.py --steps 30 --num-workers 1

Writes a Classified Tiles folder of generated 256² chips (6 classes) in a temporary folder, then times
(a) a bare step of the same model at the same precision (autocast + channels_last as ``fit`` picks them):
random tensors already in memory, AdamW, cross-entropy — no data loading, no Lightning — and (b) ``fit``
(Lightning, chips read from disk, normalized, augmented, loss and metrics logged). The two are interleaved
step by step (a bare step after each fit batch) so both see the same load on a shared, noisy machine.
Samples/s count training batches only, after --warmup steps. Prints both rates and the ratio (b)/(a): data
loading and Lightning must not be the bound (target >= 90 %). With --num-workers > 0 the workers prefetch
while the bare step runs, which flatters (b).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from landcover.data import prepare_data
from landcover.model import UNet
from landcover.train import UnetClassifier
from landcover.train.module import autocast_for, resolve_precision

CLASSES = [1, 2, 3, 4, 5, 6]


def write_chips(folder: Path, n: int, size: int, bands: int) -> Path:
    """n chips of smooth random imagery with blocky labels, plus the metadata of a Classified Tiles export."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    lines = []
    for i in range(n):
        coarse = rng.integers(0, len(CLASSES), (size // 32, size // 32))
        label = (np.kron(coarse, np.ones((32, 32), np.int64)) + 1).astype(np.uint8)
        image = (label[None] * 30 + rng.normal(0, 20, (bands, size, size))).clip(0, 255).astype(np.uint8)
        geo = dict(driver="GTiff", width=size, height=size, crs="EPSG:32618",
                   transform=from_origin(500000.0 + i * size, 4500000.0, 1.0, 1.0))
        name = f"{i:09d}.tif"
        with rasterio.open(folder / "images" / name, "w", count=bands, dtype="uint8", **geo) as ds:
            ds.write(image)
        with rasterio.open(folder / "labels" / name, "w", count=1, dtype="uint8", **geo) as ds:
            ds.write(label[None])
        lines.append(f"images\\{name}  labels\\{name}")
    (folder / "map.txt").write_text("\r\n".join(lines) + "\r\n")
    meta = {"MetaDataMode": "Classified_Tiles", "NumBands": bands,
            "Classes": [{"ClassValue": v, "ClassName": f"class {v}"} for v in CLASSES]}
    (folder / "esri_accumulated_stats.json").write_text(json.dumps(meta))
    return folder


class BareStep:
    """Forward + backward + AdamW step of the same model on tensors in memory, at fit's precision and layout."""

    def __init__(self, backbone: str, bands: int, batch: int, size: int, precision: str):
        torch.manual_seed(0)
        self.net = UNet(bands, len(CLASSES) + 1, backbone).to(memory_format=torch.channels_last).train()
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-4, weight_decay=1e-2)
        self.x = torch.randn(batch, bands, size, size).contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, len(CLASSES) + 1, (batch, size, size))
        self.precision = precision

    def __call__(self) -> None:
        with autocast_for(self.precision, torch.device("cpu")):
            logits = self.net(self.x)
        loss = torch.nn.functional.cross_entropy(logits.float(), self.y, ignore_index=0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


class Interleaved(L.Callback):
    """After each fit batch, one bare step: both are timed under the same (noisy, shared) machine load.

    A fit batch is timed from the end of the previous bare step to the end of the batch, so it includes
    fetching the batch (reading chips, normalizing, augmenting) and Lightning's hooks and logging.
    """

    def __init__(self, bare: BareStep, warmup: int):
        self.bare, self.warmup = bare, warmup
        self.fit_times: list[float] = []
        self.bare_times: list[float] = []
        self.ready: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self.ready is not None and batch_idx >= self.warmup:
            self.fit_times.append(now - self.ready)
        start = time.perf_counter()
        self.bare()
        if batch_idx >= self.warmup:
            self.bare_times.append(time.perf_counter() - start)
        self.ready = time.perf_counter()


def loading_time(data, batches: int = 6) -> float:
    """Seconds per training batch of data loading alone (after one warm-up batch)."""
    it = iter(data.train_dl)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return (time.perf_counter() - start) / batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="resnet34")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12, help="timed training steps per side")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", help="default: what fit picks (bf16-mixed on a bf16 CPU, else 32-true)")
    ap.add_argument("--num-workers", type=int, help="DataLoader workers for fit (default: prepare_data's)")
    ap.add_argument("--threads", type=int, help="thread budget (default: $LANDCOVER_THREADS, else the cores); fit "
                    "gives torch the budget less the DataLoader workers")
    args = ap.parse_args()
    if args.threads:
        os.environ["LANDCOVER_THREADS"] = str(args.threads)
    from landcover.classify.choose import cpu_description
    from landcover.threads import training_threads

    cpu = cpu_description()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, flags {' '.join(cpu['flags']) or '-'}")
    precision = resolve_precision(args.precision, "cpu")
    print(f"{args.backbone} U-Net, batch {args.batch} x {args.bands} x {args.size}², precision {precision}")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        folder = write_chips(Path(tmp) / "chips", args.batch * (args.warmup + args.steps + 1) + 2, args.size,
                             args.bands)
        data = prepare_data(folder, batch_size=args.batch, val_split_pct=0.02, num_workers=args.num_workers)
        load = loading_time(data)
        # the bare step runs with the threads fit will use (fit sets them the same way)
        torch.set_num_threads(training_threads(data.num_workers).threads)
        timer = Interleaved(BareStep(args.backbone, args.bands, args.batch, args.size, precision), args.warmup)
        torch.manual_seed(0)
        model = UnetClassifier(data, backbone=args.backbone, pretrained=False)  # speed does not depend on weights
        model.fit(1, lr=1e-4, checkpoint=False, precision=precision, callbacks=[timer],
                  limit_train_batches=args.warmup + args.steps, limit_val_batches=1)
    print(f"threads: {model.threads.describe() if model.threads else torch.get_num_threads()}")
    fit = args.batch * len(timer.fit_times) / sum(timer.fit_times)
    bare = args.batch * len(timer.bare_times) / sum(timer.bare_times)
    print(f"{'bare torch step':<24}{bare:8.2f} samples/s")
    print(f"{'UnetClassifier.fit':<24}{fit:8.2f} samples/s   (data loading alone: {load * 1000:.0f} ms per batch "
          f"of {args.batch})")
    print(f"{'ratio fit / bare':<24}{fit / bare:8.1%}   over {len(timer.fit_times)} interleaved steps each")

if __name__ == "__main__":
    main()
