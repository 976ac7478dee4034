"""``landcover train`` and ``landcover lr-find``: prepare_data → UnetClassifier → fit/lr_find → save."""

from __future__ import annotations

import argparse
import math
import tempfile
from datetime import timedelta
from pathlib import Path

from ..errors import LandcoverError

#: the CLI's loss: cross-entropy and macro Dice half and half. On a small Landsat scene cross-entropy alone never
#: predicted its four rarest classes (macro IoU 0.21); with Dice it found them (0.35), as a random forest does.
DICE_FRACTION = 0.5


def parse_lr(text: str) -> float | slice:
    """``1e-4`` → 1e-4; ``3e-5:1e-4`` → slice(3e-5, 1e-4)."""
    try:
        if ":" in text:
            lo, hi = (float(v) for v in text.split(":", 1))
        else:
            lo = hi = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate (1e-4) or a range (3e-5:1e-4)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive rate (1e-4) or a range low:high with "
                                         "0 < low <= high (3e-5:1e-4)")
    return slice(lo, hi) if ":" in text else lo


def parse_devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _number(kind, low: float, high: float | None = None, closed: bool = True, what: str = ""):
    """An argparse type: ``kind`` (int or float) in [low, high] (``closed``) or (low, high)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        inside = value is not None and math.isfinite(value) and (
            (low <= value if closed else low < value) and (high is None or (value <= high if closed else value < high)))
        if not inside:
            raise argparse.ArgumentTypeError(f"{text!r}: give {what}")
        return value

    return parse


positive_int = _number(int, 1, what="a whole number of at least 1")
non_negative_int = _number(int, 0, what="a whole number of at least 0")
open_fraction = _number(float, 0.0, 1.0, closed=False, what="a fraction between 0 and 1 (e.g. 0.1)")
fraction = _number(float, 0.0, 1.0, what="a fraction from 0 to 1")
band_number = _number(int, 1, what="band numbers counted from 1 (as in GDAL), e.g. --extract-bands 4 1 2")
upper_fraction = _number(float, 0.0, 1.0, what="a fraction more than 0 and at most 1 (e.g. 0.3)")

def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", metavar="DATA", help="Classified Tiles folder(s) from `landcover export` "
                   "or ArcGIS Export Training Data For Deep Learning; several folders are merged")
    # No `choices`: listing them would import torch for every `landcover --help`; the model names them.
    p.add_argument("--backbone", default="auto", help="encoder: resnet18, resnet34 or resnet50 (default auto: "
                   "resnet18 below 4 million labelled training pixels, else resnet34)")
    p.add_argument("--batch-size", type=positive_int, help="chips per batch (default: 8 below 4 million labelled "
                   "training pixels in chips of up to 100 pixels, with epochs of at least 16 batches of random "
                   "windows; else 16)")
    p.add_argument("--chip-size", type=positive_int, help="training crop in pixels (default: the exported chip "
                   "size)")
    p.add_argument("--val-split", type=open_fraction, default=0.1, help="fraction of chips held out (default 0.1)")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/validation split and of training: "
                   "the initial weights, the windows drawn and the augmentation (default 42; the same seed and "
                   "data give the same model on the same machine)")
    p.add_argument("--num-workers", type=non_negative_int, help="DataLoader worker processes (default: 0 on CPU)")
    p.add_argument("--extract-bands", type=band_number, nargs="+", metavar="B", help="chip bands to train on, "
                   "from 1, in order (e.g. 4 1 2 for NIR, red, green of a 4-band export; default all); the model "
                   "then reads these bands of the imagery it classifies")
    p.add_argument("--stratify", action="store_true", help="split training/validation by the classes in each chip, "
                   "so rare classes are validated too (default: a random split)")
    p.add_argument("--norm-pct", type=upper_fraction, metavar="F", help="fraction (0 < F <= 1) of the training "
                   "chips read for the band statistics when the export has none; with fewer than 300 training "
                   "chips all are read (default: 256 chips at random)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--pretrained", metavar="NAME_OR_FILE", help="weights to start from: published weights "
                       "by name (imagenet, the default; ssl4eo-s2, ssl4eo-landsat, ssl4eo-landsat-oli-sr ... "
                       "matched to the bands by name; downloaded once into $LANDCOVER_CACHE), a ResNet "
                       "checkpoint (torchvision/timm, .pth or .safetensors, file or URL) or a saved landcover "
                       "model")
    start.add_argument("--no-pretrained", action="store_true", help="start from random weights (no download)")
    p.add_argument("--class-balancing", action="store_true", help="weight the loss by inverse class frequency")
    p.add_argument("--focal-loss", action="store_true", help="focal cross-entropy (gamma 2)")
    p.add_argument("--dice-loss-fraction", type=fraction, default=DICE_FRACTION, help="the share of a Dice "
                   f"loss mixed into cross-entropy (0..1; default {DICE_FRACTION}, as nnU-Net; 0: cross-entropy "
                   "alone, arcgis.learn's default)")
    p.add_argument("--dice-loss-average", choices=["micro", "macro"], default="macro",
                   help="the mean of per-class Dice (macro, default: each class counts alike, however rare) or one "
                   "Dice over all labelled pixels (micro)")
    p.add_argument("--mixup", action="store_true", help="mixup augmentation: train on pairs of chips blended "
                   "with Beta(0.4, 0.4) weights, the loss blended to match")
    p.add_argument("--ignore-classes", type=int, nargs="+", default=[], metavar="V",
                   help="class values that incur no loss (needs more than two classes)")
    p.add_argument("--sampling", choices=["auto", "mosaic", "chips"], default="auto", help="training windows: "
                   "auto (default) draws new random windows anywhere in the labelled area every epoch when the "
                   "chips are GeoTIFFs on one grid (validation chips' footprints withheld), else random crops of "
                   "the chips; mosaic requires the windows; chips always crops the chips")
    p.add_argument("--no-augment", action="store_true", help="no flips/rotations and no brightness/contrast "
                   "jitter (default: both)")
    p.add_argument("--precision", help="Lightning precision, e.g. 32-true, bf16-mixed, 16-mixed (default: "
                   "bf16 autocast on a CPU with native bf16, mixed precision on a GPU)")


def register(sub) -> None:
    train = sub.add_parser("train", help="train a U-Net on Classified Tiles chips and save a model package",
                           description="Train a U-Net pixel classifier and write a model package (.emd, "
                           "safetensors weights, figures, model_metrics.html, .dlpk) to MODEL_DIR. Checkpoints "
                           "(best-epoch=NNN.ckpt and last.ckpt, each about three times the model's size) go to "
                           "<parent of MODEL_DIR>/models/checkpoints/<date>_<time>/, a resumed run's beside the "
                           "checkpoint it resumed from; they are kept for --resume: delete the folder when you no "
                           "longer need it.")
    _data_args(train)
    train.add_argument("--out", required=True, metavar="MODEL_DIR", help="model package folder to write (new or "
                       "empty; a model package there is only replaced with --overwrite)")
    train.add_argument("--overwrite", action="store_true", help="replace the model package in MODEL_DIR")
    train.add_argument("--epochs", type=positive_int, help="epochs (default: sized from the data, about 8000 "
                       "windows, at most 80 million window pixels, within 10..100 epochs); with --resume the run's "
                       "total, more than the checkpoint has done")
    train.add_argument("--lr", type=parse_lr, help="learning rate (1e-4) or range from the first encoder stage "
                       "to the head (3e-5:1e-4); default: found with the learning-rate finder")
    train.add_argument("--max-minutes", type=_number(float, 0.0, closed=False, what="a number of minutes above 0"),
                       metavar="M", help="stop training after M minutes, keeping the best epoch so far (default: "
                       "no limit)")
    train.add_argument("--threads", type=positive_int, metavar="N", help="compute threads of the run on a CPU, "
                       "torch threads and DataLoader workers together (default: $LANDCOVER_THREADS, else the "
                       "cores); the last line says the split")
    train.add_argument("--constant-lr", action="store_true", help="constant rate instead of one-cycle")
    stop = train.add_mutually_exclusive_group()
    stop.add_argument("--early-stopping", action="store_true", help="stop when --monitor has not improved for "
                      "a quarter of the epochs (at least 5), keeping the best epoch (the default)")
    stop.add_argument("--no-early-stopping", action="store_true", help="train all the epochs (the best epoch "
                      "is still kept)")
    train.add_argument("--monitor", default="valid_loss", choices=["valid_loss", "accuracy", "miou"],
                       help="metric for the best checkpoint and early stopping (default valid_loss, as arcgis.learn: "
                       "on a few validation chips mIoU swings with a handful of pixels of a rare class)")
    train.add_argument("--resume", metavar="CKPT", help="continue a run from its last.ckpt (or a best-*.ckpt) in "
                       "models/checkpoints/<date>_<time>/, with the same data, --backbone and bands: with the "
                       "run's own --epochs it goes on as it would have, with more a new one-cycle runs over the "
                       "added epochs; without --lr it keeps the checkpoint's rates")
    train.add_argument("--tensorboard", action="store_true", help="log losses, metrics and learning rates for "
                       "TensorBoard under <first DATA folder>/training_log/<date>_<time>/ (as arcgis.learn; "
                       "<parent of MODEL_DIR>/training_log if DATA is read-only); view with tensorboard --logdir "
                       "DATA/training_log; needs pip install tensorboard")
    train.add_argument("--devices", type=parse_devices, default="auto", help="GPUs/processes (default auto)")
    train.add_argument("--num-nodes", type=positive_int, default=1, help="machines for multi-node DDP (default 1)")
    train.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp (default auto)")
    train.set_defaults(func=run_train)

    lr = sub.add_parser("lr-find", help="plot loss against learning rate and suggest a rate",
                        description="Learning-rate range test on the training chips; writes the plot.")
    _data_args(lr)
    lr.add_argument("--out", required=True, metavar="PNG", help="plot to write (e.g. lr.png; .svg, .pdf, .jpg)")
    lr.add_argument("--overwrite", action="store_true", help="replace an existing plot")
    lr.add_argument("--steps", type=positive_int, default=100, help="batches to test (default 100)")
    lr.set_defaults(func=run_lr_find)


def _prepare(args, working_dir: Path):
    from ..data import prepare_data
    from ..data.prepare import ExtractBandsError
    from ..train import UnetClassifier

    bands = [b - 1 for b in args.extract_bands] if args.extract_bands else None
    try:
        # without --batch-size, prepare_data's own default; train.recipe.size_batches then sizes a small set's
        batch = {"batch_size": args.batch_size} if args.batch_size else {}
        data = prepare_data(args.data, **batch, chip_size=args.chip_size,
                            val_split_pct=args.val_split, seed=args.seed, num_workers=args.num_workers,
                            working_dir=working_dir, extract_bands=bands, stratify=args.stratify,
                            norm_pct=args.norm_pct, sampling=args.sampling,
                            transforms=False if args.no_augment else None)
    except ExtractBandsError as exc:
        # The API counts bands from 0, the CLI (as GDAL) from 1.
        n = exc.band_count
        raise LandcoverError(f"--extract-bands {' '.join(map(str, args.extract_bands))}: give distinct bands "
                             f"from 1 to {n} (the chips have {n} band{'s' if n != 1 else ''})") from None
    if args.batch_size is None:
        from ..train.recipe import size_batches

        size_batches(data)
    import lightning

    from ..model.weights import PretrainedWeightsWarning
    from . import own_warnings, warning_line

    # The weights' initialization, the windows drawn and the augmentation (DataLoader workers too): on a few
    # dozen chips of a Landsat scene three seeds spanned 3 points of overall accuracy.
    lightning.seed_everything(args.seed, workers=True, verbose=False)

    # Default weights that cannot be downloaded: one warning line, and training goes on from random weights.
    with own_warnings(PretrainedWeightsWarning, warning_line(getattr(args, "command", None) or "train")):
        model = UnetClassifier(data, backbone=args.backbone, pretrained_path=args.pretrained,
                               class_balancing=args.class_balancing, focal_loss=args.focal_loss,
                               dice_loss_fraction=args.dice_loss_fraction, ignore_classes=args.ignore_classes,
                               mixup=args.mixup, dice_loss_average=args.dice_loss_average,
                               pretrained=not args.no_pretrained)
    return data, model


def _check_out(out: Path, args) -> None:
    """Before training: MODEL_DIR may be written, and this run's checkpoints will not be inside it."""
    from ..train.classifier import check_package_folder

    check_package_folder(out, args.overwrite)
    checkpoints = Path(args.resume).resolve().parent if args.resume else out.parent / "models" / "checkpoints"
    if checkpoints == out or out in checkpoints.parents:
        raise LandcoverError(f"{out}: this run's checkpoints go to {checkpoints}, inside the model package folder "
                             f"(which is replaced when the package is written); choose another --out, e.g. "
                             f"{out / 'unet'}")


