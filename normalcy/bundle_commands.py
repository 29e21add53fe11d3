"""`normalcy info`, `evaluate` and `calibrate`: commands on one bundle and a data set, with
`detectors` alone (no PyTorch)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from .arguments import add_command, alpha, classes, load_classes


def add_info(sub) -> None:
    p = add_command(sub, "info", help="print a bundle's metadata as JSON")
    p.add_argument("bundle")
    p.add_argument(
        "--full", action="store_true", help="include calibration references and heat-map statistics"
    )
    p.set_defaults(run=run_info)


def run_info(args) -> int:
    from detectors.bundle import Bundle

    bundle = Bundle.read(args.bundle)
    meta = bundle.spec.to_json()
    if not args.full:
        for spec in meta["scores"].values():
            ref = spec.pop("reference")
            spec["reference_size"] = len(ref)
        if meta.get("heatmap"):
            meta["heatmap"] = {k: v for k, v in meta["heatmap"].items() if k not in ("mean", "std")}
    print(json.dumps({"path": args.bundle, "sha256": bundle.sha256, "metadata": meta}, indent=2))
    return 0


def add_evaluate(sub) -> None:
    p = add_command(
        sub, "evaluate", help="AUROC and false-positive rate of a bundle on labelled data"
    )
    p.add_argument("bundle")
    p.add_argument("--normal", help="data spec of normal images")
    p.add_argument("--anomalous", help="data spec of anomalous images")
    p.add_argument(
        "--data", help="labelled data spec; with --normal-classes, the rest are anomalous"
    )
    p.add_argument("--normal-classes", type=classes)
    p.add_argument("--alpha", type=alpha)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_evaluate)


def run_evaluate(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from detectors import Detector
    from detectors.evaluation import evaluate, format_table
    from detectors.sources import load

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
    total = len(normal) + (len(anomalous) if anomalous else 0)
    # The bar of `normalcy score`, on stderr: stdout holds only the table or the JSON.
    with tqdm(
        total=total,
        unit="img",
        desc="scoring",
        disable=args.no_progress,
        smoothing=0.05,
        dynamic_ncols=True,
    ) as bar:
        report = evaluate(
            detector,
            normal.images,
            anomalous and anomalous.images,
            alpha=args.alpha,
            normal_labels=labels_of(normal),
            anomalous_labels=anomalous and labels_of(anomalous),
            on_batch=bar.update,
        )
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def add_calibrate(sub) -> None:
    p = add_command(
        sub,
        "calibrate",
        help="recompute a bundle's calibration on new normal images (metadata only)",
        description="Score held-out normal images with the bundle's graph and store them as its "
        "reference; with labelled anomalies, also choose the operating point and fit "
        "maps from score to P(anomaly). Only the metadata is rewritten, atomically; "
        "on any error the file is left as it was.",
    )
    p.add_argument("bundle", help="FILE.onnx to recalibrate")
    p.add_argument("--data", required=True, help="normal images never used in training (data spec)")
    p.add_argument("--normal-classes", type=classes, help="keep only these labels of --data")
    p.add_argument(
        "--member-data",
        help="other normal images never used in training (data spec; --normal-classes applies): "
        "the references of a combined score's members inside the combination, so that the "
        "combined score's own reference holds all of --data (default: half of --data each)",
    )
    p.add_argument("--alpha", type=alpha, help="default false-positive rate (kept if not given)")
    p.add_argument("--anomalous", help="labelled anomalous images (data spec)")
    p.add_argument(
        "--anomalous-classes", type=classes, help="keep only these labels of --anomalous"
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
        help="with --anomalous: map from score to P(anomaly)",
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
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="ONNX Runtime provider"
    )
    p.set_defaults(run=run_calibrate)


def run_calibrate(args) -> int:
    from detectors.bundle import Bundle, write_bundle
    from detectors.fitting import recalibrate

    bundle = Bundle.read(args.bundle)
    # Load everything before touching the file, so a bad spec leaves it as it was.
    normal = load_classes(args.data, args.normal_classes)
    members = (
        None if args.member_data is None else load_classes(args.member_data, args.normal_classes)
    )
    anomalous = None
    if args.anomalous:
        anomalous = load_classes(args.anomalous, args.anomalous_classes)
    elif args.rule or args.anomalous_classes:
        msg = "calibrate: --rule and --anomalous-classes need --anomalous"
        raise SystemExit(msg)
    rule = args.rule or ("f1" if anomalous is not None and args.alpha is None else None)
    source = normal.source
    # A conditional bundle is calibrated with each image's own label from the data.
    conditional = bundle.spec.labels is not None
    spec, summary = recalibrate(
        bundle,
        normal.images,
        alpha=args.alpha,
        labels=normal.labels if conditional else None,
        members=None if members is None else members.images,
        member_labels=members.labels if conditional and members is not None else None,
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
    fingerprint = normal.fingerprint()
    spec = replace(spec, calibration=replace(spec.calibration, data_fingerprint=fingerprint))
    if fingerprint == bundle.spec.training.data_fingerprint:
        print(
            "calibrate: warning: --data is the model's training data; p-values will be too small "
            "(calibrate on images the model never saw)",
            file=sys.stderr,
        )
    if members is not None and members.fingerprint() == bundle.spec.training.data_fingerprint:
        print(
            "calibrate: warning: --member-data is the model's training data; the combined score "
            "stays valid but detects less (use images the model never saw)",
            file=sys.stderr,
        )
    for warning in summary["warnings"]:
        print(f"calibrate: warning: {warning}", file=sys.stderr)
    out = args.out or args.bundle
    written = write_bundle(bundle.model_bytes, spec, out)
    print(json.dumps({"bundle": out, "sha256": written.sha256, **summary}, indent=2))
    return 0
