"""Quality: every score of both models beside PyOD's KNN and IForest and scikit-learn's LOF, on
the same splits, from the same run. The CPU protocol (--quick) runs on 2 CPUs in about 22 minutes.

Protocols:
  oneclass  MNIST and Fashion-MNIST: each class in turn is normal. Models and peers fit on that
            class's training images; the test set is that class's test images against a
            stratified sample of the other classes' test images (TEST_ANOMALIES in all).
  pair      Fashion-MNIST training images (PAIR_TRAIN of them) are normal; Fashion-MNIST test
            images against MNIST test images (PAIR_TEST each).
  fpr       the default score's measured false-positive rate on the normal test images at
            alpha 0.001, 0.01 and 0.05, with its binomial 95% interval and the range the count
            takes with exact conformal p-values (each unit's images share one reference).

Models train with the product's own steps (those of training.pipeline.run but the file: training,
the local model, the fitted densities, the bundle's scores, calibration: every reference on the
calibration split, the combined score's members inside the combination on the validation split) for
a fixed number of epochs (the budget is stated in epochs, so the figures do not depend on the
machine's load), and are scored by the torch modules that are exported, with the runtime's own
derivation of scores (the export adds nothing here: its parity with torch is tested in
tests/training/test_export.py). Nothing is chosen on the test images: the default (combined)
score and its members were fixed before this run on development splits whose anomalies are other
classes' training images (training/scores.py).

    PYTHONPATH=. python benchmarks/quality.py --quick --out runs/quality-cpu  # CPU protocol, 22 min
    PYTHONPATH=. python benchmarks/quality.py --out runs/quality              # 10 classes (~1 h)
    PYTHONPATH=. python benchmarks/quality.py --device cuda --vae-epochs 30 --pixelcnn-epochs 10 \
        --out runs/quality-gpu                                                   # GPU protocol

Needs the `bench` extra (pyod) and the data sets in ../shared/datasets (or NORMALCY_DATASETS).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.quality_report import markdown  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("NORMALCY_DATASETS", ROOT.parent / "shared" / "datasets"))
TEST_ANOMALIES = 1000
PAIR_TRAIN, PAIR_TEST = 12000, 2000
MODELS = {
    "vae": {"hidden": 32, "latent": 16},
    "pixelcnn": {"hidden": 32, "layers": 4, "kernel": 5, "head": 64},
}
ALPHAS = (0.001, 0.01, 0.05)
# A budget is the epochs of a one-class unit (about 4,200 training images after the splits). The
# pair trains on twice as many images (PAIR_TRAIN), so it gets half the epochs: the same number
# of optimiser steps, and the CPU protocol stays inside its hour.
PAIR_EPOCH_SHARE = 0.5
# Seconds of one training epoch relative to the VAE's, on CPU (both PixelCNNs: 116 s against 12 s
# for 4,200 images): only the order of the jobs depends on it.
EPOCH_COST = {"vae": 1, "pixelcnn": 10}


def load(datasets: str, name: str, split: str):
    from detectors.sources import load_idx

    prefix = "train" if split == "train" else "t10k"
    data = load_idx(str(Path(datasets) / name / f"{prefix}-images-idx3-ubyte.gz"))
    return data.images, data.labels


QUICK_CLASSES = (0, 2, 8)


def units(classes=tuple(range(10)), datasets: str = str(DATASETS), pair: bool = True) -> list[dict]:
    """The protocol's units: which images are normal in training and which are tested. Each
    unit draws its anomalies from its own generator, seeded by (data set, class), so a unit tests
    the same images whatever `classes` a run takes (`--quick` and `--classes 0,8` agree on class
    8): runs of other classes merge. Each record carries `test_images`, and a merge refuses a unit
    tested on two different sets (records from before 2026-12-03's per-unit seeding drew the
    anomalies from one generator in the order of `classes`)."""
    out = []
    for dataset_index, dataset in enumerate(("mnist", "fashion-mnist")):
        train_x, train_y = load(datasets, dataset, "train")
        test_x, test_y = load(datasets, dataset, "test")
        for cls in classes:
            rng = np.random.default_rng([0, dataset_index, int(cls)])
            others = np.flatnonzero(test_y != cls)
            # Stratified: the same number from each other class.
            per_class = TEST_ANOMALIES // 9
            anomalous = np.concatenate(
                [
                    rng.choice(others[test_y[others] == c], per_class, replace=False)
                    for c in range(10)
                    if c != cls
                ]
            )
            out.append(
                {
                    "protocol": "oneclass",
                    "dataset": dataset,
                    "normal_class": int(cls),
                    "train": train_x[train_y == cls],
                    "normal": test_x[test_y == cls],
                    "anomalous": test_x[anomalous],
                }
            )
    if not pair:
        return out
    fashion_x, _ = load(datasets, "fashion-mnist", "train")
    fashion_test, _ = load(datasets, "fashion-mnist", "test")
    mnist_test, _ = load(datasets, "mnist", "test")
    rng = np.random.default_rng([0, 2])  # the pair: no class
    out.append(
        {
            "protocol": "pair",
            "dataset": "fashion-mnist vs mnist",
            "normal_class": None,
            "train": fashion_x[rng.choice(len(fashion_x), PAIR_TRAIN, replace=False)],
            "normal": fashion_test[rng.choice(len(fashion_test), PAIR_TEST, replace=False)],
            "anomalous": mnist_test[rng.choice(len(mnist_test), PAIR_TEST, replace=False)],
        }
    )
    return out


def unit_epochs(budget: int, unit: dict) -> int:
    """The epochs a model of `budget` trains for on `unit` (PAIR_EPOCH_SHARE for the pair)."""
    if unit["protocol"] == "pair":
        return max(1, round(budget * PAIR_EPOCH_SHARE))
    return budget


def test_images(unit: dict) -> str:
    """A fingerprint of a unit's test images (normal, then anomalous): SHA-256, 16 hex digits."""
    digest = hashlib.sha256(np.ascontiguousarray(unit["normal"]).tobytes())
    digest.update(np.ascontiguousarray(unit["anomalous"]).tobytes())
    return digest.hexdigest()[:16]


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    return float(roc_auc_score(y, np.r_[normal, anomalous]))


