"""``landcover demo``: the seed notebook's whole workflow on the embedded sample scene, offline.

Every step goes through the same public API a user calls — export (extent in Web Mercator, cell size 2) →
prepare_data → show_batch → lr_find → fit → show_results → save → classify the unseen part of the scene
(padding + TTA) → evaluate against its labels → map (PNG + HTML) → class areas — and ends in one HTML report.

The default run trains a ResNet-18 U-Net to a time budget (:mod:`.budget`: about 4.5 minutes in all on 2 cores
of any x86-64 CPU, sized from the learning-rate finder's own steps), with class-balanced cross-entropy mixed with
a per-class Dice loss so that the rare classes (buildings, roads) are learned too; ``--full`` trains the seed's
ResNet-34 for 30 epochs. No training checkpoints are written: only the saved model package.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import LandcoverError, arg
from ..raster import check_writable_dir
from .budget import DemoProgress, clock, plan_epochs
from .report import Report
from .scene import make_scene, write_preview

MODES = ("default", "quick", "full")
#: the steps after training, whose seconds :func:`.budget.plan_epochs` estimates together
AFTER_STEPS = ("classify", "evaluate", "maps")


@dataclass(frozen=True)
class DemoSettings:
    """How hard the demo works: the modes differ only in these numbers.

    ``budget_s``: seconds the whole run should take (training is sized to fit), or None to train ``epochs``."""

    mode: str
    backbone: str
    batch_size: int
    lr_find_steps: int
    budget_s: float | None = None
    epochs: int | None = None
    #: the fewest epochs a budgeted run trains, even past its budget on a slow or busy machine: fewer leave the
    #: rare classes unlearned. On a 2-core Zen 3 (fp32, where this minimum binds: epochs of about 16 s), seeds 0-2:
    #: 13-14 epochs, the lowest class IoU 0.54-0.62 and 254-274 s in all (15 epochs took 294 s)
    min_epochs: int = 13
    #: the learning-rate finder's range. The budgeted runs take 15-20 steps, so they spend them where a network
    #: trained with AdamW from random weights can want its rate: over arcgis.learn's 1e-7 to 10, 20 steps are
    #: 0.4 decades apart, 8 of them fall below 1e-5 where the loss does not move, and the valley's pick swung
    #: between 2.3e-4 and 6.2e-4 from scene to scene (seeds 1 and 0), undertraining buildings on seed 1's (IoU
    #: 0.41). Over 1e-5 to 1 it picks 1.3e-3 to 2.3e-3 and every class of seeds 0-2 reaches IoU 0.54 (Zen 3).
    lr_range: tuple[float, float] = (1e-5, 1.0)
    tile_size: int = 128
    stride: int = 64
    scene_size: int = 2048

    @classmethod
    def for_mode(cls, mode: str | bool = "default") -> DemoSettings:
        """``default``: ResNet-18 trained to a 4.5-minute budget (under 5 minutes on 2 cores); ``quick``: the
        same on a smaller scene (1.28 km) in about 1.5 minutes (CI); ``full``: the seed's ResNet-34 for 30 epochs.

        Batches of 8, not 16: twice the optimizer steps for the same windows, which a network trained from random
        weights for a few minutes needs (seed 0, 15 epochs on a Zen 3: buildings' IoU 0.44 with batches of 16,
        0.61 with 8, in about the same time)."""
        mode = {True: "quick", False: "default"}.get(mode, mode) if isinstance(mode, bool) else mode
        if mode == "full":
            return cls("full", backbone="resnet34", batch_size=16, lr_find_steps=80, epochs=30, lr_range=(1e-7, 10.0))
        if mode == "quick":
            return cls("quick", backbone="resnet18", batch_size=8, lr_find_steps=15, budget_s=90.0, min_epochs=10,
                       scene_size=1280)
        if mode == "default":
            return cls("default", backbone="resnet18", batch_size=8, lr_find_steps=20, budget_s=270.0)
        raise LandcoverError(f"{arg('mode', mode)}: choose one of {', '.join(MODES)}")

    def plan(self) -> dict[str, float]:
        """Estimated seconds of each step on 2 cores, for the progress bar (training is replanned once the
        learning-rate finder has measured the machine)."""
        fit = (self.budget_s or 900.0) * 0.6
        return {"scene": 12.0, "export": 8.0, "prepare": 4.0, "lr_find": 0.06 * fit, "fit": fit, "classify": 10.0,
                "evaluate": 10.0, "maps": 12.0}


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
             log=print, *, full: bool = False, progress: bool = True) -> DemoResult:
    """Run the whole workflow on the sample scene into ``out`` and write ``out/report.html``.

    Default: a ResNet-18 trained to fit the run in about 4.5 minutes; ``quick``: about 1.5 minutes; ``full``: the
    seed's ResNet-34 for 30 epochs (10 minutes or more on 2 cores). ``progress``: a progress bar with the time
    left (on stderr) besides one ``log`` line per step."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise LandcoverError(f"{out}: is a file; give {arg('out')} a folder for the demo's outputs")
    check_writable_dir(out)
    if (out / "report.html").exists() and any((out / d).exists() for d in ("chips", "model")):
        raise LandcoverError(f"{out}: holds an earlier demo run; give another {arg('out')} or remove it")
    if quick and full:
        raise LandcoverError(f"give {arg('quick', True)} or {arg('full', True)}, not both")
    cfg = DemoSettings.for_mode("full" if full else "quick" if quick else "default")
    (out / "figures").mkdir(exist_ok=True)
    report = Report("landcover demo: land-cover classification on a sample scene",
                    intro="The arcgis.learn land-cover workflow, run offline on a generated 1 m, 4-band scene "
                          f"({cfg.mode} run). Every step below is a call of landcover's "
                          "public Python API; the same steps exist as `landcover` commands.")
    t_start = time.perf_counter()
    demo = _Demo(out, cfg, seed, report, DemoProgress(cfg.plan(), log, bar=progress))
    scene = _scene_step(demo)
    _export_step(demo, scene)
    trained = _train_step(demo)
    classified = _classify_step(demo, scene, trained.package)
    acc = _evaluate_step(demo, scene, classified)
    _maps_step(demo, scene, classified)
    demo.bar.close()
    seconds = time.perf_counter() - t_start
    report.summary = {"overall accuracy (unseen area)": f"{acc.overall_accuracy:.3f}",
                      "mean IoU": f"{acc.mean_iou:.3f}", "kappa": f"{acc.kappa:.3f}",
                      "training": f"{trained.fit_seconds:.0f} s", "total time": f"{seconds:.0f} s",
                      "mode": cfg.mode}
    page = report.write(out / "report.html")
    (out / "demo.json").write_text(json.dumps({
        "overall_accuracy": acc.overall_accuracy, "mean_iou": acc.mean_iou, "kappa": acc.kappa,
        "seconds": seconds, "fit_seconds": trained.fit_seconds, "quick": cfg.mode == "quick", "mode": cfg.mode,
        "budget_seconds": cfg.budget_s, "backbone": cfg.backbone, "epochs": trained.epochs, "lr": trained.lr,
        "lr_find_range": list(cfg.lr_range),
        "per_class_iou": {row["name"]: row.get("iou") for row in acc.per_class if "name" in row}}, indent=2))
    return DemoResult(page, classified, trained.package, acc.overall_accuracy, acc.mean_iou, seconds)


