"""`normalcy quantize`: a bundle's graph as static int8 (QDQ), checked against its fp32 source and
calibrated again, so its p-values are exact for the graph that serves.

    normal images (never trained on), shuffled with a fixed seed
      |- the first `range_images`: set the activation ranges (onnxruntime's MinMax calibration)
      '- the rest, held out: parity against fp32, then the conformal references
    all Conv / ConvTranspose / Gemm / MatMul nodes -> int8 weights (per channel), uint8 activations
    parity over budget -> keep the node that moves the likelihood most in fp32, measure again, ...
    within budget -> references and heat-map statistics recomputed on the held-out images by
                     `detectors.fitting.recalibrate` (what `normalcy calibrate` runs), so every
                     score the calibrate path knows is calibrated on the quantised graph

The references come from images that played no part in making the graph (not the range images):
exchangeable with fresh normal images, as the conformal p-value needs.

onnxruntime.quantization needs the `onnx` package, which the serving install does not carry, so
this lives in `training` (the `train` extra) although it never imports torch.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from detectors import Detector
from detectors.bundle import Bundle, write_bundle
from detectors.errors import BundleError, InputError
from detectors.evaluation import detection_metrics
from detectors.fitting import recalibrate
from detectors.runtime import vae_noise
from detectors.sources import ImageSet
from detectors.spec import BundleSpec, Parity, Precision

log = logging.getLogger(__name__)

BUDGET_MEAN_ABS_DELTA_BITS_PER_DIM = 0.01
BUDGET_AUROC_CHANGE = 0.002
PROBE_IMAGES = 64
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
METHOD = "onnxruntime static QDQ: per-channel int8 weights, uint8 activations, MinMax ranges"


class ParityError(BundleError):
    """The quantised graph scores too differently from its fp32 source: no bundle is written."""


@dataclass(frozen=True)
class Budget:
    mean_abs_delta_bits_per_dim: float = BUDGET_MEAN_ABS_DELTA_BITS_PER_DIM
    auroc_change: float = BUDGET_AUROC_CHANGE

    def allows(self, parity: Parity) -> bool:
        within = parity.mean_abs_delta_bits_per_dim <= self.mean_abs_delta_bits_per_dim
        change = parity.auroc_change
        return within and (change is None or abs(change) <= self.auroc_change)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol (`get_next`, None at the end) over batches
    fed exactly as the runtime feeds them (the same VAE noise, the labels)."""

    def __init__(self, bundle: Bundle, images: ImageSet, batch_size: int = 64):
        spec, n = bundle.spec, len(images.images)
        self._feeds = []
        for start in range(0, n, batch_size):
            part = images.select(slice(start, start + batch_size))
            feed = {spec.input.name: part.images}
            if spec.noise:
                feed[spec.noise.input] = vae_noise(spec.noise, len(part.images))
            if spec.labels:
                feed[spec.labels.input] = part.labels
            self._feeds.append(feed)
        self._next = iter(self._feeds)

    def get_next(self) -> dict | None:
        return next(self._next, None)


class _Quantizer:
    """One fp32 graph, pre-processed once, activation ranges computed once (a calibration cache);
    `graph(fp32_nodes)` is then the int8 graph keeping those nodes in fp32."""

    def __init__(self, bundle: Bundle, ranges: ImageSet, workdir: Path):
        from onnxruntime.quantization import quant_pre_process

        self.bundle, self.workdir = bundle, workdir
        source, self.model = workdir / "fp32.onnx", workdir / "preprocessed.onnx"
        source.write_bytes(bundle.model_bytes)
        # Constant folding makes the masked kernels (weight * mask) plain initializers, which is
        # what lets the quantiser see them as weights.
        quant_pre_process(str(source), str(self.model), skip_symbolic_shape=True)
        self.cache = workdir / "ranges.json"
        self.reader = _Reader(bundle, ranges)
        self.nodes = self._quantizable_nodes()

    def _quantizable_nodes(self) -> list[str]:
        import onnx

        graph = onnx.load(str(self.model)).graph
        return [node.name for node in graph.node if node.op_type in QUANTIZABLE_OPS]

    def graph(self, fp32_nodes=(), *, only: list[str] | None = None) -> bytes:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        out = self.workdir / "int8.onnx"
        quantize_static(
            str(self.model),
            str(out),
            None if self.cache.exists() else self.reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZABLE_OPS),
            per_channel=True,
            # uint8 activations and int8 weights: the VNNI kernels' pair on x86
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=only,
            nodes_to_exclude=list(fp32_nodes),
            calibration_cache_path=str(self.cache),
        )
        return out.read_bytes()