def tpr_at_fpr(normal: np.ndarray, anomalous: np.ndarray, fpr: float = 0.01) -> float:
    """True-positive rate at the threshold that flags `fpr` of the normal test images."""
    threshold = np.quantile(normal, 1 - fpr)
    return float(np.mean(anomalous > threshold))


def peers(unit: dict) -> dict:
    """PyOD's KNN (5 neighbours, mean distance) and IForest, scikit-learn's LOF (novelty), on raw
    pixels in [0, 1], fitted on the same normal training images."""
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from sklearn.neighbors import LocalOutlierFactor

    def flat(x):
        return x.reshape(len(x), -1).astype(np.float32) / 255.0

    train, normal, anomalous = flat(unit["train"]), flat(unit["normal"]), flat(unit["anomalous"])
    out = {}
    for name, model in {
        "pyod_knn": KNN(n_neighbors=5, method="mean"),
        "pyod_iforest": IForest(random_state=0),
    }.items():
        started = time.monotonic()
        model.fit(train)
        scores = model.decision_function(np.r_[normal, anomalous])
        out[name] = _metrics(scores[: len(normal)], scores[len(normal) :], started)
    started = time.monotonic()
    lof = LocalOutlierFactor(n_neighbors=20, novelty=True).fit(train)
    scores = -lof.score_samples(np.r_[normal, anomalous])
    out["sklearn_lof"] = _metrics(scores[: len(normal)], scores[len(normal) :], started)
    return out


def _metrics(normal, anomalous, started) -> dict:
    return {
        "auroc": auroc(normal, anomalous),
        "tpr_at_1pct_fpr": tpr_at_fpr(normal, anomalous),
        "seconds": round(time.monotonic() - started, 1),
    }


