"""Quality benchmark: how well normalcy's scores separate normal from anomalous images, and whether
the conformal false-positive rate holds. Figures, not tests; writes JSON and a markdown table.

Protocols (issue 3):
  1. pair      Fashion-MNIST train is normal; Fashion-MNIST test (normal) against MNIST test
               (anomalous): AUROC, AUPRC, FPR at 95% TPR for every score of both models.
  2. oneclass  MNIST and Fashion-MNIST: each class in turn is normal (trained on its training
               images); the whole test set is scored; AUROC per class and the mean.
  3. calibration  on held-out normal test images, the measured false-positive rate at alpha =
               0.001, 0.01, 0.05 beside the target and its intervals; KS test of the p-values.

Every model trains under a wall-clock budget (`--seconds-per-model` for protocol 1,
`--seconds-per-class-model` for protocol 2); several train at once in worker processes
(`--workers`), which on a GPU keeps it busy with these small models.

Scoring: with `--scorer onnx` (the default on CPU) every model is exported and scored through
ONNX Runtime exactly as served. With `--scorer torch` (the default with `--device cuda`, since the
ONNX Runtime there may be CPU-only) the workers run the same graph modules that are exported
(`training.export.PixelCNNGraph` / `VAEGraph`, fp32, TF32 off) and the same derivation of scores
from outputs (`detectors.runtime.scores_from_outputs`); the Fashion-MNIST bundles are still
exported, and their ONNX Runtime outputs are compared with torch's (`parity` in the JSON).

    PYTHONPATH=. python benchmarks/quality.py --quick --out runs/quality-quick        # CPU, ~2 min
    PYTHONPATH=. python benchmarks/quality.py --device cuda --out runs/quality         # GPU, ~5 min

The Fashion-MNIST bundles (PixelCNN with its background model, VAE) and their checkpoints are
written to --out for reuse.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.quality_report import ALPHAS, DATASETS, markdown, summarize  # noqa: E402

PAIR_NORMAL, PAIR_ANOMALOUS = "fashion-mnist", "mnist"
MODELS = {
    "full": {
        "pixelcnn": {"hidden": 64, "layers": 8, "kernel": 5, "head": 128},
        "vae": {"latent": 16, "hidden": 64},
    },
    "quick": {
        "pixelcnn": {"hidden": 16, "layers": 3, "kernel": 3, "head": 32},
        "vae": {"latent": 4, "hidden": 8},
    },
}
TRAIN = {  # per kind: batch size, learning rate
    "pixelcnn": {"batch_size": 128, "lr": 1e-3},
    "vae": {"batch_size": 128, "lr": 2e-3},
}


# --- work items -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One detector to evaluate: protocol 'pair' (all classes of `dataset`) or 'oneclass'."""

    protocol: str
    dataset: str
    kind: str
    normal_class: int | None = None

    @property
    def key(self) -> str:
        cls = "" if self.normal_class is None else f"-class{self.normal_class}"
        return f"{self.protocol}-{self.dataset}{cls}-{self.kind}"

    @property
    def roles(self) -> tuple[str, ...]:
        return ("model", "background") if self.kind == "pixelcnn" else ("model",)


@dataclass
class Item:
    """One training run (a unit's model or its background model), picklable for a worker."""

    unit: Unit
    role: str
    seconds: float
    model: dict
    checkpoint: str
    settings: dict = field(default_factory=dict)  # datasets dir, device, scorer, seed, sizes, ...


# --- data (the same in the main process and every worker) -----------------------------------------
@lru_cache(maxsize=8)
def load_dataset(datasets_dir: str, name: str, split: str):
    from detectors.datasets import load_idx

    prefix = "train" if split == "train" else "t10k"
    return load_idx(Path(datasets_dir) / name / f"{prefix}-images-idx3-ubyte.gz")


