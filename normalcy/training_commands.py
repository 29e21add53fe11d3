"""`normalcy train`, `report` and `demo`: the commands that need PyTorch (the `train` extra). They
import `training` when they run, so the other commands work in an install without it."""

from __future__ import annotations

import json
import sys

from .arguments import add_command, alpha, classes, load_classes


def add_train(sub) -> None:
    p = add_command(
        sub, "train", help="train a PixelCNN or VAE on normal images and write its bundle"
    )
    p.add_argument("kind", choices=["pixelcnn", "vae"])
    p.add_argument(
        "--data", required=True, help="data spec: digits[:train], idx:PATH, folder:DIR, npy:FILE"
    )
    p.add_argument("--normal-classes", type=classes, help="keep only these labels, e.g. 0,1")
    p.add_argument("--out", required=True, help="FILE.onnx (the checkpoint goes beside it)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (per process)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (Adam)")
    p.add_argument(
        "--patience", type=int, default=3, help="early stopping: epochs without improvement"
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        help="wall-clock budget of the training loop of the model (the PixelCNN's 3x3 local model "
        "gets a quarter more), checked after every step; the validation pass of the epoch it "
        "stops, the export and the calibration come after it. The summary reports their times "
        "apart: "
        "train_seconds (training steps), validation_seconds (per-epoch validation), "
        "calibration_seconds (export, calibration, validation through the graph), total_seconds",
    )
    p.add_argument("--seed", type=int, default=0, help="data splits, initial weights, batches")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="for training")
    p.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint beside --out"
    )
    p.add_argument("--hidden", type=int, help="feature maps (PixelCNN) or first conv width (VAE)")
    p.add_argument("--layers", type=int, help="PixelCNN gated layers")
    p.add_argument("--kernel", type=int, help="PixelCNN kernel size (odd)")
    p.add_argument("--latent", type=int, help="VAE latent dimensions")
    p.add_argument("--likelihood", choices=["logistic", "categorical"], help="VAE decoder")
    p.add_argument("--samples", type=int, default=4, help="VAE importance samples when scoring")
    p.add_argument("--alpha", type=alpha, default=0.01, help="default false-positive rate")
    p.add_argument(
        "--conditional",
        action="store_true",
        help="class-conditional model: trained, calibrated and scored with labels",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar and no line per epoch (on a file or pipe, the bar becomes a line "
        "per epoch)",
    )
    p.add_argument(
        "--no-report",
        action="store_true",
        help="skip the HTML training report (written to <out stem>-report/ by default)",
    )
    p.set_defaults(run=run_train)


def run_train(args) -> int:
    from training.pipeline import TrainJob, run
    from training.train import TrainConfig

    names = {"pixelcnn": ("hidden", "layers", "kernel"), "vae": ("hidden", "latent", "likelihood")}
    model = {k: getattr(args, k) for k in names[args.kind] if getattr(args, k) is not None}
    train = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        max_minutes=args.max_minutes,
        seed=args.seed,
        device=args.device,
        conditional=args.conditional,
    )
    job = TrainJob(
        args.kind,
        args.data,
        args.out,
        normal_classes=args.normal_classes,
        model=model,
        train=train,
        alpha=args.alpha,
        samples=args.samples,
        progress=not args.no_progress,
        resume=args.resume,
    )
    _, summary = run(job)
    if summary is not None:  # None on the ranks other than 0 under torchrun
        if not args.no_report:
            from training.report import report_after_training

            summary["report"] = str(report_after_training(job).page)
        print(json.dumps(summary, indent=2))
        for warning in summary["warnings"]:
            print(f"train: warning: {warning}", file=sys.stderr)
    return 0