@dataclass
class FittedUnit:
    """One model trained on one unit's normal images, as fit_unit leaves it."""

    spec: object  # the calibrated BundleSpec
    raw: Callable[[np.ndarray], dict[str, np.ndarray]]  # images -> raw graph scores
    splits: object  # training.data.Splits
    result: object  # training.train's result (history, best epoch)
    train_seconds: float
    model: object  # the trained model (CPU, eval)
    statistics: object  # training.densities.Statistics: the local model, the fitted densities


def fit_unit(
    kind: str, train: np.ndarray, epochs: int, device: str = "cpu", source: str = ""
) -> FittedUnit:
    """Train `kind` on `train` with the product's own steps (training/pipeline.py without the
    file: fit, the local model, the fitted densities, the bundle's scores, calibration on the
    calibration and validation splits); raw scores come from the modules that are exported."""
    from detectors.fitting import with_reference
    from detectors.sources import ImageSet
    from detectors.spec import TrainingFacts
    from training.data import split
    from training.densities import fit_statistics, local_config
    from training.export import base_spec, scoring_graph
    from training.pipeline import model_config
    from training.train import TrainConfig, fit

    started = time.monotonic()
    data = ImageSet(images=train, labels=None, source=f"{source} train")
    splits = split(data, seed=0, validation=0.1, calibration=0.2)  # the pipeline's fractions
    config = model_config(kind, data, MODELS[kind])
    cfg = TrainConfig(epochs=epochs, device=device, patience=epochs)
    model, result = fit(kind, config, splits, cfg, progress=False)
    local = None
    if kind == "pixelcnn":
        local, _ = fit(kind, local_config(config), splits, cfg, progress=False)
        local = local.cpu().eval()
    train_seconds = time.monotonic() - started
    shape = tuple(int(d) for d in data.images.shape[1:])
    spec = base_spec(
        kind, model, shape, statistics=True, samples=4, alpha=0.01, training=TrainingFacts()
    )
    statistics = fit_statistics(kind, model, splits.train.images, local=local, noise=spec.noise)
    graph = scoring_graph(kind, model.cpu().eval(), statistics=statistics).eval()

    def raw(images: np.ndarray) -> dict[str, np.ndarray]:
        return graph_scores(graph, spec, images)

    # The pipeline's calibration (training/pipeline.py): the combined score's members inside the
    # combination on the validation split, every reference on the calibration split.
    spec = with_reference(
        spec, raw(splits.calibration.images), member_scores=raw(splits.validation.images)
    )
    return FittedUnit(spec, raw, splits, result, train_seconds, model.cpu().eval(), statistics)


def run_model(kind: str, unit: dict, epochs: int, device: str = "cpu") -> dict:
    """Train `kind` on the unit's normal images (fit_unit), then score the test images."""
    from detectors.calibration import conformal_p_values
    from detectors.fitting import combined_scores

    started = time.monotonic()
    fitted = fit_unit(kind, unit["train"], epochs, device, unit["dataset"])
    spec, raw, result, train_seconds = fitted.spec, fitted.raw, fitted.result, fitted.train_seconds
    normal = combined_scores(spec, raw(unit["normal"]))
    anomalous = combined_scores(spec, raw(unit["anomalous"]))
    scores = {
        name: {
            "auroc": auroc(normal[name], anomalous[name]),
            "tpr_at_1pct_fpr": tpr_at_fpr(normal[name], anomalous[name]),
        }
        for name in spec.scores
    }
    default = spec.default_score
    p_values = conformal_p_values(normal[default], np.asarray(spec.scores[default].reference))
    return {
        "default": default,
        "scores": scores,
        "fpr_flagged": {str(a): int(np.sum(p_values <= a)) for a in ALPHAS},
        "n_normal": len(unit["normal"]),
        "n_reference": len(spec.scores[default].reference),
        "train_seconds": round(train_seconds, 1),
        "epochs": result.epochs,
        "seconds": round(time.monotonic() - started, 1),
    }