def head(data, n: int | None, seed: int):
    """A seeded random subset of n images (all when n is None), in a stable order."""
    if n is None or n >= len(data):
        return data
    return data.select(np.sort(np.random.default_rng(seed).permutation(len(data))[:n]))


def unit_data(unit: Unit, settings: dict):
    """(splits of the normal training data, {set name: ImageSet} to score) for a unit."""
    from training.data import split

    seed = settings["seed"]
    train = load_dataset(settings["datasets"], unit.dataset, "train")
    if unit.normal_class is not None:
        train = train.with_classes([unit.normal_class])
    train = head(train, settings["max_train"], seed)
    calibration = settings["calibration_fraction"][unit.protocol]
    splits = split(train, seed=seed, validation=0.1, calibration=calibration)
    sets = {
        "calibration": splits.calibration,
        "test": head(
            load_dataset(settings["datasets"], unit.dataset, "test"), settings["max_test"], seed
        ),
    }
    if unit.protocol == "pair":
        sets["anomalous"] = head(
            load_dataset(settings["datasets"], PAIR_ANOMALOUS, "test"), settings["max_test"], seed
        )
    return splits, sets


# --- the worker: train one model, optionally score it with torch ----------------------------------
def output_names(kind: str, role: str) -> list[str]:
    if role == "background":
        return ["background_nll_bits_per_dim"]
    return (
        ["nll_bits_per_dim"]
        if kind == "pixelcnn"
        else ["neg_elbo_bits_per_dim", "iwae_bits_per_dim", "recon_mse"]
    )


def torch_outputs(
    kind: str, role: str, model, images: np.ndarray, settings: dict, *, batch_size: int = 500
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The exported graph's outputs computed by torch itself (same modules, fp32), plus the
    per-pixel map moments (2, C, H, W) for heat-map statistics."""
    import torch

    from detectors.fitting import map_moments
    from detectors.runtime import vae_noise
    from training.export import PixelCNNGraph, VAEGraph

    device = settings["torch_device"]
    graph = (PixelCNNGraph(model) if kind == "pixelcnn" else VAEGraph(model)).to(device).eval()
    names = output_names(kind, role)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    moments = 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(
                device
            )
            if kind == "pixelcnn":
                nll, bits_map = graph(x)
                values = [nll]
            else:
                noise = vae_noise(
                    {"seed": 0, "samples": settings["samples"], "latent_dim": model.cfg.latent},
                    len(x),
                )
                neg_elbo, iwae, bits_map, mse = graph(x, torch.from_numpy(noise).to(device))
                values = [neg_elbo, iwae, mse]
            for name, value in zip(names, values, strict=True):
                parts[name].append(value.double().cpu().numpy())
            moments = moments + map_moments(bits_map.double().cpu().numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}, moments


def save_weights(path: str, kind: str, model_config: dict, train, model, result) -> None:
    """A checkpoint `training.train.model_from_checkpoint` rebuilds the model from (no optimizer
    state, so it does not resume)."""
    import torch

    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"kind": kind, "model_config": dict(model_config), "train_config": asdict(train),
               "best_state_dict": weights, "epoch": result.epochs, "history": result.history,
               "best_val": result.best_validation_bits_per_dim, "stopped": result.stopped}
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def run_item(item: Item) -> dict:
    """Train one model under its budget; with the torch scorer, also score the unit's sets."""
    import torch

    from training.train import TrainConfig, fit

    settings = item.settings
    torch.set_num_threads(settings["threads"])
    torch.backends.cudnn.allow_tf32 = False  # scoring must match the fp32 ONNX graph
    torch.backends.cuda.matmul.allow_tf32 = False
    started = time.monotonic()
    splits, sets = unit_data(item.unit, settings)
    background = item.role == "background"
    train = TrainConfig(
        epochs=100_000,
        patience=settings["patience"],
        seed=settings["seed"],
        device=settings["device"],
        max_minutes=item.seconds / 60,
        perturb_rate=settings["background_rate"] if background else 0.0,
        weight_decay=1e-4 if background else 0.0,
        warmup_steps=settings["warmup_steps"],
        **{**TRAIN[item.unit.kind], **settings["train_overrides"]},
    )
    # No per-epoch checkpoints (tens of MB each with the optimizer state): the model is saved
    # once, weights only, where the main process or the user needs it.
    model, result = fit(item.unit.kind, item.model, splits, train, checkpoint=None, progress=False)
    if settings["scorer"] == "onnx" or item.unit.protocol == "pair":
        save_weights(item.checkpoint, item.unit.kind, item.model, train, model, result)
    info = {
        "key": item.unit.key,
        "role": item.role,
        "checkpoint": item.checkpoint,
        "budget_seconds": item.seconds,
        "epochs": result.epochs,
        "stopped": result.stopped,
        "validation_bits_per_dim": result.best_validation_bits_per_dim,
        "n_train": len(splits.train),
        "n_validation": len(splits.validation),
        "n_calibration": len(splits.calibration),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.monotonic() - started, 1),
    }
    if settings["scorer"] == "torch":
        settings = {**settings, "torch_device": next(model.parameters()).device}
        info["outputs"], info["moments"] = {}, None
        for name, data in sets.items():
            values, moments = torch_outputs(item.unit.kind, item.role, model, data.images, settings)
            info["outputs"][name] = values
            if name == "calibration":
                info["moments"] = moments
    info["seconds"] = round(time.monotonic() - started, 1)
    return info


