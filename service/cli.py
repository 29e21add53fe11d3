"""The `normalcy` command. Subcommands import what they need when they run, so `normalcy serve`
and `normalcy score` work in an install without PyTorch."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _classes(text: str):
    from detectors.datasets import parse_classes

    try:
        return parse_classes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _alpha(text: str) -> float:
    from detectors.calibration import check_alpha

    try:
        return check_alpha(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# --- train ---------------------------------------------------------------------------------------
def add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a PixelCNN or VAE on normal images and write its bundle"
    )
    p.add_argument("kind", choices=["pixelcnn", "vae"])
    p.add_argument(
        "--data", required=True, help="data spec: digits[:train], idx:PATH, folder:DIR, npy:FILE"
    )
    p.add_argument("--normal-classes", type=_classes, help="keep only these labels, e.g. 0,1")
    p.add_argument("--out", required=True, help="FILE.onnx (the checkpoint goes beside it)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--patience", type=int, default=3, help="early stopping: epochs without improvement"
    )
    p.add_argument("--max-minutes", type=float, help="wall-clock training budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint beside --out"
    )
    p.add_argument("--hidden", type=int, help="feature maps (PixelCNN) or first conv width (VAE)")
    p.add_argument("--layers", type=int, help="PixelCNN gated layers")
    p.add_argument("--kernel", type=int, help="PixelCNN kernel size (odd)")
    p.add_argument("--latent", type=int, help="VAE latent dimensions")
    p.add_argument("--likelihood", choices=["logistic", "categorical"], help="VAE decoder")
    p.add_argument("--samples", type=int, default=4, help="VAE importance samples when scoring")
    p.add_argument(
        "--background-rate",
        type=float,
        default=0.0,
        help="PixelCNN: also fit a background model on pixels substituted at this rate "
        "(adds the likelihood_ratio score)",
    )
    p.add_argument("--alpha", type=_alpha, default=0.01, help="default false-positive rate")
    p.add_argument(
        "--conditional",
        action="store_true",
        help="class-conditional model: trained, calibrated and scored with labels",
    )
    p.add_argument("--no-progress", action="store_true")
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
        background_rate=args.background_rate,
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
    return 0


# --- info ----------------------------------------------------------------------------------------
def add_info(sub) -> None:
    p = sub.add_parser("info", help="print a bundle's metadata as JSON")
    p.add_argument("bundle")
    p.add_argument(
        "--full", action="store_true", help="include calibration references and heat-map statistics"
    )
    p.set_defaults(run=run_info)


def run_info(args) -> int:
    from detectors.bundle import Bundle

    bundle = Bundle.read(args.bundle)
    meta = bundle.metadata
    if not args.full:
        meta = json.loads(json.dumps(meta))
        for spec in meta["scores"].values():
            ref = spec.pop("reference")
            spec["reference_size"] = len(ref)
        if meta.get("heatmap"):
            meta["heatmap"] = {k: v for k, v in meta["heatmap"].items() if k not in ("mean", "std")}
    print(json.dumps({"path": args.bundle, "sha256": bundle.sha256, "metadata": meta}, indent=2))
    return 0


# --- evaluate ------------------------------------------------------------------------------------
def add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="AUROC and false-positive rate of a bundle on labelled data"
    )
    p.add_argument("bundle")
    p.add_argument("--normal", help="data spec of normal images")
    p.add_argument("--anomalous", help="data spec of anomalous images")
    p.add_argument(
        "--data", help="labelled data spec; with --normal-classes, the rest are anomalous"
    )
    p.add_argument("--normal-classes", type=_classes)
    p.add_argument("--alpha", type=_alpha)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run_evaluate)


def run_evaluate(args) -> int:
    import numpy as np

    from detectors import Detector
    from detectors.datasets import load
    from detectors.evaluation import evaluate, format_table

    if args.data:
        if not args.normal_classes:
            msg = "evaluate: --data needs --normal-classes"
            raise SystemExit(msg)
        data = load(args.data)
        if data.labels is None:
            msg = f"evaluate: {args.data} has no labels"
            raise SystemExit(msg)
        is_normal = np.isin(data.labels, args.normal_classes)
        normal, anomalous = data.select(is_normal), data.select(~is_normal)
    elif args.normal:
        normal = load(args.normal)
        anomalous = load(args.anomalous) if args.anomalous else None
    else:
        msg = "evaluate: give --normal [--anomalous] or --data with --normal-classes"
        raise SystemExit(msg)
    detector = Detector.load(args.bundle, device="cpu")
    # A conditional bundle scores each image given its own label from the data.
    labels_of = (lambda s: s.labels) if detector.conditional else (lambda s: None)
    report = evaluate(
        detector,
        normal.images,
        anomalous and anomalous.images,
        alpha=args.alpha,
        normal_labels=labels_of(normal),
        anomalous_labels=anomalous and labels_of(anomalous),
    )
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


# --- report --------------------------------------------------------------------------------------
def add_report(sub) -> None:
    p = sub.add_parser(
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
        type=_classes,
        help="with labelled --data: these classes are normal, the rest anomalous "
        "(default: the bundle's training classes)",
    )
    p.add_argument("--out", required=True, help="folder for index.html, the PNGs and report.json")
    p.add_argument(
        "--alpha", type=_alpha, help="false-positive rate for thresholds (default: the bundle's)"
    )
    p.add_argument("--samples", type=int, default=64, help="images to sample")
    p.add_argument(
        "--max-images", type=int, default=2000, help="score at most this many images per set"
    )
    p.add_argument("--seed", type=int, default=0)
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


# --- demo ----------------------------------------------------------------------------------------
def add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="train both models on the bundled digits and print their quality"
    )
    p.add_argument("--out", default="runs/demo", help="folder for the bundles")
    p.add_argument("--quick", action="store_true", help="tiny models, a few epochs (for tests)")
    p.set_defaults(run=run_demo)


def run_demo(args) -> int:
    from training.demo import demo

    print(demo(args.out, quick=args.quick))
    return 0


# --- score ---------------------------------------------------------------------------------------
def add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="score folders, globs, .npy, IDX files into CSV/JSONL/Parquet",
        description="Score every input image with a bundle. Resumable: a job "
        "stopped at any moment continues with --resume and scores "
        "each input once.",
    )
    p.add_argument("bundle", help="FILE.onnx")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="folders (recursive), image files, globs, .npy or IDX files",
    )
    p.add_argument("--out", required=True, help="RESULTS.csv, .jsonl or .parquet")
    p.add_argument("--alpha", type=_alpha, help="p-value threshold (default: the bundle's)")
    p.add_argument(
        "--fdr",
        type=_alpha,
        metavar="Q",
        help="decide by Benjamini-Hochberg q-values at false discovery rate Q "
        "(adds q_value; computed over all inputs when the job ends)",
    )
    p.add_argument("--score", help="score name (default: the bundle's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="decoding processes (0: one thread)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted job")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--ray-address", help="Ray cluster to join (default: start a local Ray)")
    p.add_argument("--ray-actors", type=int, help="scoring actors (default: one per GPU, else one)")
    p.add_argument("--ray-cpus", type=int, help="CPUs of a local Ray the job starts (default: all)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_score)


def run_score(args) -> int:
    from service.batch import ScoreJob, run

    job = ScoreJob(
        bundle=args.bundle,
        inputs=args.inputs,
        out=args.out,
        alpha=args.alpha,
        fdr=args.fdr,
        score=args.score,
        batch_size=args.batch_size,
        workers=args.workers,
        resume=args.resume,
        engine=args.engine,
        device=args.device,
        ray_address=args.ray_address,
        ray_actors=args.ray_actors,
        ray_cpus=args.ray_cpus,
        progress=not args.no_progress,
    )
    summary = run(job)
    print(json.dumps(summary, indent=2))
    if not summary["complete"]:
        print(
            f"interrupted: {summary['rows']} of {summary['inputs']} inputs are in "
            f"{summary['results']}; run the same command with --resume to finish",
            file=sys.stderr,
        )
        return 130
    return 0


# --- calibrate -----------------------------------------------------------------------------------
def add_calibrate(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="recompute a bundle's calibration on new normal images (metadata only)",
        description="Score held-out normal images with the bundle's graph and store them as its "
        "reference; with labelled anomalies, also choose the operating point and fit "
        "maps from score to P(anomaly). Only the metadata is rewritten, atomically; "
        "on any error the file is left as it was.",
    )
    p.add_argument("bundle", help="FILE.onnx to recalibrate")
    p.add_argument("--data", required=True, help="normal images never used in training (data spec)")
    p.add_argument("--normal-classes", type=_classes, help="keep only these labels of --data")
    p.add_argument("--alpha", type=_alpha, help="default false-positive rate (kept if not given)")
    p.add_argument("--anomalous", help="labelled anomalous images (data spec)")
    p.add_argument(
        "--anomalous-classes", type=_classes, help="keep only these labels of --anomalous"
    )
    p.add_argument(
        "--rule",
        choices=["fpr", "recall", "f1"],
        help="with --anomalous: choose alpha by a target false-positive rate, a target "
        "recall or the best F1 (default f1 unless --alpha is given)",
    )
    p.add_argument("--target", type=float, help="the false-positive rate or recall for --rule")
    p.add_argument(
        "--probability",
        choices=["isotonic", "logistic", "none"],
        default="isotonic",
        help="with --anomalous: map from score to P(anomaly) (default isotonic)",
    )
    p.add_argument(
        "--anomaly-rate",
        type=float,
        help="share of anomalies the probabilities are stated for (default: the share "
        "in --data plus --anomalous)",
    )
    p.add_argument(
        "--score", help="score the operating point is chosen for (default: the bundle's default)"
    )
    p.add_argument("--out", help="write here instead of rewriting the bundle in place")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(run=run_calibrate)


def run_calibrate(args) -> int:
    from detectors.bundle import Bundle, write_bundle
    from detectors.datasets import load
    from detectors.fitting import recalibrate

    bundle = Bundle.read(args.bundle)
    # Load everything before touching the file, so a bad spec leaves it as it was.
    normal = load(args.data)
    if args.normal_classes:
        normal = normal.with_classes(args.normal_classes)
    anomalous = None
    if args.anomalous:
        anomalous = load(args.anomalous)
        if args.anomalous_classes:
            anomalous = anomalous.with_classes(args.anomalous_classes)
    elif args.rule or args.anomalous_classes:
        msg = "calibrate: --rule and --anomalous-classes need --anomalous"
        raise SystemExit(msg)
    rule = args.rule or ("f1" if anomalous is not None and args.alpha is None else None)
    source = normal.source + (f" classes {args.normal_classes}" if args.normal_classes else "")
    # A conditional bundle is calibrated with each image's own label from the data.
    conditional = bool(bundle.metadata.get("labels"))
    meta, summary = recalibrate(
        bundle,
        normal.images,
        alpha=args.alpha,
        labels=normal.labels if conditional else None,
        anomalous_labels=anomalous.labels if conditional and anomalous is not None else None,
        anomalous=None if anomalous is None else anomalous.images,
        rule=rule,
        target=args.target,
        probability=None if args.probability == "none" else args.probability,
        anomaly_rate=args.anomaly_rate,
        score=args.score,
        source=source,
        anomalous_source=None if anomalous is None else anomalous.source,
        device=args.device,
    )
    meta["calibration"]["data_fingerprint"] = normal.fingerprint()
    if normal.fingerprint() == bundle.metadata.get("training", {}).get("data_fingerprint"):
        print(
            "calibrate: warning: --data is the model's training data; p-values will be too small "
            "(calibrate on images the model never saw)",
            file=sys.stderr,
        )
    out = args.out or args.bundle
    written = write_bundle(bundle.model_bytes, meta, out)
    print(json.dumps({"bundle": out, "sha256": written.sha256, **summary}, indent=2))
    return 0


# --- serve ---------------------------------------------------------------------------------------
def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve every bundle in a folder over HTTP (scores, v2 protocol, metrics)",
        description="Flags override NORMALCY_* environment variables (NORMALCY_API_KEY, "
        "NORMALCY_ADMIN_KEY, NORMALCY_MAX_BODY_BYTES, ...; see service/settings.py).",
    )
    p.add_argument("--models", help="folder of bundles; FILE.onnx serves as model FILE")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads per model")
    p.add_argument("--max-batch-size", type=int, help="images per ONNX Runtime call (64)")
    p.add_argument("--max-wait-ms", type=float, help="longest an image waits for a batch (2)")
    p.add_argument("--max-queue-images", type=int, help="queued images per model before 429 (1024)")
    p.add_argument("--watch-interval-s", type=float, help="model folder poll period, 0 = off (2)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-access-log", dest="access_log", action="store_const", const=False)
    p.set_defaults(run=run_serve)


def run_serve(args) -> int:
    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.settings import Settings

    names = [
        "host",
        "port",
        "device",
        "threads",
        "max_batch_size",
        "max_wait_ms",
        "max_queue_images",
        "watch_interval_s",
        "log_level",
        "access_log",
    ]
    flags = {name: getattr(args, name) for name in names} | {"models_dir": args.models}
    try:
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors()
        )
        print(f"normalcy serve: bad settings: {problems}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(settings.log_level.upper())
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
    )
    return 0


COMMANDS = [
    add_train,
    add_info,
    add_evaluate,
    add_demo,
    add_score,
    add_calibrate,
    add_serve,
    add_report,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normalcy", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from detectors.errors import BundleError, InputError

    try:
        return args.run(args)
    except (BundleError, InputError) as error:
        print(f"normalcy {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
