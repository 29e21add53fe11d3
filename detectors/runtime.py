"""ONNX Runtime backend: one session per bundle, checked against the bundle's metadata."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .bundle import Bundle
from .combination import combine
from .complexity import code_length_bits_per_dim
from .errors import BundleError, InputError
from .labels import check_labels
from .score_kinds import (
    CombinedScore,
    ComplexityScore,
    DifferenceScore,
    OutputScore,
    ScoreSpec,
)
from .spec import NoiseSpec

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")


def gpu_present() -> bool:
    """True when an NVIDIA device node exists (onnxruntime-gpu lists CUDA even without one)."""
    return Path("/dev/nvidiactl").exists() or bool(os.environ.get("NORMALCY_ASSUME_GPU"))


def choose_providers(device: str = "auto") -> list[str]:
    """Execution providers for `device`: CUDA first when asked for (or `auto` and usable). A
    server asked for CUDA on an onnxruntime without it scores on the CPU and says so."""
    if device not in DEVICES:
        msg = f"device must be one of {DEVICES}, got {device!r}"
        raise ValueError(msg)
    cuda_built = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not cuda_built:
        log.warning(
            "device 'cuda' asked for, but this onnxruntime has no CUDA execution provider "
            "(install normalcy[gpu]): falling back to CPU"
        )
        return ["CPUExecutionProvider"]
    if device == "cuda" or (device == "auto" and cuda_built and gpu_present()):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxSession:
    """Runs a bundle's graph and derives its raw scores; knows nothing of calibration."""

    def __init__(self, bundle: Bundle, *, device: str = "auto", threads: int | None = None):
        self.bundle = bundle
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        providers = choose_providers(device)
        try:
            self.session = ort.InferenceSession(bundle.model_bytes, options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            msg = f"{bundle.path or 'bundle'}: ONNX Runtime cannot load the graph ({error})"
            raise BundleError(msg) from None
        self.provider = self.session.get_providers()[0]
        if self.provider != providers[0]:
            # onnxruntime drops a provider that fails to start (no GPU, CUDA or cuDNN libraries
            # missing) and logs it at its own level only.
            log.warning(
                "%s: %s failed to start (no GPU, or CUDA/cuDNN libraries missing): falling back "
                "to %s",
                bundle.path or "bundle",
                providers[0],
                self.provider,
            )
        self._check_graph()
        log.info("loaded %s (%s) on %s", bundle.path, bundle.kind, self.provider)

    def _check_graph(self) -> None:
        spec = self.bundle.spec
        where = self.bundle.path or "bundle"
        inputs = {node.name: node for node in self.session.get_inputs()}
        outputs = {node.name for node in self.session.get_outputs()}
        name = spec.input.name
        image = inputs.get(name)
        if image is None:
            msg = f"{where}: metadata names input {name!r}, graph has {sorted(inputs)}"
            raise BundleError(msg)
        if image.type != "tensor(uint8)":
            msg = f"{where}: graph input {name!r} is {image.type}, metadata says uint8"
            raise BundleError(msg)
        expected = list(spec.input.shape)
        if len(image.shape) != 4 or list(image.shape[1:]) != expected:
            msg = (
                f"{where}: graph input shape {image.shape} disagrees with metadata (B, {expected})"
            )
            raise BundleError(msg)
        noise, labels = spec.noise, spec.labels
        wanted_inputs = (
            {name} | ({noise.input} if noise else set()) | ({labels.input} if labels else set())
        )
        if set(inputs) != wanted_inputs:
            msg = (
                f"{where}: graph inputs {sorted(inputs)} disagree with metadata "
                f"{sorted(wanted_inputs)}"
            )
            raise BundleError(msg)
        if labels and inputs[labels.input].type != "tensor(int64)":
            found = inputs[labels.input].type
            msg = f"{where}: graph input {labels.input!r} is {found}, metadata says int64"
            raise BundleError(msg)
        missing = spec.graph_outputs() - outputs
        if missing:
            msg = f"{where}: metadata refers to outputs {sorted(missing)} that the graph lacks"
            raise BundleError(msg)

    def run(self, images: np.ndarray, outputs: list[str], *, labels=None) -> dict[str, np.ndarray]:
        """Run the graph on uint8 (B, C, H, W) images (and, for a conditional bundle, their class
        labels (B,)) and return the named outputs."""
        spec = self.bundle.spec
        feeds = {spec.input.name: images}
        checked = check_labels(labels, len(images), spec.labels)
        if spec.labels:
            feeds[spec.labels.input] = checked
        if spec.noise:
            feeds[spec.noise.input] = vae_noise(spec.noise, len(images))
        values = self.session.run(outputs, feeds)
        return dict(zip(outputs, values, strict=True))

    def raw_scores(
        self, images: np.ndarray, names: list[str], *, with_map: bool = False, labels=None
    ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Raw scores (B,) for each named score, and the per-pixel map (B, C, H, W) if asked."""
        specs = self.bundle.spec.scores
        needed = [out for name in with_members(specs, names) for out in specs[name].inputs()]
        map_output = self.bundle.spec.heatmap.output if with_map else None
        if map_output:
            needed.append(map_output)
        values = self.run(images, list(dict.fromkeys(needed)), labels=labels)
        scores = scores_from_outputs(specs, names, values, images=images)
        return scores, (values[map_output] if map_output else None)


def vae_noise(noise: NoiseSpec, batch: int) -> np.ndarray:
    """The VAE's reparameterisation noise (B, K, latent) float32 from the bundle's noise spec.

    The same draw for every image, so an image's score does not depend on its batch.
    """
    draw = np.random.default_rng(noise.seed).standard_normal((noise.samples, noise.latent_dim))
    return np.ascontiguousarray(np.broadcast_to(draw, (batch, *draw.shape)), dtype=np.float32)


def with_members(specs: Mapping[str, ScoreSpec], names: list[str]) -> list[str]:
    """`names` and, before them, the members of the combined scores among them (no repeats)."""
    combined = [specs[name] for name in names if isinstance(specs[name], CombinedScore)]
    members = [m for score in combined for m in score.statistics]
    return list(dict.fromkeys([*members, *names]))


def scores_from_outputs(
    specs: Mapping[str, ScoreSpec],
    names: list[str],
    outputs: dict[str, np.ndarray],
    *,
    images: np.ndarray | None = None,
    code_lengths: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Raw scores (B,) for `names` from graph outputs: an output as is, minus a compressor's code
    length, minus another output, or the other scores combined (their references must be
    calibrated). Code lengths in bits/dim come from `code_lengths[compressor]` when given
    (computed once, reused across models), else from `images`."""
    scores = {}
    for name in with_members(specs, names):
        spec = specs[name]
        if isinstance(spec, CombinedScore):
            members = {m: scores[m] for m in spec.statistics}
            references = spec.references(specs)
            try:
                scores[name] = combine(spec.rule, members, references)
            except InputError as error:
                msg = f"score {name!r}: {error}"
                raise BundleError(msg) from None
            continue
        if not isinstance(spec, OutputScore):
            msg = f"score {name!r}: this runtime cannot compute scores of kind {spec.kind!r}"
            raise BundleError(msg)
        raw = np.asarray(outputs[spec.output], dtype=np.float64)
        if isinstance(spec, ComplexityScore):
            if code_lengths is not None and spec.compressor in code_lengths:
                bits = np.asarray(code_lengths[spec.compressor], dtype=np.float64)
            elif images is not None:
                bits = code_length_bits_per_dim(images, spec.compressor)
            else:
                msg = f"score {name!r} needs the images or their {spec.compressor} code lengths"
                raise ValueError(msg)
            raw = raw - bits
        elif isinstance(spec, DifferenceScore):
            raw = raw - np.asarray(outputs[spec.minus_output], dtype=np.float64)
        scores[name] = raw
    return {name: scores[name] for name in names}
