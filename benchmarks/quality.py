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
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.quality_report import (  # noqa: E402
    DATASETS,
    calibration_report,
    labelled_report,
    markdown,
    summarize,
)
from benchmarks.quality_work import (  # noqa: E402
    MODELS,
    PAIR_ANOMALOUS,
    PAIR_NORMAL,
    TRAIN,
    Item,
    Unit,
    run_item_safely,
    unit_data,
    warm_worker,
)


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
    from detectors.spec import TrainingFacts
    from training.export import base_spec, export_graph_bytes
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
    meta = base_spec(
        unit.kind,
        model,
        image_shape,
        has_background=background is not None,
        samples=samples,
        alpha=0.01,
        training=TrainingFacts.from_json(training, "training"),
    )
    return graph, meta


def onnx_outputs(bundle, images: np.ndarray, *, batch_size: int = 256) -> tuple[dict, np.ndarray]:
    """Every graph output but the map, and the map's moments, through ONNX Runtime on CPU."""
    from detectors.calibration import map_moments
    from detectors.runtime import OnnxSession

    session = OnnxSession(bundle, device="cpu")
    map_name = bundle.spec.heatmap.output
    names = [o.name for o in session.session.get_outputs() if o.name != map_name]
    parts: dict[str, list] = {name: [] for name in names}
    moments = 0.0
    for start in range(0, len(images), batch_size):
        values = session.run(images[start : start + batch_size], [*names, map_name])
        for name in names:
            parts[name].append(values[name].astype(np.float64))
        moments = moments + map_moments(values[map_name])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}, moments


def finish_unit(
    unit: Unit, infos: dict[str, dict], settings: dict, codes: CodeLengths, out: Path
) -> dict:
    """Scores, metrics and calibration figures for one unit (and its bundle for protocol 1)."""
    from detectors.bundle import Bundle, write_bundle
    from detectors.evaluation import detection_metrics
    from detectors.fitting import with_reference
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
            meta = with_reference(meta, scores["calibration"], moments=moments, source=source)
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
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
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


class Results:
    """The run's results, written after every finished unit so a cut-short run keeps its figures."""

    def __init__(self, out: Path, settings: dict, header: dict, units: dict[str, Unit]):
        self.out, self.settings, self.units = out, settings, units
        self.data = {**header, "records": [], "errors": [], "skipped": []}
        self.codes = CodeLengths()
        self.pending: dict[str, dict] = {}  # unit key -> {role: trained model's info}
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def write(self) -> None:
        self.data["wall_seconds"] = round(self.elapsed(), 1)
        self.data["summary"] = summarize(self.data["records"])
        text = json.dumps(self.data, indent=1, default=_json_default)
        (self.out / "results.json").write_text(text)
        (self.out / "results.md").write_text(markdown(self.data))

    def error(self, key: str, role: str, error: str, trace: str) -> None:
        print(f"  FAILED {key} {role}: {error}", flush=True)
        self.data["errors"].append({"key": key, "role": role, "error": error, "traceback": trace})

    def collect(self, info: dict) -> None:
        """Take one trained model; when its unit is complete, score the unit and write."""
        if "error" in info:
            self.error(info["key"], info["role"], info["error"], info["traceback"])
            self.pending.pop(info["key"], None)
            self.units.pop(info["key"], None)
            return
        print(
            f"  trained {info['key']} {info['role']}: {info['epochs']} epoch(s), validation "
            f"{info['validation_bits_per_dim']:.4f} bits/dim, {info['seconds']} s",
            flush=True,
        )
        got = self.pending.setdefault(info["key"], {})
        got[info["role"]] = info
        unit = self.units.get(info["key"])
        if unit is None or set(got) != set(unit.roles):
            return
        try:
            record = finish_unit(
                unit, self.pending.pop(unit.key), self.settings, self.codes, self.out
            )
        except Exception as error:
            self.error(
                unit.key, "scoring", f"{type(error).__name__}: {error}", traceback.format_exc()
            )
            return
        default = record["scores"][record["default_score"]]
        print(
            f"  scored {unit.key}: {record['default_score']} AUROC {default['auroc']:.4f} "
            f"({self.elapsed():.0f} s)",
            flush=True,
        )
        self.data["records"].append(record)
        self.write()


def run_items(
    items: list[Item], results: Results, *, workers: int, device: str, threads: int, deadline: float
) -> None:
    """Train every item (in `workers` processes when more than one); none starts after
    `deadline` seconds, and those are reported as skipped."""
    if workers == 1:
        for item in items:
            if results.elapsed() > deadline:
                results.data["skipped"].append(f"{item.unit.key}:{item.role}")
                continue
            results.collect(run_item_safely(item))
        return
    context = mp.get_context("spawn")  # CUDA cannot be shared with forked children
    with cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=warm_worker, initargs=(device, threads)
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
                    info = {
                        "key": item.unit.key,
                        "role": item.role,
                        "error": f"{type(error).__name__}: {error}",
                        "traceback": traceback.format_exc(),
                    }
                results.collect(info)
            if results.elapsed() > deadline:
                for future in list(remaining):
                    if future.cancel():
                        item = futures[future]
                        results.data["skipped"].append(f"{item.unit.key}:{item.role}")
                        remaining.discard(future)


def make_settings(args, *, device: str, scorer: str, workers: int, scratch: str) -> dict:
    """What every worker needs to know, picklable."""
    cores = os.cpu_count() or 1
    return {
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
        "scratch": scratch,
        "threads": max(1, cores // workers),
        "quick": args.quick,
        "workers": workers,
        "seconds_per_model": args.seconds_per_model,
        "seconds_per_class_model": args.seconds_per_class_model,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(args.datasets)
    missing = [d for d in DATASETS if not (root / d / "train-images-idx3-ubyte.gz").exists()]
    if missing:
        print(
            f"quality benchmark skipped: {', '.join(missing)} not found under {root} "
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
    # No torch.cuda call here beyond is_available: the workers own the GPU's contexts.
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
    settings = make_settings(
        args, device=device, scorer=scorer, workers=workers, scratch=scratch.name
    )
    cores = os.cpu_count() or 1
    device_name = (
        gpu.get("name", "cuda")
        if device == "cuda"
        else f"cpu ({platform.processor() or 'unknown'}, {cores} cores)"
    )
    torch.set_num_threads(max(1, min(4, cores)))
    items = plan(args, settings, out)
    header = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device_name,
        "torch_version": torch.__version__,
        "gpu": gpu,
        "command": " ".join(sys.argv),
        "settings": {k: v for k, v in settings.items() if k != "scratch"},
        "models": MODELS["quick" if args.quick else "full"],
        "train": TRAIN,
    }
    results = Results(out, settings, header, {item.unit.key: item.unit for item in items})
    deadline = args.deadline if args.deadline is not None else (math.inf if args.quick else 300.0)
    budget = sum(item.seconds for item in items)
    print(
        f"quality: {len(items)} models on {device_name}, {workers} at a time, scorer {scorer}; "
        f"{budget:.0f} s of training budgets, about {budget / min(workers, len(items)):.0f} s "
        f"of wall time for training alone; no model starts after {deadline:.0f} s",
        flush=True,
    )
    run_items(
        items,
        results,
        workers=workers,
        device=device,
        threads=settings["threads"],
        deadline=deadline,
    )
    results.write()
    scratch.cleanup()
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'} and {out / 'results.md'} in {results.elapsed():.0f} s")
    return 1 if results.data["errors"] else 0


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