@dataclass
class _Demo:
    """What every step of one demo run shares: where it writes, how hard it works, its report and progress."""

    out: Path
    cfg: DemoSettings
    seed: int
    report: Report
    bar: DemoProgress

    def step(self, name: str, label: str | None = None) -> float:
        """Start step ``name`` on the progress bar; returns its start time."""
        return self.bar.step(name, label or name)

    def savefig(self, fig, name: str) -> Path:
        import matplotlib.pyplot as plt

        path = self.out / "figures" / name
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return path


def _scene_step(demo: _Demo):
    """1. The scene: imagery in UTM 18N at 1 m, labels in Web Mercator at 2 m."""
    t = demo.step("scene", "generating the sample scene")
    scene = make_scene(demo.out / "scene", size=demo.cfg.scene_size, seed=demo.seed)
    preview = write_preview(scene, demo.out / "figures" / "scene_preview.png")
    demo.report.add_step(
        "Sample scene", f"A procedural {scene.size}×{scene.size} m orthophoto (R, G, B, NIR) in {scene.crs} and its "
        f"land-cover labels on another grid ({scene.label_crs}, {scene.label_cell_size} m). The right-most "
        "quarter is held out: export and training never see it.",
        figures=[("scene, false colour, labels", preview)],
        table={c.name: f"{100 * scene.class_fractions.get(c.value, 0):.1f} %" for c in scene.classes},
        files=[scene.imagery, scene.labels, scene.classes_json], code=f"make_scene({str(demo.out / 'scene')!r})",
        seconds=time.perf_counter() - t)
    return scene


def _export_step(demo: _Demo, scene) -> None:
    """2. Export: extent in Web Mercator and cell size 2, as in the seed's sample."""
    from .. import export_training_data

    cfg, chips = demo.cfg, demo.out / "chips"
    t = demo.step("export", "exporting training chips")
    summary = export_training_data(
        scene.imagery, scene.labels, chips, classes=scene.classes_json, tile_size=cfg.tile_size,
        stride=cfg.stride, chip_format="tif", cell_size=2, extent=scene.train_extent_3857,
        extent_crs="EPSG:3857", progress=False)
    demo.report.add_step(
        "Export training data (Classified Tiles)", str(summary),
        files=[chips / "esri_accumulated_stats.json", chips / "stats.txt", chips / "map.txt"],
        code=f"export_training_data(imagery, labels, 'chips', tile_size={cfg.tile_size}, stride={cfg.stride}, "
             f"cell_size=2, extent={tuple(round(v) for v in scene.train_extent_3857)}, extent_crs='EPSG:3857')",
        seconds=time.perf_counter() - t)