def add_report(sub) -> None:
    p = add_command(
        sub,
        "report",
        help="HTML page with figures: training curve, samples, "
        "reconstructions, score histograms, ROC, calibration",
    )
    p.add_argument(
        "source", help="a bundle FILE.onnx or checkpoint FILE.pt (each finds the other beside it)"
    )
    p.add_argument(
        "--data", required=True, help="data spec of normal images (held out from training)"
    )
    p.add_argument("--anomalous", help="data spec of anomalous images")
    p.add_argument(
        "--normal-classes",
        type=classes,
        help="with labelled --data: these classes are normal, the rest anomalous "
        "(default: the bundle's training classes)",
    )
    p.add_argument("--out", required=True, help="folder for index.html, the PNGs and report.json")
    p.add_argument(
        "--alpha", type=alpha, help="false-positive rate for thresholds (default: the bundle's)"
    )
    p.add_argument("--samples", type=int, default=64, help="images to sample")
    p.add_argument(
        "--max-images",
        type=int,
        default=2000,
        help="score at most this many images per set (normal, anomalous), drawn at random",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling and the choice of images")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="for sampling")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_report)


def run_report(args) -> int:
    from training.report import report_from_specs

    report = report_from_specs(
        args.source,
        args.data,
        args.out,
        anomalous=args.anomalous,
        normal_classes=args.normal_classes,
        alpha=args.alpha,
        n_samples=args.samples,
        max_images=args.max_images,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    print(
        json.dumps(
            {
                "page": str(report.page),
                "figures": [f.file for f in report.figures],
                "omitted": report.omitted,
                **{
                    k: v
                    for k, v in report.metrics.items()
                    if k in ("auroc", "fpr_at_alpha", "alpha")
                },
            },
            indent=2,
        )
    )
    return 0


def add_demo(sub) -> None:
    p = add_command(
        sub, "demo", help="train both models on the bundled digits and print their quality"
    )
    p.add_argument("--out", default="runs/demo", help="folder for the bundles")
    p.add_argument("--quick", action="store_true", help="tiny models, a few epochs (for tests)")
    p.set_defaults(run=run_demo)


def run_demo(args) -> int:
    from training.demo import demo

    print(demo(args.out, quick=args.quick))
    return 0


def add_quantize(sub) -> None:
    p = sub.add_parser(
        "quantize",
        help="write an int8 copy of a bundle (static QDQ), calibrated on the int8 graph",
        description="Quantise the graph's Conv/Gemm/MatMul layers to int8 with activation ranges "
        "from normal images, keep in fp32 the layers that move the scores most until the parity "
        "with the fp32 graph is within budget, then recompute the calibration references on the "
        "int8 graph (as `normalcy calibrate` does). Refuses to write when no graph is within "
        "budget. Needs the `train` extra (onnx), not PyTorch.",
    )
    p.add_argument("bundle", help="the fp32 FILE.onnx")
    p.add_argument("--data", required=True, help="normal images never used in training (data spec)")
    p.add_argument("--normal-classes", type=classes, help="keep only these labels of --data")
    p.add_argument("--anomalous", help="anomalous images: the AUROC change joins the parity check")
    p.add_argument(
        "--anomalous-classes", type=classes, help="keep only these labels of --anomalous"
    )
    p.add_argument("--out", required=True, help="the int8 FILE.onnx to write")
    p.add_argument(
        "--range-images",
        type=int,
        default=256,
        help="normal images that set the activation ranges (at most half of --data); the rest "
        "measure parity and become the calibration references",
    )
    p.add_argument(
        "--max-mean-delta-bits-per-dim",
        type=float,
        help="budget: mean |int8 - fp32| likelihood on held-out normal images, bits/dim "
        "(default 0.01, training.quantize.Budget)",
    )
    p.add_argument(
        "--max-auroc-change",
        type=float,
        help="budget: |AUROC change| of the default score, with --anomalous (default 0.002)",
    )
    p.add_argument(
        "--keep-fp32", action="append", default=[], help="a node to keep in fp32 (repeatable)"
    )
    p.add_argument(
        "--no-search",
        action="store_true",
        help="do not keep further nodes in fp32 when the first graph is over budget",
    )
    p.set_defaults(run=run_quantize)


def run_quantize(args) -> int:
    from dataclasses import replace

    from detectors.bundle import Bundle, write_bundle
    from training.quantize import Budget, quantize_bundle

    bundle = Bundle.read(args.bundle)
    normal = load_classes(args.data, args.normal_classes)
    anomalous = load_classes(args.anomalous, args.anomalous_classes) if args.anomalous else None
    given = {
        "mean_abs_delta_bits_per_dim": args.max_mean_delta_bits_per_dim,
        "auroc_change": args.max_auroc_change,
    }
    budget = Budget(**{k: v for k, v in given.items() if v is not None})
    graph, spec, summary = quantize_bundle(
        bundle,
        normal,
        anomalous=anomalous,
        range_images=args.range_images,
        budget=budget,
        fp32_nodes=tuple(args.keep_fp32),
        search=not args.no_search,
    )
    spec = replace(
        spec, calibration=replace(spec.calibration, data_fingerprint=normal.fingerprint())
    )
    written = write_bundle(graph, spec, args.out)
    print(json.dumps({"bundle": args.out, "sha256": written.sha256, **summary}, indent=2))
    return 0