def run_train(args) -> int:
    from ..raster import check_writable_dir

    out = Path(args.out).resolve()
    _check_out(out, args)
    check_writable_dir(out.parent)
    data, model = _prepare(args, out.parent)
    print(data, flush=True)
    from ..data.mosaic import WindowDataset
    from ..train.recipe import auto_epochs, auto_patience, judged_from, training_pixels

    epochs = args.epochs or auto_epochs(data)
    patience = 0 if args.no_early_stopping else auto_patience(epochs)
    print(f"recipe: {model.backbone} ({training_pixels(data):,} labelled training pixels), batches of "
          f"{data.batch_size}{'' if args.batch_size else ' (sized)'}, {epochs} epochs"
          f"{'' if args.epochs else ' (sized from the data)'}, "
          + (f"early stopping after {patience} epochs without a better {args.monitor} (judged from epoch "
             f"{judged_from(epochs, not args.constant_lr)}), " if patience else "")
          + ("random windows of the whole labelled area" if isinstance(data.train_ds, WindowDataset)
             else "random crops of the chips")
          + (", no augmentation" if args.no_augment else ", flips/rotations and band jitter")
          + (f", loss cross-entropy + {args.dice_loss_fraction:g} {args.dice_loss_average} Dice"
             if args.dice_loss_fraction else ", loss cross-entropy"), flush=True)
    model.fit(epochs, lr=args.lr, one_cycle=not args.constant_lr, early_stopping=patience,
              monitor=args.monitor, tensorboard=args.tensorboard, resume=args.resume, devices=args.devices,
              num_nodes=args.num_nodes, strategy=args.strategy, precision=args.precision, threads=args.threads,
              **({"max_time": timedelta(minutes=args.max_minutes)} if args.max_minutes else {}))
    if not model.is_main_process:
        return 0
    with tempfile.TemporaryDirectory(prefix="landcover-train-") as tmp:
        batch_png = Path(tmp) / "show_batch.png"
        data.show_batch().savefig(batch_png, dpi=100)
        folder = model.save(out, extra_files={"ModelCharacteristics/show_batch.png": batch_png},
                            overwrite=args.overwrite)
    print(model.metrics_table())
    if model.checkpoint_path:
        print(f"best checkpoint: {model.checkpoint_path}")
    if model.last_checkpoint:
        print(f"last checkpoint (to go on with --resume; delete its folder when done): {model.last_checkpoint}")
    if model.tensorboard_dir:
        print(f"TensorBoard logs: {model.tensorboard_dir} (tensorboard --logdir {model.tensorboard_dir.parent})")
    threads = f"; {model.threads.describe()}" if model.threads else ""
    print(f"model package: {folder} ({folder.name}.emd, {folder.name}.dlpk){threads}")
    return 0


