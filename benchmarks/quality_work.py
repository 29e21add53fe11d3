"""The quality benchmark's work items: what each model trains on, and the worker that trains it
under its budget and (with the torch scorer) computes the exported graph's outputs."""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

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
    from detectors.sources import load_idx

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

    from detectors.calibration import map_moments
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
    payload = {
        "kind": kind,
        "model_config": dict(model_config),
        "train_config": asdict(train),
        "best_state_dict": weights,
        "epoch": result.epochs,
        "history": result.history,
        "best_val": result.best_validation_bits_per_dim,
        "stopped": result.stopped,
    }
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