def warm_worker(device: str, threads: int) -> None:
    """Start CUDA and cuDNN before the first budget starts counting."""
    import torch

    torch.set_num_threads(threads)
    if device == "cuda":
        try:
            x = torch.zeros(8, 4, 28, 28, device=device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                torch.nn.functional.conv2d(x, torch.zeros(8, 4, 3, 3, device=device)).sum().item()
        except Exception as error:  # the item itself will report what is wrong
            print(f"worker warm-up failed: {error}", file=sys.stderr, flush=True)


def run_item_safely(item: Item) -> dict:
    try:
        return run_item(item)
    except Exception as error:  # one failed model must not lose the others' figures
        return {
            "key": item.unit.key,
            "role": item.role,
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(),
        }


# --- the main process: bundles, scores, metrics ---------------------------------------------------
class CodeLengths:
    """zlib and PNG code lengths (bits/dim) per image set, computed once, reused by every model."""

    def __init__(self):
        self._cache: dict[str, dict[str, np.ndarray]] = {}

    def get(self, name: str, images: np.ndarray) -> dict[str, np.ndarray]:
        from detectors.complexity import code_length_bits_per_dim

        if name not in self._cache:
            self._cache[name] = {c: code_length_bits_per_dim(images, c) for c in ("zlib", "png")}
        return self._cache[name]


def build_graph(unit: Unit, infos: dict[str, dict], image_shape, samples: int):
    """Export the unit's graph from its checkpoints: (graph bytes, base metadata)."""
    from training.export import base_metadata, export_graph_bytes
    from training.train import model_from_checkpoint

    _, model, _ = model_from_checkpoint(infos["model"]["checkpoint"])
    background = None
    if "background" in infos:
        _, background, _ = model_from_checkpoint(infos["background"]["checkpoint"])
    graph = export_graph_bytes(
        unit.kind, model, image_shape, background=background, samples=samples
    )
    training = {
        "benchmark": "benchmarks/quality.py",
        "unit": unit.key,
        "models": {
            role: {k: v for k, v in info.items() if k not in ("outputs", "moments", "key")}
            for role, info in infos.items()
        },
    }
    meta = base_metadata(
        unit.kind,
        model,
        image_shape,
        has_background=background is not None,
        samples=samples,
        alpha=0.01,
        training=training,
    )
    return graph, meta


def onnx_outputs(bundle, images: np.ndarray, *, batch_size: int = 256) -> tuple[dict, np.ndarray]:
    """Every graph output but the map, and the map's moments, through ONNX Runtime on CPU."""
    from detectors.fitting import map_moments
    from detectors.runtime import OnnxSession

    session = OnnxSession(bundle, device="cpu")
    map_name = bundle.metadata["heatmap"]["output"]
    names = [o.name for o in session.session.get_outputs() if o.name != map_name]
    parts: dict[str, list] = {name: [] for name in names}
    moments = 0.0
    for start in range(0, len(images), batch_size):
        values = session.run(images[start : start + batch_size], [*names, map_name])
        for name in names:
            parts[name].append(values[name].astype(np.float64))
        moments = moments + map_moments(values[map_name])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}, moments


