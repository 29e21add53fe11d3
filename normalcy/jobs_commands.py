"""`normalcy score`: the batch-scoring program (`jobs`)."""

from __future__ import annotations

import json
import sys

from .arguments import add_command, alpha


def add_score(sub) -> None:
    p = add_command(
        sub,
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
    p.add_argument("--alpha", type=alpha, help="p-value threshold (default: the bundle's)")
    p.add_argument(
        "--fdr",
        type=alpha,
        metavar="Q",
        help="decide by Benjamini-Hochberg q-values at false discovery rate Q "
        "(adds q_value; computed over all inputs when the job ends)",
    )
    p.add_argument("--score", help="score name (default: the bundle's)")
    p.add_argument("--batch-size", type=int, default=256, help="images per ONNX Runtime call")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (0: one thread)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted job")
    p.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="ray: Ray Data (the ray extra)"
    )
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="ONNX Runtime provider"
    )
    p.add_argument("--ray-address", help="Ray cluster to join (default: start a local Ray)")
    p.add_argument("--ray-actors", type=int, help="scoring actors (default: one per GPU, else one)")
    p.add_argument("--ray-cpus", type=int, help="CPUs of a local Ray the job starts (default: all)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_score)


def run_score(args) -> int:
    from jobs.score import ScoreJob, run

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