class _Trained(NamedTuple):
    """What training gave: the saved package, the epochs, the seconds fit took and the learning rate it used."""

    package: Path
    epochs: int
    fit_seconds: float
    lr: float


def _train_step(demo: _Demo) -> _Trained:
    """3. Train: prepare_data, show_batch, lr_find, fit (sized to the budget), show_results, save."""
    from lightning.pytorch import seed_everything

    from .. import UnetClassifier, prepare_data

    cfg = demo.cfg
    t = demo.step("prepare", "preparing data")
    data = prepare_data(demo.out / "chips", batch_size=cfg.batch_size, seed=demo.seed)
    batch_fig = demo.savefig(data.show_batch(rows=2), "show_batch.png")
    # Class-balanced cross-entropy mixed with a per-class (macro) Dice loss: buildings are ~2 % of the scene
    # and plain cross-entropy learned never to predict them in a short run. No ImageNet weights (offline).
    # The same seed, the same run: the network's first weights, its windows and augmentation (as ``landcover
    # train --seed``), not only the scene and the split.
    seed_everything(demo.seed, workers=True, verbose=False)
    model = UnetClassifier(data, backbone=cfg.backbone, pretrained=False, **LOSS)
    t_lr = demo.step("lr_find", f"lr_find ({cfg.lr_find_steps} steps)")
    lr = model.lr_find(num_steps=cfg.lr_find_steps, start_lr=cfg.lr_range[0], end_lr=cfg.lr_range[1],
                       allow_plot=False)
    lr_fig = demo.savefig(model.lr_figure(), "lr_find.png")
    lr_seconds = time.perf_counter() - t_lr
    epochs = cfg.epochs or _sized_epochs(cfg, data, model, lr_seconds, demo.bar)
    t_fit = demo.step("fit", f"fit({epochs}) with lr={lr:.2e}")
    # One rate for every layer, as fit(lr=None) trains a network without pretrained weights: a tenth of it for
    # the first encoder stage (arcgis.learn's slice, which protects ImageNet features) only slows an encoder that
    # starts from random weights. No checkpoints: a run that ends in minutes needs no resuming, and each was
    # ~100-300 MB on disk.
    model.fit(epochs, lr=lr, checkpoint=False, callbacks=[_EpochProgress(demo.bar, epochs)])
    fit_seconds = time.perf_counter() - t_fit
    loss_fig = demo.savefig(model.plot_losses(), "loss_graph.png")
    results_fig = demo.savefig(model.show_results(rows=3), "show_results.png")
    package = model.save(demo.out / "model" / "landcover_unet")
    demo.report.add_step(
        "Train a U-Net", f"{len(data.train_ds)} training and {len(data.valid_ds)} validation chips; "
        f"{cfg.backbone} encoder; lr_find suggested {lr:.2e} ({lr_seconds:.0f} s); fit {epochs} epochs "
        f"({fit_seconds:.0f} s). Validation: overall accuracy {model.accuracy():.3f}, mean IoU "
        f"{model.mIOU(mean=True):.3f}.",
        figures=[("show_batch", batch_fig), ("lr_find", lr_fig), ("losses", loss_fig),
                 ("show_results", results_fig)],
        table=model.per_class_metrics(),
        files=sorted(p for p in package.iterdir() if p.is_file()),
        code=f"data = prepare_data('chips', batch_size={cfg.batch_size})\n"
             f"model = UnetClassifier(data, backbone='{cfg.backbone}', pretrained=False, "
             f"{', '.join(f'{k}={v!r}' for k, v in LOSS.items())})\n"
             f"lr = model.lr_find(num_steps={cfg.lr_find_steps}, start_lr={cfg.lr_range[0]:g}, "
             f"end_lr={cfg.lr_range[1]:g})\n"
             f"model.fit({epochs}, lr=lr, checkpoint=False)\nmodel.save('landcover_unet')",
        seconds=time.perf_counter() - t)
    return _Trained(package, epochs, fit_seconds, lr)


