"""Backend agreement on a *trained* ResNet-34: does ``--backend auto`` get a fast path on real imagery?

The classify bench runs a ResNet-34 with random weights, whose logits are nearly tied everywhere, so every
reduced-precision backend flips many argmaxes and ``auto`` falls back to fp32 ONNX. This bench trains a
ResNet-34 U-Net on the real Chesapeake NAIP patches in ``../shared/data`` with the product's own steps
(mosaic → ``export_training_data`` → ``prepare_data`` → ``UnetClassifier.fit`` → ``save``), classifies the held-out
NAIP tile with every CPU backend (torch fp32/bf16/compiled bf16, ONNX Runtime fp32/int8, OpenVINO fp32/int8), and
prints, per backend: the share of pixels whose class equals fp32's (``--backend auto`` may pick a backend only at
>= 99.5 %), the overall accuracy against the held-out labels, and the seconds it took (including the first export,
quantization or compilation). The CPU's model and flags are printed with the figures: the bf16 backends are
emulated (slow) on a CPU without ``avx512_bf16``/``amx_bf16``.

    python bench/bench_agreement.py               # 20 epochs, about 6 minutes on 2 cores
    python bench/bench_agreement.py --epochs 5    # quicker, a weaker model
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chesapeake-naip-1m" / "patches_1m"
MIN_AGREEMENT = 0.995


def write_mosaic(files: list[Path], image_path: Path, label_path: Path, x0: float) -> None:
    """2 rows of NAIP patches as a 4-band image and a label raster (Chesapeake class 15 → 0, no data)."""
    cols = (len(files) + 1) // 2
    image = np.zeros((4, 512, 256 * cols), np.uint8)
    label = np.zeros((1, 512, 256 * cols), np.uint8)
    for i, f in enumerate(files):
        arr = np.load(f)["arr_0"][0]
        r, c = divmod(i, cols)
        image[:, 256 * r:256 * (r + 1), 256 * c:256 * (c + 1)] = arr[0:4].round().clip(0, 255)
        lab = arr[8].round().astype(np.uint8)
        label[0, 256 * r:256 * (r + 1), 256 * c:256 * (c + 1)] = np.where(lab == 15, 0, lab)
    geo = dict(driver="GTiff", width=image.shape[2], height=512, crs="EPSG:26917",
               transform=from_origin(x0, 4200000.0, 1.0, 1.0))
    with rasterio.open(image_path, "w", count=4, dtype="uint8", **geo) as ds:
        ds.write(image)
    with rasterio.open(label_path, "w", count=1, dtype="uint8", nodata=0, **geo) as ds:
        ds.write(label)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "landcover-agreement")
    ap.add_argument("--backends", nargs="+", help="backends to compare (default: every CPU backend)")
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA}: the Chesapeake NAIP patches are not here")
    from landcover import UnetClassifier, classify_pixels, evaluate, export_training_data, prepare_data
    from landcover.classify.choose import cpu_description
    from landcover.classify.engine import CPU_BACKENDS

    backends = ["fp32", *[b for b in (args.backends or CPU_BACKENDS) if b != "fp32"]]
    cpu = cpu_description()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, flags {' '.join(cpu['flags']) or '-'}", flush=True)

    work = args.dir
    work.mkdir(parents=True, exist_ok=True)
    patches = sorted(DATA.glob("*.npz"))
    train = [p for p in patches if "m_3708020_sw" in p.name]
    held_out = [p for p in patches if "m_3708035_ne" in p.name]
    write_mosaic(train, work / "train.tif", work / "train_labels.tif", 500000.0)
    write_mosaic(held_out, work / "heldout.tif", work / "heldout_labels.tif", 600000.0)

    package = work / "naip_resnet34"
    if not (package / "naip_resnet34.emd").exists():
        chips = work / "chips"
        if not (chips / "map.txt").exists():
            export_training_data(work / "train.tif", work / "train_labels.tif", chips, tile_size=128, stride=64,
                                 progress=False)
        torch.manual_seed(0)
        data = prepare_data(chips, batch_size=8, val_split_pct=0.2, seed=0)
        model = UnetClassifier(data, backbone="resnet34")
        t0 = time.perf_counter()
        model.fit(args.epochs, lr=slice(3e-4, 3e-3), checkpoint=False)
        print(f"trained ResNet-34 for {args.epochs} epochs in {time.perf_counter() - t0:.0f} s")
        model.save(package)

    results, reference = {}, None
    for backend in backends:
        out = work / f"heldout_{backend}.tif"
        t0 = time.perf_counter()
        classify_pixels(work / "heldout.tif", package, out, padding=32, backend=backend, overwrite=True,
                        progress=False)
        seconds = time.perf_counter() - t0
        with rasterio.open(out) as ds:
            classes = ds.read(1)
        reference = classes if reference is None else reference
        report = evaluate(out, work / "heldout_labels.tif")
        agreement = float((classes == reference).mean())
        results[backend] = {"agreement_with_fp32": round(agreement, 5),
                            "auto_may_pick": agreement >= MIN_AGREEMENT,
                            "overall_accuracy": round(report.overall_accuracy, 4),
                            "seconds_incl_first_export_or_compile": round(seconds, 1)}
        print(backend, results[backend], flush=True)
    print(json.dumps({"cpu": cpu, "epochs": args.epochs, "backends": results}, indent=1))


if __name__ == "__main__":
    main()