def graph_scores(graph, spec, images: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """The raw graph scores of `images`: the exported module run by torch (its ONNX Runtime parity
    is tested in tests/training/test_export.py), then the runtime's own derivation of scores."""
    import torch

    from detectors.runtime import scores_from_outputs, vae_noise

    names = graph.output_names()
    parts: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = images[start : start + batch]
            args = (torch.from_numpy(np.ascontiguousarray(x)),)
            if spec.noise is not None:
                args += (torch.from_numpy(vae_noise(spec.noise, len(x))),)
            for name, value in zip(names, graph(*args), strict=True):
                if not name.endswith("_map"):
                    parts.setdefault(name, []).append(value.double().numpy())
    outputs = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    return scores_from_outputs(spec.scores, spec.graph_scores, outputs, images=images)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/quality-cpu")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the CPU protocol: classes 0, 2 and 8 of each data set and the pair (about 22 min)",
    )
    parser.add_argument(
        "--classes", help="comma-separated normal classes of the one-class protocol (default all)"
    )
    parser.add_argument("--no-pair", action="store_true", help="skip Fashion-MNIST vs MNIST")
    parser.add_argument("--device", default="cpu", help="training device: cpu or cuda")
    parser.add_argument(
        "--datasets", default=str(DATASETS), help="folder holding mnist/ and fashion-mnist/"
    )
    parser.add_argument(
        "--kinds", default="vae,pixelcnn", help="models to run (two processes can split them)"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="instead of running: merge the records of runs that split the models, write --out",
    )
    parser.add_argument(
        "--vae-epochs",
        type=int,
        default=16,
        help="training epochs per VAE; 16 was chosen on development splits "
        "(benchmarks/candidate_statistics.py)",
    )
    parser.add_argument(
        "--pixelcnn-epochs",
        type=int,
        default=2,
        help="training epochs per PixelCNN (its 3x3 local model trains as many); 2 was chosen on "
        "development splits (benchmarks/candidate_statistics.py)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="models trained at once, each in its own process with CPUs/workers threads (default: "
        "one per CPU on cpu, 1 on cuda); on 2 CPUs, two single-threaded models got through about "
        "1.2-1.3x the training steps of one model on both",
    )
    args = parser.parse_args(argv)
    budgets = {"vae": args.vae_epochs, "pixelcnn": args.pixelcnn_epochs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        merged = merge([json.loads(Path(path).read_text()) for path in args.merge])
        (out / "quality.json").write_text(json.dumps(merged, indent=1))
        (out / "quality.md").write_text(markdown(merged))
        print(markdown(merged))
        return
    kinds = [kind for kind in MODELS if kind in args.kinds.split(",")]
    started = time.monotonic()
    classes = QUICK_CLASSES if args.quick else range(10)
    if args.classes:
        classes = [int(c) for c in args.classes.split(",")]
    all_units = units(classes, args.datasets, pair=not args.no_pair)
    records = [
        {
            **{k: unit[k] for k in ("protocol", "dataset", "normal_class")},
            "test_images": test_images(unit),
        }
        for unit in all_units
    ]
    for record, unit in zip(records, all_units, strict=True):
        record["peers"] = peers(unit)
    # One job per (model, unit), the longest first, so that the last to finish are short; the
    # files are rewritten after each job, so a run that is stopped keeps what it measured.
    jobs = sorted(
        ((kind, i) for kind in kinds for i in range(len(all_units))),
        key=lambda job: (
            -len(all_units[job[1]]["train"])
            * unit_epochs(budgets[job[0]], all_units[job[1]])
            * EPOCH_COST[job[0]]
        ),
    )
    workers = args.workers or (1 if args.device == "cuda" else max(1, os.cpu_count() or 1))
    threads = max(1, (os.cpu_count() or 1) // workers)
    settings = {"workers": workers, "threads_per_worker": threads}
    # The BLAS libraries that numpy, scipy and scikit-learn load (the latent mixture's fit) read
    # these when a worker loads them; left at one thread per CPU, the workers' threads would
    # share the CPUs (a mixture fit took 31 s instead of 13 s beside a training worker).
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_set_threads, initargs=(threads,)
    ) as pool:
        pending = {
            pool.submit(
                run_model, kind, all_units[i], unit_epochs(budgets[kind], all_units[i]), args.device
            ): (kind, i)
            for kind, i in jobs
        }
        for future in as_completed(pending):
            kind, i = pending[future]
            records[i][kind] = future.result()
            print(
                kind,
                json.dumps(records[i]["normal_class"]),
                records[i]["dataset"],
                f"{time.monotonic() - started:.0f}s",
                flush=True,
            )
            write(out, records, budgets, started, argv, settings)
    print(markdown(write(out, records, budgets, started, argv, settings)))


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def merge(runs: list[dict]) -> dict:
    """One result from several runs: the same units with different models (`--kinds`), or other
    units (`--classes`, `--no-pair`). A unit is one (protocol, data set, class); its peers come
    from the first run that has it; a model measured on the same unit twice, or with another
    budget, or a unit whose runs tested different images (`test_images`, where both record it), is
    an error. Each run's command and wall time are kept (`runs`)."""

    def key(record: dict) -> tuple:
        order = (
            ["mnist", "fashion-mnist"].index(record["dataset"])
            if record["normal_class"] is not None
            else 2
        )
        return order, record["normal_class"] or 0

    merged: dict[tuple, dict] = {}
    budgets: dict[str, int] = {}
    for run in runs:
        for kind, epochs in run["budgets_epochs"].items():
            if not any(kind in r for r in run["records"]):
                continue
            if budgets.setdefault(kind, epochs) != epochs:
                msg = f"{kind} trained for {budgets[kind]} and {epochs} epochs in different runs"
                raise SystemExit(msg)
        for record in run["records"]:
            into = merged.setdefault(key(record), json.loads(json.dumps(record)))
            seen, tested = into.get("test_images"), record.get("test_images")
            if seen and tested and seen != tested:
                msg = (
                    f"{record['dataset']} {record['normal_class']} was tested on different images "
                    "in different runs (records from before per-unit seeding drew them in the "
                    "order of --classes)"
                )
                raise SystemExit(msg)
            if tested:
                into["test_images"] = tested
            for kind in MODELS:
                if kind in record and kind in into and into[kind] != record[kind]:
                    msg = f"{kind} measured twice on {record['dataset']} {record['normal_class']}"
                    raise SystemExit(msg)
                if kind in record:
                    into[kind] = record[kind]
    result = json.loads(json.dumps(runs[0]))
    result["records"] = [merged[k] for k in sorted(merged)]
    result["budgets_epochs"] = budgets
    result["runs"] = [
        {
            "command": run["command"],
            "wall_seconds": run["wall_seconds"],
            # a run's own machine record, or the entry of an earlier merge
            **{
                key: run.get(key, run.get("machine", {}).get(key))
                for key in ("load_average", "workers", "threads_per_worker")
            },
        }
        for outer in runs
        for run in outer.get("runs", [outer])
    ]
    result["wall_seconds"] = sum(run["wall_seconds"] for run in result["runs"])
    result["command"] = " + ".join(run["command"] for run in result["runs"])
    return result


def write(
    out: Path, records: list[dict], budgets: dict, started: float, argv, settings: dict
) -> dict:
    results = {
        "records": records,
        "budgets_epochs": budgets,
        "models": MODELS,
        "wall_seconds": round(time.monotonic() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
            **settings,
        },
        "command": " ".join(["python", "benchmarks/quality.py", *(argv or sys.argv[1:])]),
    }
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    (out / "quality.md").write_text(markdown(results))
    return results


if __name__ == "__main__":
    main()