def _classify_step(demo: _Demo, scene, package: Path) -> Path:
    """4. Classify the unseen quarter at 2 m with padding and test-time augmentation."""
    from .. import classify_pixels

    pad = demo.cfg.tile_size // 4
    t = demo.step("classify", "classifying the unseen part of the scene")
    classified = demo.out / "classified_test_area.tif"
    classify_pixels(scene.imagery, package, classified, padding=pad, test_time_augmentation=True,
                    extent=scene.test_extent, cell_size=2, overwrite=True, progress=False)
    demo.report.add_step(
        "Classify pixels (unseen area)", "A cloud-optimized GeoTIFF of class values with colours and names; "
        "tile logits blended with a border-aware window.",
        files=[classified, classified.with_suffix(".qml"), Path(str(classified) + ".aux.xml")],
        code=f"classify_pixels(imagery, 'model/landcover_unet', 'classified_test_area.tif', "
             f"padding={pad}, test_time_augmentation=True, extent=test_extent, cell_size=2)",
        seconds=time.perf_counter() - t)
    return classified


def _evaluate_step(demo: _Demo, scene, classified: Path):
    """5. Evaluate against the reference labels (another CRS and resolution), with an Olofsson sample."""
    from .. import evaluate

    out = demo.out
    t = demo.step("evaluate", "evaluating")
    acc = evaluate(classified, scene.labels, out=out / "accuracy.json")
    sampled = evaluate(classified, scene.labels, out=out / "accuracy_sampled.json", sample=600, seed=demo.seed)
    est = sampled.sample["estimates"]
    demo.report.add_step(
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
        figures=[(p.stem, p) for p in sorted(out.glob("accuracy*.png"))],
        files=[out / "accuracy.json", out / "accuracy_sampled.json"],
        code="evaluate('classified_test_area.tif', labels, out='accuracy.json')",
        seconds=time.perf_counter() - t)
    return acc


def _maps_step(demo: _Demo, scene, classified: Path) -> None:
    """6. Maps (PNG and offline HTML) and class areas."""
    from .. import class_areas, render_map

    out = demo.out
    t = demo.step("maps", "maps and areas")
    title = "Land cover, unseen area (landcover demo)"
    png = render_map(classified, imagery=scene.imagery, bands=[1, 2, 3], out=out / "map.png", title=title)
    html = render_map(classified, imagery=scene.imagery, bands=[1, 2, 3], out=out / "map.html", title=title)
    areas = class_areas(classified, out=out / "areas.csv")
    demo.report.add_step(
        "Map and class areas", "Classes over the imagery (PNG), an offline interactive page (HTML) and the area "
        "of each class.", table=areas.to_dict()["classes"], figures=[("map", png.path)],
        files=[html.path, out / "areas.csv"],
        code="render_map(classified, imagery, bands=[1, 2, 3], out='map.png' | 'map.html'); class_areas(classified)",
        seconds=time.perf_counter() - t)


#: the demo's loss: class-balanced cross-entropy with a third of per-class Dice
LOSS = {"class_balancing": True, "dice_loss_fraction": 0.3, "dice_loss_average": "macro"}


def _sized_epochs(cfg: DemoSettings, data, model, lr_seconds: float, bar: DemoProgress) -> int:
    """Epochs that fit the rest of the budget, from the learning-rate finder's measured seconds per step."""
    steps = max(1, len(model.lr_finder["rates"]))
    batch_px = cfg.batch_size * cfg.tile_size ** 2
    train_steps = max(1, len(data.train_ds) // cfg.batch_size)
    valid_steps = max(1, -(-len(data.valid_ds) // cfg.batch_size))
    # the unseen quarter at 2 m, with the tiling's overlap (padding a quarter of the tile: about 4x)
    classify_px = 4.0 * (cfg.scene_size // 2) ** 2 / 4
    plan = plan_epochs(cfg.budget_s - bar.elapsed(), lr_seconds / steps, train_steps, valid_steps, classify_px,
                       batch_px, min_epochs=cfg.min_epochs)
    bar.log(f"[demo] {plan.describe()}; budget {clock(cfg.budget_s)} in all")
    bar.replan("fit", plan.epochs * plan.epoch_s)
    after = {name: bar.plan[name] for name in AFTER_STEPS}
    for name, seconds in after.items():  # the steps after training, in their planned shares of the estimate
        bar.replan(name, plan.after_s * seconds / sum(after.values()))
    return plan.epochs


def _epoch_progress_callback():
    import lightning.pytorch as L

    class EpochProgress(L.Callback):
        """Moves the demo's progress bar at the end of each training epoch."""

        def __init__(self, bar: DemoProgress, epochs: int):
            self.bar, self.epochs = bar, epochs

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            done = trainer.current_epoch + 1
            self.bar.advance(done / self.epochs, f"epoch {done}/{self.epochs}")

    return EpochProgress


def _EpochProgress(bar: DemoProgress, epochs: int):  # noqa: N802 (a class made on first use: lightning is heavy)
    return _epoch_progress_callback()(bar, epochs)
