"""``landcover demo``: the seed notebook's whole workflow on the embedded sample scene, offline.

Every step goes through the same public API a user calls — export (extent in Web Mercator, cell size 2) →
prepare_data → show_batch → lr_find → fit → show_results → save → classify the unseen part of the scene
(padding + TTA) → evaluate against its labels → map (PNG + HTML) → class areas — and ends in one HTML report.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import LandcoverError, arg
from ..raster import check_writable_dir
from .report import Report
from .scene import make_scene, write_preview


@dataclass(frozen=True)
class DemoSettings:
    """How hard the demo works: the full run and ``--quick`` differ only in these numbers."""

    backbone: str
    epochs: int
    batch_size: int
    lr_find_steps: int
    tile_size: int = 128
    stride: int = 64
    scene_size: int = 2048

    @classmethod
    def for_mode(cls, quick: bool) -> DemoSettings:
        # Quick: a smaller encoder and fewer epochs keep CI under 3 minutes on 2 cores; the full run uses the
        # seed's ResNet-34 and trains long enough to pass 0.85 overall accuracy on the unseen quarter.
        if quick:
            return cls(backbone="resnet18", epochs=15, batch_size=16, lr_find_steps=40)
        return cls(backbone="resnet34", epochs=30, batch_size=16, lr_find_steps=80)


@dataclass
class DemoResult:
    """Where the demo wrote things and its headline figures."""

    report: Path
    classified: Path
    model: Path
    overall_accuracy: float
    mean_iou: float
    seconds: float


def run_demo(out: str | os.PathLike = "landcover-demo", quick: bool = False, seed: int = 0,
             log=print) -> DemoResult:
    """Run the whole workflow on the sample scene into ``out`` and write ``out/report.html``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import (
        UnetClassifier,
        class_areas,
        classify_pixels,
        evaluate,
        export_training_data,
        prepare_data,
        render_map,
    )

    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise LandcoverError(f"{out}: is a file; give {arg('out')} a folder for the demo's outputs")
    check_writable_dir(out)
    if (out / "report.html").exists() and any((out / d).exists() for d in ("chips", "model")):
        raise LandcoverError(f"{out}: holds an earlier demo run; give another {arg('out')} or remove it")
    cfg = DemoSettings.for_mode(quick)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    report = Report("landcover demo: land-cover classification on a sample scene",
                    intro="The arcgis.learn land-cover workflow, run offline on a generated 1 m, 4-band scene "
                          f"({'quick mode' if quick else 'full run'}). Every step below is a call of landcover's "
                          "public Python API; the same steps exist as `landcover` commands.")
    t_start = time.perf_counter()

    def step(name: str) -> float:
        log(f"[demo] {name} ...")
        return time.perf_counter()

    def savefig(fig, name: str) -> Path:
        path = figures / name
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return path

    # 1. The scene: imagery in UTM 18N at 1 m, labels in Web Mercator at 2 m.
    t = step("generating the sample scene")
    scene = make_scene(out / "scene", size=cfg.scene_size, seed=seed)
    preview = write_preview(scene, figures / "scene_preview.png")
    report.add_step(
        "Sample scene", f"A procedural {scene.size}×{scene.size} m orthophoto (R, G, B, NIR) in {scene.crs} and its "
        f"land-cover labels on another grid ({scene.label_crs}, {scene.label_cell_size} m). The right-most "
        "quarter is held out: export and training never see it.",
        figures=[("scene, false colour, labels", preview)],
        table={c.name: f"{100 * scene.class_fractions.get(c.value, 0):.1f} %" for c in scene.classes},
        files=[scene.imagery, scene.labels, scene.classes_json], code=f"make_scene({str(out / 'scene')!r})",
        seconds=time.perf_counter() - t)

    # 2. Export: extent in Web Mercator and cell size 2, as in the seed's sample.
    t = step("exporting training chips")
    chips = out / "chips"
    summary = export_training_data(
        scene.imagery, scene.labels, chips, classes=scene.classes_json, tile_size=cfg.tile_size,
        stride=cfg.stride, chip_format="tif", cell_size=2, extent=scene.train_extent_3857,
        extent_crs="EPSG:3857", progress=False)
    report.add_step(
        "Export training data (Classified Tiles)", str(summary),
        files=[chips / "esri_accumulated_stats.json", chips / "stats.txt", chips / "map.txt"],
        code=f"export_training_data(imagery, labels, 'chips', tile_size={cfg.tile_size}, stride={cfg.stride}, "
             f"cell_size=2, extent={tuple(round(v) for v in scene.train_extent_3857)}, extent_crs='EPSG:3857')",
        seconds=time.perf_counter() - t)

    # 3. Train.
    t = step("preparing data")
    data = prepare_data(chips, batch_size=cfg.batch_size, seed=seed)
    batch_fig = savefig(data.show_batch(rows=2), "show_batch.png")
    model = UnetClassifier(data, backbone=cfg.backbone)
    t_lr = step("lr_find")
    lr = model.lr_find(num_steps=cfg.lr_find_steps)
    lr_fig = savefig(model.lr_figure(), "lr_find.png")
    lr_seconds = time.perf_counter() - t_lr
    t_fit = step(f"fit({cfg.epochs}) with lr=slice({lr / 10:.2e}, {lr:.2e})")
    model.fit(cfg.epochs, lr=slice(lr / 10, lr))
    fit_seconds = time.perf_counter() - t_fit
    loss_fig = savefig(model.plot_losses(), "loss_graph.png")
    results_fig = savefig(model.show_results(rows=3), "show_results.png")
    package = model.save(out / "model" / "landcover_unet")
    report.add_step(
        "Train a U-Net", f"{len(data.train_ds)} training and {len(data.valid_ds)} validation chips; "
        f"{cfg.backbone} encoder; lr_find suggested {lr:.2e} ({lr_seconds:.0f} s); fit {cfg.epochs} epochs "
        f"({fit_seconds:.0f} s). Validation: overall accuracy {model.accuracy():.3f}, mean IoU "
        f"{model.mIOU(mean=True):.3f}.",
        figures=[("show_batch", batch_fig), ("lr_find", lr_fig), ("losses", loss_fig),
                 ("show_results", results_fig)],
        table=model.per_class_metrics(),
        files=sorted(p for p in package.iterdir() if p.is_file()),
        code=f"data = prepare_data('chips', batch_size={cfg.batch_size})\n"
             f"model = UnetClassifier(data, backbone='{cfg.backbone}')\nlr = model.lr_find()\n"
             f"model.fit({cfg.epochs}, lr=slice(lr / 10, lr))\nmodel.save('landcover_unet')",
        seconds=time.perf_counter() - t)

    # 4. Classify the unseen quarter at 2 m with padding and test-time augmentation.
    t = step("classifying the unseen part of the scene")
    classified = out / "classified_test_area.tif"
    classify_pixels(scene.imagery, package, classified, padding=cfg.tile_size // 4, test_time_augmentation=True,
                    extent=scene.test_extent, cell_size=2, overwrite=True, progress=False)
    report.add_step(
        "Classify pixels (unseen area)", "A cloud-optimized GeoTIFF of class values with colours and names; "
        "tile logits blended with a border-aware window.",
        files=[classified, classified.with_suffix(".qml"), Path(str(classified) + ".aux.xml")],
        code=f"classify_pixels(imagery, 'model/landcover_unet', 'classified_test_area.tif', "
             f"padding={cfg.tile_size // 4}, test_time_augmentation=True, extent=test_extent, cell_size=2)",
        seconds=time.perf_counter() - t)

    # 5. Evaluate against the reference labels (another CRS and resolution), with an Olofsson sample.
    t = step("evaluating")
    acc = evaluate(classified, scene.labels, out=out / "accuracy.json")
    sampled = evaluate(classified, scene.labels, out=out / "accuracy_sampled.json", sample=600, seed=seed)
    heatmaps = sorted(out.glob("accuracy*.png"))
    est = sampled.sample["estimates"]
    report.add_step(
        "Accuracy assessment", f"Overall accuracy {acc.overall_accuracy:.3f}, kappa {acc.kappa:.3f}, mean IoU "
        f"{acc.mean_iou:.3f} over {acc.pixels_compared:,} pixels of the unseen area, against the reference labels "
        f"(another CRS and resolution, aligned by nearest neighbour). A stratified sample of 600 pixels gives "
        f"the area-adjusted overall accuracy {est['overall_accuracy']:.3f} ± {est['overall_ci95']:.3f} (95 %) "
        "and the class areas below (Olofsson et al. 2014).",
        tables={
            "Per class (all pixels)": [
                {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in acc.per_class],
            "Area estimates from the sample (ha, 95 % CI)": [
                {"class": c["name"], "mapped": round(c["map_area"], 2),
                 "estimated": f"{c['area']:.2f} ± {c['area_ci95']:.2f}",
                 "user's": "" if c["users_accuracy"] is None else f"{c['users_accuracy']:.3f}",
                 "producer's": f"{c['producers_accuracy']:.3f}"} for c in est["classes"]],
        },
        figures=[(p.stem, p) for p in heatmaps], files=[out / "accuracy.json", out / "accuracy_sampled.json"],
        code="evaluate('classified_test_area.tif', labels, out='accuracy.json')",
        seconds=time.perf_counter() - t)

    # 6. Maps and areas.
    t = step("maps and areas")
    png = render_map(classified, imagery=scene.imagery, bands=[1, 2, 3], out=out / "map.png",
                     title="Land cover, unseen area (landcover demo)")
    html = render_map(classified, imagery=scene.imagery, bands=[1, 2, 3], out=out / "map.html",
                      title="Land cover, unseen area (landcover demo)")
    areas = class_areas(classified, out=out / "areas.csv")
    report.add_step(
        "Map and class areas", "Classes over the imagery (PNG), an offline interactive page (HTML) and the area "
        "of each class.", table=areas.to_dict()["classes"], figures=[("map", png.path)],
        files=[html.path, out / "areas.csv"],
        code="render_map(classified, imagery, bands=[1, 2, 3], out='map.png' | 'map.html'); class_areas(classified)",
        seconds=time.perf_counter() - t)

    seconds = time.perf_counter() - t_start
    report.summary = {"overall accuracy (unseen area)": f"{acc.overall_accuracy:.3f}",
                      "mean IoU": f"{acc.mean_iou:.3f}", "kappa": f"{acc.kappa:.3f}",
                      "training": f"{fit_seconds:.0f} s", "total time": f"{seconds:.0f} s",
                      "mode": "quick" if quick else "full"}
    page = report.write(out / "report.html")
    (out / "demo.json").write_text(json.dumps({
        "overall_accuracy": acc.overall_accuracy, "mean_iou": acc.mean_iou, "kappa": acc.kappa,
        "seconds": seconds, "fit_seconds": fit_seconds, "quick": quick, "backbone": cfg.backbone,
        "epochs": cfg.epochs}, indent=2))
    return DemoResult(page, classified, package, acc.overall_accuracy, acc.mean_iou, seconds)