def calibration_report(reference: np.ndarray, normal: np.ndarray) -> dict:
    """Measured FPR at each alpha on held-out normal scores, with the binomial 95% interval of a
    test set of this size at the target, and the exact conformal one (beta-binomial: the
    reference is finite too); KS test of the normal p-values against uniform."""
    from scipy import stats

    from detectors.calibration import conformal_p_values, conformal_threshold
    from detectors.drift import ks_uniform

    reference = np.sort(reference)
    n, m = len(reference), len(normal)
    p_values = conformal_p_values(normal, reference)
    rows = []
    for alpha in ALPHAS:
        flagged = int(np.sum(p_values <= alpha))
        assert flagged == int(np.sum(normal > conformal_threshold(reference, alpha)))
        level = math.floor(
            alpha * (n + 1) + 1e-9
        )  # flagged iff fewer than `level` references are >= s
        binomial = [float(v) / m for v in stats.binom.interval(0.95, m, alpha)]
        exact = (
            [float(v) / m for v in stats.betabinom.interval(0.95, m, level, n + 1 - level)]
            if level >= 1
            else [0.0, 0.0]
        )
        fpr = flagged / m
        rows.append(
            {
                "alpha": alpha,
                "fpr": fpr,
                "flagged": flagged,
                "n_normal": m,
                "binomial_95": binomial,
                "inside_binomial": binomial[0] <= fpr <= binomial[1],
                "conformal_95": exact,
                "inside_conformal": exact[0] <= fpr <= exact[1],
                "reference_too_small": level < 1,
            }
        )
    ks = ks_uniform(p_values, reference_size=n)
    ks2 = stats.ks_2samp(normal, reference)
    return {"n_reference": n, "rows": rows, "ks_statistic": ks.statistic, "ks_p_value": ks.p_value,
            "ks_one_sample_p_value": ks_uniform(p_values).p_value,
            "ks2_statistic": float(ks2.statistic), "ks2_p_value": float(ks2.pvalue)}


RULES = (("fpr", 0.01), ("fpr", 0.05), ("recall", 0.95), ("f1", None))