class _Judge:
    """Measures a graph's parity with the fp32 bundle on the held-out images."""

    def __init__(
        self, bundle: Bundle, held_out: ImageSet, anomalous: ImageSet | None, workdir: Path
    ):
        self.spec, self.held_out, self.anomalous = bundle.spec, held_out, anomalous
        self.trial = workdir / "trial.onnx"
        self.likelihood = bundle.spec.likelihood_score
        self.fp32 = self._scores(bundle)

    def _scores(self, bundle: Bundle) -> dict[str, np.ndarray]:
        detector = Detector(bundle, device="cpu", raw_only=True)
        names = list(dict.fromkeys([self.likelihood, self.spec.default_score]))
        held_out = self.held_out
        normal, _ = detector.raw_scores_batched(held_out.images, names, labels=held_out.labels)
        scores = {f"normal.{name}": values for name, values in normal.items()}
        if self.anomalous is not None:
            a = self.anomalous
            anomalous, _ = detector.raw_scores_batched(a.images, names, labels=a.labels)
            scores.update({f"anomalous.{name}": values for name, values in anomalous.items()})
        return scores

    def auroc(self, scores: dict[str, np.ndarray]) -> float:
        name = self.spec.default_score
        return detection_metrics(scores[f"normal.{name}"], scores[f"anomalous.{name}"])["auroc"]

    def parity(self, model_bytes: bytes, budget: Budget) -> Parity:
        scores = self._scores(write_bundle(model_bytes, self.spec, self.trial))
        key = f"normal.{self.likelihood}"
        delta = np.abs(scores[key] - self.fp32[key])
        aurocs = {}
        if self.anomalous is not None:
            aurocs = {
                "auroc_score": self.spec.default_score,
                "anomalous_data": self.anomalous.source,
                "auroc_fp32": self.auroc(self.fp32),
                "auroc_quantized": self.auroc(scores),
                "budget_auroc_change": budget.auroc_change,
            }
            aurocs["auroc_change"] = aurocs["auroc_quantized"] - aurocs["auroc_fp32"]
        return Parity(
            data=self.held_out.source,
            n_images=len(delta),
            score=self.likelihood,
            mean_abs_delta_bits_per_dim=float(delta.mean()),
            max_abs_delta_bits_per_dim=float(delta.max()),
            budget_mean_abs_delta_bits_per_dim=budget.mean_abs_delta_bits_per_dim,
            **aurocs,
        )


def _sensitivity(quantizer: _Quantizer, judge: _Judge, budget: Budget) -> list[str]:
    """Quantisable nodes, the one that moves the likelihood most on its own first (measured on
    at most PROBE_IMAGES of the held-out images: one graph per node)."""
    probe = judge.held_out.select(slice(0, PROBE_IMAGES))
    judge = _Judge(quantizer.bundle, probe, None, quantizer.workdir)
    moved = {}
    for node in quantizer.nodes:
        graph = quantizer.graph(only=[node])
        moved[node] = judge.parity(graph, budget).mean_abs_delta_bits_per_dim
    return sorted(moved, key=moved.get, reverse=True)