#: plot formats lr-find writes (matplotlib's, by file name)
PLOT_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def _check_plot_out(out: Path, args) -> None:
    """The plot is an output like any other: a plot name, not a file of the training data it is made from
    (with or without --overwrite), and an existing file only with --overwrite."""
    from ..raster import check_output
    from . import refuse_existing

    check_output(args.out, PLOT_SUFFIXES, "plot")
    for folder in args.data:
        data = Path(folder).resolve()
        if out.exists() and (out == data or data in out.parents):
            raise LandcoverError(f"{args.out}: would replace a file of the training data {folder}; write the plot "
                                 "outside it")
    refuse_existing(args.overwrite, args.out)


def run_lr_find(args) -> int:
    from ..raster import atomic_output, check_writable_dir

    out = Path(args.out).resolve()
    _check_plot_out(out, args)
    check_writable_dir(out.parent)
    _, model = _prepare(args, out.parent)
    suggestion = model.lr_find(allow_plot=False, num_steps=args.steps, precision=args.precision)
    with atomic_output(out) as tmp:
        model.lr_figure().savefig(tmp, dpi=100, format=out.suffix.lower().lstrip(".").replace("jpeg", "jpg"))
    print(f"suggested learning rate: {suggestion:.2e} (e.g. --lr {suggestion / 10:.1e}:{suggestion:.1e})")
    print(f"plot: {out}")
    return 0
