"""``landcover demo``: the whole workflow on the embedded sample scene."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="run the whole workflow offline on an embedded sample scene",
        description="Generate a sample scene (1 m R,G,B,NIR in UTM, labels in Web Mercator), then export, train, "
        "classify the unseen quarter, evaluate, map and report — all offline, in under 5 minutes on 2 cores. "
        "Writes OUT/report.html.")
    p.add_argument("--out", default="landcover-demo", help="output folder (default: ./landcover-demo)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="a smaller scene (1.28 km) and a 1.5-minute budget instead of 4.5 (CI)")
    mode.add_argument("--full", action="store_true",
                      help="the seed's ResNet-34 for 30 epochs (10 minutes or more on 2 cores)")
    p.add_argument("--seed", type=int, default=0, help="scene and training seed (default: 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo.run import run_demo

    result = run_demo(args.out, quick=args.quick, seed=args.seed, full=args.full)
    print(f"landcover demo: overall accuracy {result.overall_accuracy:.3f}, mean IoU {result.mean_iou:.3f} on "
          f"the unseen area, {result.seconds:.0f} s")
    print(f"report: {result.report}")
    return 0