def split(normal: ImageSet, range_images: int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(images that set the activation ranges, held-out images), a seeded shuffle apart."""
    n = len(normal.images)
    n_range = min(range_images, n // 2)
    if n_range < 1:
        msg = f"quantize needs at least 2 normal images (got {n})"
        raise InputError(msg)
    order = np.random.default_rng(seed).permutation(n)
    return normal.select(order[:n_range]), normal.select(order[n_range:])


def quantize_bundle(
    bundle: Bundle,
    normal: ImageSet,
    *,
    anomalous: ImageSet | None = None,
    range_images: int = 256,
    budget: Budget | None = None,
    fp32_nodes: tuple[str, ...] = (),
    search: bool = True,
) -> tuple[bytes, BundleSpec, dict]:
    """The int8 graph of `bundle`, its metadata (calibrated on the quantised graph, with the
    Precision record) and a summary. Raises ParityError when no graph within `budget` is found:
    with `search`, nodes are kept in fp32 one at a time, most harmful first, until it fits."""
    budget = budget or Budget()
    if bundle.spec.precision is not None:
        msg = f"{bundle.path or 'bundle'} is already {bundle.spec.precision.weights}"
        raise InputError(msg)
    normal, anomalous = _checked(bundle, normal), anomalous and _checked(bundle, anomalous)
    ranges, held_out = split(normal, range_images)
    with tempfile.TemporaryDirectory(prefix="normalcy-quantize-") as tmp:
        judge = _Judge(bundle, held_out, anomalous, Path(tmp))
        quantizer = _Quantizer(bundle, ranges, Path(tmp))
        unknown = set(fp32_nodes) - set(quantizer.nodes)
        if unknown:
            msg = f"no quantisable nodes {sorted(unknown)}; the graph has {quantizer.nodes}"
            raise InputError(msg)
        kept = list(fp32_nodes)
        graph = quantizer.graph(kept)
        parity = judge.parity(graph, budget)
        tried = [(list(kept), parity)]
        if search and not budget.allows(parity):
            candidates = [n for n in _sensitivity(quantizer, judge, budget) if n not in kept]
            # Stop before the last one: a graph with nothing quantised is not an int8 graph.
            while not budget.allows(parity) and len(candidates) > 1:
                kept.append(candidates.pop(0))
                graph = quantizer.graph(kept)
                parity = judge.parity(graph, budget)
                tried.append((list(kept), parity))
                log.info("kept %d node(s) in fp32: %s", len(kept), parity.to_json())
        if not budget.allows(parity):
            raise ParityError(_refusal(parity, budget, len(kept)))
        precision = Precision(
            weights="int8",
            activations="uint8",
            method=METHOD,
            quantized_nodes=len(quantizer.nodes) - len(kept),
            fp32_nodes=tuple(kept),
            range_data=ranges.source,
            n_range_images=len(ranges.images),
            source_sha256=bundle.sha256,
            parity=parity,
        )
        draft = write_bundle(graph, replace(bundle.spec, precision=precision), Path(tmp) / "b.onnx")
        # The product's own calibration path (`normalcy calibrate`), on the graph that will serve.
        spec, summary = recalibrate(
            draft, held_out.images, labels=held_out.labels, source=held_out.source, device="cpu"
        )
    summary = {
        "precision": precision.to_json(),
        "tried": [{"fp32_nodes": k, **p.to_json()} for k, p in tried],
        **summary,
    }
    return graph, spec, summary


def _checked(bundle: Bundle, images: ImageSet) -> ImageSet:
    """Images as the graph takes them (converted per the bundle's rules), with their labels
    only when the bundle is conditional (each image is then scored given its own label)."""
    detector = Detector(bundle, device="cpu", raw_only=True)
    batch = detector.check_images(images.images)
    labels = detector.check_labels(images.labels, len(batch)) if bundle.spec.labels else None
    return ImageSet(batch, labels, images.source)


def _refusal(parity: Parity, budget: Budget, n_kept: int) -> str:
    figures = (
        f"mean |delta {parity.score}| {parity.mean_abs_delta_bits_per_dim:.4g} bits/dim "
        f"(budget {budget.mean_abs_delta_bits_per_dim:g})"
    )
    if parity.auroc_change is not None:
        figures += f", AUROC change {parity.auroc_change:+.4f} (budget {budget.auroc_change:g})"
    return (
        f"the int8 graph is over the parity budget with {n_kept} node(s) kept in fp32: {figures} "
        f"on {parity.n_images} held-out normal images; no bundle written"
    )