def labelled_report(normal: np.ndarray, anomalous: np.ndarray, seed: int) -> dict:
    """With half of the labelled test scores: each threshold rule and P(anomaly) map, fitted on
    that half and measured on the other (the estimators of detectors/estimator.py)."""
    from detectors.estimator import LabelledThresholdDetector

    rng = np.random.default_rng(seed)
    s = np.r_[normal, anomalous]
    y = np.r_[np.zeros(len(normal), int), np.ones(len(anomalous), int)]
    fit_half = np.zeros(len(s), bool)
    fit_half[rng.permutation(len(s))[: len(s) // 2]] = True
    held_s, held_y = s[~fit_half], y[~fit_half]
    rules = []
    for rule, target in RULES:
        detector = LabelledThresholdDetector(rule=rule, target=target, probability=None)
        choice = detector.fit(s[fit_half], y[fit_half]).choice_
        flagged = detector.predict(held_s) == -1
        tp, fp = int(np.sum(flagged & (held_y == 1))), int(np.sum(flagged & (held_y == 0)))
        recall = tp / max(1, int(np.sum(held_y == 1)))
        precision = tp / (tp + fp) if tp + fp else 1.0
        rules.append({
            "rule": rule, "target": target, "threshold": choice.threshold,
            "fit": {"fpr": choice.fpr, "recall": choice.recall, "f1": choice.f1},
            "held_out": {"fpr": fp / max(1, int(np.sum(held_y == 0))), "recall": recall,
                         "f1": 2 * precision * recall / (precision + recall) if tp else 0.0},
        })
    maps = []
    for method in ("isotonic", "logistic"):
        detector = LabelledThresholdDetector(rule="f1", probability=method).fit(s[fit_half],
                                                                               y[fit_half])
        p = detector.predict_proba(held_s)[:, 1]
        bins = np.minimum((p * 10).astype(int), 9)
        ece = sum(abs(p[bins == b].mean() - held_y[bins == b].mean()) * np.mean(bins == b)
                  for b in range(10) if np.any(bins == b))
        maps.append({"method": method, "brier": float(np.mean((p - held_y) ** 2)),
                     "ece": float(ece)})
    return {"n_fit": int(fit_half.sum()), "n_held_out": int((~fit_half).sum()), "rules": rules,
            "probability": maps}


def finish_unit(
    unit: Unit, infos: dict[str, dict], settings: dict, codes: CodeLengths, out: Path
) -> dict:
    """Scores, metrics and calibration figures for one unit (and its bundle for protocol 1)."""
    from detectors.bundle import Bundle, write_bundle
    from detectors.evaluation import detection_metrics
    from detectors.fitting import metadata_with_reference
    from detectors.runtime import scores_from_outputs
    from training.export import score_specs

    started = time.monotonic()
    _, sets = unit_data(unit, settings)
    image_shape = tuple(int(d) for d in sets["test"].images.shape[1:])
    keep_bundle = unit.protocol == "pair"
    record: dict = {
        "unit": asdict(unit),
        "key": unit.key,
        "training": {
            role: {k: v for k, v in info.items() if k not in ("outputs", "moments")}
            for role, info in infos.items()
        },
    }
    outputs: dict[str, dict] = {}
    moments = None
    path = (out if keep_bundle else Path(settings["scratch"])) / f"{unit.dataset}-{unit.kind}.onnx"
    if settings["scorer"] == "onnx":
        graph, meta = build_graph(unit, infos, image_shape, settings["samples"])
        draft = write_bundle(graph, meta, path)
        for name, data in sets.items():
            outputs[name], set_moments = onnx_outputs(draft, data.images)
            if name == "calibration":
                moments = set_moments
    else:
        for name in sets:
            outputs[name] = {
                k: v for info in infos.values() for k, v in info["outputs"][name].items()
            }
        moments = infos["model"]["moments"]

    specs, default = score_specs(unit.kind, "background" in infos)
    names = list(specs)

    def codes_of(name: str, images: np.ndarray) -> dict[str, np.ndarray]:
        # Test sets are shared by every model of a data set; a calibration split is the unit's own.
        owner = {"calibration": unit.key, "test": unit.dataset, "anomalous": PAIR_ANOMALOUS}[name]
        key = f"{owner}:{'calibration' if name == 'calibration' else 'test'}"
        return codes.get(key, images)

    scores = {
        name: scores_from_outputs(
            specs, names, outputs[name], code_lengths=codes_of(name, data.images)
        )
        for name, data in sets.items()
    }
    if keep_bundle:  # the figures above do not depend on it: an export failure only loses the file
        try:
            if settings["scorer"] == "torch":
                graph, meta = build_graph(unit, infos, image_shape, settings["samples"])
                draft = write_bundle(graph, meta, path)
                # The same math, checked: ONNX Runtime (CPU) against torch on a slice.
                probe = min(256, len(sets["calibration"]))
                ort, _ = onnx_outputs(draft, sets["calibration"].images[:probe])
                record["parity_max_abs_diff"] = {
                    name: float(np.max(np.abs(ort[name] - outputs["calibration"][name][:probe])))
                    for name in ort
                }
            source = f"{unit.dataset} train, calibration split ({len(sets['calibration'])} images)"
            meta = metadata_with_reference(
                meta, scores["calibration"], moments=moments, source=source
            )
            write_bundle(graph, meta, path)
            Bundle.read(path)  # refuses an inconsistent file
            record["bundle"] = str(path)
        except Exception as error:
            record["bundle_error"] = f"{type(error).__name__}: {error}"
            print(f"  bundle for {unit.key} not written: {record['bundle_error']}", flush=True)

    if unit.protocol == "pair":
        normal, anomalous = scores["test"], scores["anomalous"]
    else:
        labels = sets["test"].labels
        is_normal = labels == unit.normal_class
        normal = {k: v[is_normal] for k, v in scores["test"].items()}
        anomalous = {k: v[~is_normal] for k, v in scores["test"].items()}
    record["default_score"] = default
    record["scores"] = {}
    for name in names:
        metrics = detection_metrics(normal[name], anomalous[name])
        metrics["calibration"] = calibration_report(scores["calibration"][name], normal[name])
        record["scores"][name] = metrics
    if unit.protocol == "pair":
        record["labelled"] = {
            name: labelled_report(normal[name], anomalous[name], settings["seed"]) for name in names
        }
    record["n_normal"] = len(next(iter(normal.values())))
    record["n_anomalous"] = len(next(iter(anomalous.values())))
    record["normal_bits_per_dim"] = float(
        np.mean(normal["nll" if unit.kind == "pixelcnn" else "iwae"])
    )
    record["finish_seconds"] = round(time.monotonic() - started, 1)
    return record


# --- driver ---------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--datasets",
        default="/work/shared/datasets",
        help="folder holding mnist/ and fashion-mnist/",
    )
    p.add_argument(
        "--out", default="runs/quality", help="folder for results.json, results.md, bundles"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--scorer",
        choices=["auto", "onnx", "torch"],
        default="auto",
        help="auto: torch on cuda (ONNX Runtime there may be CPU-only), onnx on cpu",
    )
    p.add_argument(
        "--protocols",
        default="pair,oneclass",
        help="pair and/or oneclass (calibration comes with both)",
    )
    p.add_argument("--classes", default="0-9", help="one-class normal classes, e.g. 0-9 or 0,3")
    p.add_argument("--oneclass-datasets", default=",".join(DATASETS))
    p.add_argument(
        "--seconds-per-model", type=float, help="training budget of each protocol-1 model"
    )
    p.add_argument(
        "--seconds-per-class-model", type=float, help="training budget of each one-class model"
    )
    p.add_argument(
        "--workers", type=int, help="models trained at once (default: 8 on cuda, 1 on cpu)"
    )
    p.add_argument(
        "--deadline",
        type=float,
        help="seconds after which no new model starts; the rest is reported as skipped "
        "(default 300, none with --quick)",
    )
    p.add_argument(
        "--background-rate",
        type=float,
        default=0.2,
        help="pixel substitution rate of the likelihood ratio's background model",
    )
    p.add_argument("--samples", type=int, help="VAE importance samples (default 8; quick 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick", action="store_true", help="tiny models on subsets: checks the script end to end"
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.seconds_per_model = args.seconds_per_model or (6.0 if quick else 120.0)
    args.seconds_per_class_model = args.seconds_per_class_model or (3.0 if quick else 20.0)
    args.samples = args.samples or (4 if quick else 8)
    if args.quick and args.classes == "0-9":
        args.classes = "0"
    return args


def gpu_facts() -> dict[str, str]:
    """The GPU's name and compute mode from nvidia-smi (empty when it cannot say)."""
    import subprocess

    try:
        line = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_mode", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    name, _, mode = line.rpartition(",")
    return {"name": name.strip(), "compute_mode": mode.strip()}


def parse_classes(text: str) -> list[int]:
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(c) for c in text.split(",") if c.strip()]


def plan(args, settings: dict, out: Path) -> list[Item]:
    protocols = {p.strip() for p in args.protocols.split(",")}
    unknown = protocols - {"pair", "oneclass"}
    if unknown:
        msg = f"unknown protocol(s) {sorted(unknown)}; use pair and/or oneclass"
        raise SystemExit(msg)
    models = MODELS["quick" if args.quick else "full"]
    items = []
    if "pair" in protocols:
        for kind in ("pixelcnn", "vae"):
            unit = Unit("pair", PAIR_NORMAL, kind)
            for role in unit.roles:
                suffix = ".background.pt" if role == "background" else ".pt"
                items.append(
                    Item(
                        unit,
                        role,
                        args.seconds_per_model,
                        models[kind],
                        str(out / f"{PAIR_NORMAL}-{kind}{suffix}"),
                        settings,
                    )
                )
    if "oneclass" in protocols:
        # Class by class, so that a run cut short by --deadline still covers the same classes
        # for every data set and model kind.
        datasets = [d.strip() for d in args.oneclass_datasets.split(",") if d.strip()]
        for cls in parse_classes(args.classes):
            for dataset in datasets:
                for kind in ("pixelcnn", "vae"):
                    unit = Unit("oneclass", dataset, kind, cls)
                    for role in unit.roles:
                        items.append(
                            Item(
                                unit,
                                role,
                                args.seconds_per_class_model,
                                models[kind],
                                str(Path(settings["scratch"]) / f"{unit.key}-{role}.pt"),
                                settings,
                            )
                        )
    return items


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [
        d for d in DATASETS if not (Path(args.datasets) / d / "train-images-idx3-ubyte.gz").exists()
    ]
    if missing:
        print(
            f"quality benchmark skipped: {', '.join(missing)} not found under {args.datasets} "
            "(expected <name>/train-images-idx3-ubyte.gz and t10k-*)",
            file=sys.stderr,
        )
        return 2
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        msg = "--device cuda: torch sees no CUDA device"
        raise SystemExit(msg)
    scorer = args.scorer if args.scorer != "auto" else ("torch" if device == "cuda" else "onnx")
    workers = args.workers or (8 if device == "cuda" else 1)
    gpu = gpu_facts() if device == "cuda" else {}
    if workers > 1 and gpu.get("compute_mode", "").lower().startswith("exclusive"):
        # One process per GPU: train one model at a time, in this process, on shorter budgets.
        print(f"GPU compute mode {gpu['compute_mode']}: one model at a time", flush=True)
        args.seconds_per_model /= workers
        args.seconds_per_class_model /= workers
        workers = 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.TemporaryDirectory(prefix="normalcy-quality-")
    cores = os.cpu_count() or 1
    settings = {
        "datasets": args.datasets,
        "device": device,
        "scorer": scorer,
        "seed": args.seed,
        "samples": args.samples,
        "background_rate": args.background_rate,
        "patience": 5,
        "warmup_steps": 5 if args.quick else 50,
        "train_overrides": {"batch_size": 32} if args.quick else {},
        "max_train": 3000 if args.quick else None,
        "max_test": 600 if args.quick else None,
        "calibration_fraction": {"pair": 0.1, "oneclass": 0.2},
        "scratch": scratch.name,
        "threads": max(1, cores // workers) if workers > 1 else max(1, cores),
        "quick": args.quick,
        "workers": workers,
        "seconds_per_model": args.seconds_per_model,
        "seconds_per_class_model": args.seconds_per_class_model,
    }
    # No torch.cuda call here beyond is_available: the workers own the GPU's contexts.
    device_name = (
        gpu.get("name", "cuda")
        if device == "cuda"
        else f"cpu ({platform.processor() or 'unknown'}, {cores} cores)"
    )
    torch.set_num_threads(max(1, min(4, cores)))
    items = plan(args, settings, out)
    results = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device_name,
        "torch_version": torch.__version__,
        "gpu": gpu,
        "command": " ".join(sys.argv),
        "settings": {k: v for k, v in settings.items() if k != "scratch"},
        "models": MODELS["quick" if args.quick else "full"],
        "train": TRAIN,
        "records": [],
        "errors": [],
        "skipped": [],
    }
    started = time.monotonic()
    deadline = args.deadline if args.deadline is not None else (math.inf if args.quick else 300.0)
    budget = sum(item.seconds for item in items)
    print(
        f"quality: {len(items)} models on {device_name}, {workers} at a time, scorer {scorer}; "
        f"{budget:.0f} s of training budgets, about {budget / min(workers, len(items)):.0f} s of "
        f"wall time for training alone; no model starts after {deadline:.0f} s",
        flush=True,
    )

    codes = CodeLengths()
    pending_units: dict[str, dict] = {}
    units = {item.unit.key: item.unit for item in items}

    def write() -> None:
        results["wall_seconds"] = round(time.monotonic() - started, 1)
        results["summary"] = summarize(results["records"])
        (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
        (out / "results.md").write_text(markdown(results))

    def collect(info: dict) -> None:
        if "error" in info:
            print(f"  FAILED {info['key']} {info['role']}: {info['error']}", flush=True)
            results["errors"].append({k: info[k] for k in ("key", "role", "error", "traceback")})
            pending_units.pop(info["key"], None)
            units.pop(info["key"], None)
            return
        print(
            f"  trained {info['key']} {info['role']}: {info['epochs']} epoch(s), validation "
            f"{info['validation_bits_per_dim']:.4f} bits/dim, {info['seconds']} s",
            flush=True,
        )
        got = pending_units.setdefault(info["key"], {})
        got[info["role"]] = info
        unit = units.get(info["key"])
        if unit is not None and set(got) == set(unit.roles):
            try:
                record = finish_unit(unit, pending_units.pop(info["key"]), settings, codes, out)
            except Exception as error:
                print(f"  FAILED scoring {unit.key}: {error}", flush=True)
                results["errors"].append(
                    {
                        "key": unit.key,
                        "role": "scoring",
                        "error": str(error),
                        "traceback": traceback.format_exc(),
                    }
                )
                return
            default = record["scores"][record["default_score"]]
            print(
                f"  scored {unit.key}: {record['default_score']} AUROC {default['auroc']:.4f} "
                f"({time.monotonic() - started:.0f} s)",
                flush=True,
            )
            results["records"].append(record)
            write()

    if workers == 1:
        for item in items:
            if time.monotonic() - started > deadline:
                results["skipped"].append(f"{item.unit.key}:{item.role}")
                continue
            collect(run_item_safely(item))
    else:
        context = mp.get_context("spawn")  # CUDA cannot be shared with forked children
        with cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=warm_worker,
            initargs=(device, settings["threads"]),
        ) as pool:
            futures = {pool.submit(run_item_safely, item): item for item in items}
            remaining = set(futures)
            while remaining:
                done, remaining = cf.wait(remaining, timeout=5, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    if future.cancelled():
                        continue
                    try:
                        info = future.result()
                    except Exception as error:  # a worker died (out of memory, a broken pool)
                        item = futures[future]
                        info = {"key": item.unit.key, "role": item.role,
                                "error": f"{type(error).__name__}: {error}",
                                "traceback": traceback.format_exc()}
                    collect(info)
                if time.monotonic() - started > deadline:
                    for future in list(remaining):
                        if future.cancel():
                            item = futures[future]
                            results["skipped"].append(f"{item.unit.key}:{item.role}")
                            remaining.discard(future)
    write()
    scratch.cleanup()
    print((out / "results.md").read_text())
    seconds = time.monotonic() - started
    print(f"wrote {out / 'results.json'} and {out / 'results.md'} in {seconds:.0f} s")
    return 1 if results["errors"] else 0


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
