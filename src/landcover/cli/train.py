"""``landcover train`` and ``landcover lr-find``: prepare_data → UnetClassifier → fit/lr_find → save."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def parse_lr(text: str) -> float | slice:
    """``1e-4`` → 1e-4; ``3e-5:1e-4`` → slice(3e-5, 1e-4)."""
    try:
        if ":" in text:
            lo, hi = text.split(":", 1)
            return slice(float(lo), float(hi))
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate (1e-4) or a range (3e-5:1e-4)") from None


def parse_devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", metavar="DATA", help="Classified Tiles folder(s) from `landcover export` "
                   "or ArcGIS Export Training Data For Deep Learning; several folders are merged")
    # No `choices`: listing them would import torch for every `landcover --help`; the model names them.
    p.add_argument("--backbone", default="resnet34", help="encoder: resnet18, resnet34 (default) or resnet50")
    p.add_argument("--batch-size", type=int, default=16, help="chips per batch (default 16)")
    p.add_argument("--chip-size", type=int, help="training crop in pixels (default: the exported chip size)")
    p.add_argument("--val-split", type=float, default=0.1, help="fraction of chips held out (default 0.1)")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/validation split (default 42)")
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes (default: 0 on CPU)")
    p.add_argument("--pretrained", metavar="PATH_OR_URL", help="ImageNet ResNet weights (torchvision/timm, "
                   ".pth or .safetensors, file or URL) or a saved landcover model to start from")
    p.add_argument("--class-balancing", action="store_true", help="weight the loss by inverse class frequency")
    p.add_argument("--focal-loss", action="store_true", help="focal cross-entropy (gamma 2)")
    p.add_argument("--dice-loss-fraction", type=float, default=0.0, help="mix in a Dice loss (0..1)")
    p.add_argument("--ignore-classes", type=int, nargs="+", default=[], metavar="V",
                   help="class values that incur no loss (needs more than two classes)")
    p.add_argument("--precision", help="Lightning precision, e.g. 32-true, bf16-mixed, 16-mixed (default: "
                   "bf16 autocast on a CPU with native bf16, mixed precision on a GPU)")


def register(sub) -> None:
    train = sub.add_parser("train", help="train a U-Net on Classified Tiles chips and save a model package",
                           description="Train a U-Net pixel classifier and write a model package (.emd, "
                           "safetensors weights, figures, model_metrics.html, .dlpk) to MODEL_DIR.")
    _data_args(train)
    train.add_argument("--out", required=True, metavar="MODEL_DIR", help="model package folder to write")
    train.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    train.add_argument("--lr", type=parse_lr, help="learning rate (1e-4) or range from the first encoder stage "
                       "to the head (3e-5:1e-4); default: found with the learning-rate finder")
    train.add_argument("--constant-lr", action="store_true", help="constant rate instead of one-cycle")
    train.add_argument("--early-stopping", action="store_true",
                       help="stop after 5 epochs without improvement of --monitor")
    train.add_argument("--monitor", default="valid_loss", choices=["valid_loss", "accuracy", "miou"],
                       help="metric for the best checkpoint and early stopping (default valid_loss)")
    train.add_argument("--resume", metavar="CKPT", help="Lightning checkpoint to continue from")
    train.add_argument("--devices", type=parse_devices, default="auto", help="GPUs/processes (default auto)")
    train.add_argument("--num-nodes", type=int, default=1, help="machines for multi-node DDP (default 1)")
    train.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp (default auto)")
    train.set_defaults(func=run_train)

    lr = sub.add_parser("lr-find", help="plot loss against learning rate and suggest a rate",
                        description="Learning-rate range test on the training chips; writes the plot.")
    _data_args(lr)
    lr.add_argument("--out", required=True, metavar="PNG", help="plot to write (e.g. lr.png)")
    lr.add_argument("--steps", type=int, default=100, help="batches to test (default 100)")
    lr.set_defaults(func=run_lr_find)


def _prepare(args, working_dir: Path):
    from ..data import prepare_data
    from ..train import UnetClassifier

    data = prepare_data(args.data, batch_size=args.batch_size, chip_size=args.chip_size,
                        val_split_pct=args.val_split, seed=args.seed, num_workers=args.num_workers,
                        working_dir=working_dir)
    model = UnetClassifier(data, backbone=args.backbone, pretrained_path=args.pretrained,
                           class_balancing=args.class_balancing, focal_loss=args.focal_loss,
                           dice_loss_fraction=args.dice_loss_fraction, ignore_classes=args.ignore_classes)
    return data, model


def run_train(args) -> int:
    from ..raster import check_writable_dir

    out = Path(args.out).resolve()
    check_writable_dir(out.parent)
    data, model = _prepare(args, out.parent)
    print(data, flush=True)
    model.fit(args.epochs, lr=args.lr, one_cycle=not args.constant_lr, early_stopping=args.early_stopping,
              monitor=args.monitor, resume=args.resume, devices=args.devices, num_nodes=args.num_nodes,
              strategy=args.strategy, precision=args.precision)
    if not model.is_main_process:
        return 0
    with tempfile.TemporaryDirectory(prefix="landcover-train-") as tmp:
        batch_png = Path(tmp) / "show_batch.png"
        data.show_batch().savefig(batch_png, dpi=100)
        folder = model.save(out, extra_files={"ModelCharacteristics/show_batch.png": batch_png})
    print(model.metrics_table())
    if model.checkpoint_path:
        print(f"best checkpoint: {model.checkpoint_path}")
    print(f"model package: {folder} ({folder.name}.emd, {folder.name}.dlpk)")
    return 0


def run_lr_find(args) -> int:
    from ..raster import atomic_output, check_writable_dir

    out = Path(args.out).resolve()
    check_writable_dir(out.parent)
    _, model = _prepare(args, out.parent)
    suggestion = model.lr_find(allow_plot=False, num_steps=args.steps, precision=args.precision)
    with atomic_output(out) as tmp:
        model.lr_figure().savefig(tmp, dpi=100, format=out.suffix.lstrip(".") or "png")
    print(f"suggested learning rate: {suggestion:.2e} (e.g. --lr {suggestion / 10:.1e}:{suggestion:.1e})")
    print(f"plot: {out}")
    return 0
