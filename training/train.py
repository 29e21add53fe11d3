"""The training loop shared by the PixelCNN and the VAE: Adam, warm-up then cosine decay, gradient
clipping, the objective on the validation split every epoch, early stopping on it, checkpoints that
resume.

The objective is named as the bundle names that score: `nll` (the PixelCNN's exact negative
log-likelihood) or `neg_elbo` (the VAE's one-sample negative ELBO), in bits/dim. The bundle's own
likelihood score for the VAE is a tighter bound (`iwae`, K samples), so the two VAE figures differ
and carry different names (`val_neg_elbo_bits_per_dim`, `val_iwae_bits_per_dim`).

A checkpoint is a plain dict of tensors and numbers (it loads with `weights_only=True`) holding the
model's hyperparameters, so it rebuilds its own model.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import distributed
from .data import ImageSet, Splits
from .models import VAE, PixelCNN, PixelCNNConfig, VAEConfig

MODEL_KINDS = {"pixelcnn": (PixelCNN, PixelCNNConfig), "vae": (VAE, VAEConfig)}
OBJECTIVES = {"pixelcnn": "nll", "vae": "neg_elbo"}  # what `objective` computes, per kind


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0  # L2 penalty
    warmup_steps: int = 50
    grad_clip: float = 1.0
    patience: int = 3  # epochs without a better validation score before stopping
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # Wall-clock budget of this loop (steps and the validation of earlier epochs): it stops after
    # the step that passes it; that epoch's validation pass still runs.
    max_minutes: float | None = None
    conditional: bool = False  # feed labels to a class-conditional model


@dataclass
class TrainResult:
    epochs: int  # epochs completed (a budget stop counts the partial epoch)
    best_validation_bits_per_dim: float  # the objective (see OBJECTIVES) on the validation split
    # Per epoch: epoch, train_<objective>_bits_per_dim, val_<objective>_bits_per_dim,
    # train_seconds (the steps), validation_seconds (the validation pass).
    history: list[dict] = field(default_factory=list)
    stopped: str = "epochs"  # epochs | early_stopping | budget
    objective: str = "nll"  # nll | neg_elbo
    train_seconds: float = 0.0  # in training steps, this run
    validation_seconds: float = 0.0  # in validation passes, this run


def history_curve(history: list[dict], split: str) -> list[float]:
    """The objective per epoch on `split` ("train" or "val") from a history, whatever it was
    named: rows written before the objective was named say train_ / validation_bits_per_dim."""
    legacy = {"train": "train_bits_per_dim", "val": "validation_bits_per_dim"}[split]
    curve = []
    for row in history:
        named = [k for k in row if k.startswith(f"{split}_") and k.endswith("_bits_per_dim")]
        curve.append(row[named[0]] if named else row[legacy])
    return curve


def history_objective(history: list[dict]) -> str | None:
    """The objective a history's rows name (nll, neg_elbo), or None for rows that do not say."""
    for key in history[-1] if history else ():
        if key.startswith("val_") and key.endswith("_bits_per_dim"):
            return key.removeprefix("val_").removesuffix("_bits_per_dim")
    return None


def interactive(stream=None) -> bool:
    """Whether progress goes to a terminal (a bar) or to a file or pipe (a line per epoch)."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        msg = "device 'cuda' asked for, but torch sees no CUDA device"
        raise ValueError(msg)
    if device not in ("cpu", "cuda"):
        msg = f"device must be auto, cpu or cuda, got {device!r}"
        raise ValueError(msg)
    return torch.device(device)


def build_model(kind: str, config: dict) -> nn.Module:
    model_cls, config_cls = MODEL_KINDS[kind]
    return model_cls(config_cls(**config))


def objective(model: nn.Module, x: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
    """Per-image loss in bits/dim: exact NLL (PixelCNN) or one-sample negative ELBO (VAE)."""
    if isinstance(model, PixelCNN):
        return model.bits_per_dim(x, label)
    return model.loss(x, label)


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_checkpoint(path: str | Path) -> tuple[str, nn.Module, dict]:
    """Rebuild the best model a checkpoint holds: (kind, model in eval mode, checkpoint)."""
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["kind"], ckpt["model_config"])
    model.load_state_dict(ckpt["best_state_dict"])
    return ckpt["kind"], model.eval(), ckpt


def _tensors(data: ImageSet) -> tuple[torch.Tensor, torch.Tensor | None]:
    images = torch.from_numpy(np.ascontiguousarray(data.images))
    labels = None if data.labels is None else torch.from_numpy(data.labels)
    return images, labels


class Objective(nn.Module):
    """The per-image loss as a module's forward, which DistributedDataParallel needs to wrap."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return objective(self.model, x, label)


@torch.no_grad()
def evaluate_bits_per_dim(
    model: nn.Module,
    data: ImageSet,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    conditional: bool = False,
    world: distributed.World | None = None,
) -> float:
    """Mean bits/dim of `model` over `data` (exact for the PixelCNN, one-sample bound for the VAE).

    With a distributed `world`, each rank scores its share and the sums are added over the ranks,
    so every rank gets the same value."""
    world = world or distributed.World()
    model.eval()
    images, labels = _tensors(data)
    rows = torch.arange(world.rank, len(images), world.world_size)
    total = 0.0
    for start in range(0, len(rows), batch_size):
        index = rows[start : start + batch_size]
        x = images[index].to(device)
        y = labels[index].to(device) if conditional else None
        total += objective(model, x, y).double().sum().item()
    total, count = distributed.all_sum([total, float(len(rows))], world)
    return total / count


def fit(
    kind: str,
    model_config: dict,
    splits: Splits,
    cfg: TrainConfig,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    extra: dict | None = None,
) -> tuple[nn.Module, TrainResult]:
    """Train a model of `kind` on splits.train, validating on splits.validation each epoch.

    With `checkpoint`, the state is saved after every epoch; with `resume`, training continues
    from it. Returns the model holding the best validation weights, in eval mode.
    """
    seed_everything(cfg.seed)
    world = distributed.current()  # a world of one unless started by torchrun (see distributed.py)
    progress = progress and world.is_main
    device = distributed.device_for(resolve_device(cfg.device), world)
    model = build_model(kind, model_config).to(device)
    if cfg.conditional and splits.train.labels is None:
        msg = "a conditional model needs labelled training data"
        raise ValueError(msg)
    images, labels = _tensors(splits.train)
    steps_per_epoch = math.ceil(distributed.shard_size(len(images), world) / cfg.batch_size)
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def schedule(step: int) -> float:
        """Linear warm-up, then cosine decay to 5% over the epochs or the time budget, whichever
        runs out first (a budgeted run still ends with a small learning rate)."""
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        fraction = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        if cfg.max_minutes:
            fraction = max(fraction, clock.elapsed() / (60 * cfg.max_minutes))
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))

    clock = distributed.Clock(world)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    state = {"epoch": 0, "history": [], "best_val": math.inf, "best_state": None, "bad_epochs": 0}
    if resume and checkpoint and Path(checkpoint).exists():
        ckpt = load_checkpoint(checkpoint)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state.update(
            epoch=ckpt["epoch"],
            history=ckpt["history"],
            best_val=ckpt["best_val"],
            best_state=ckpt["best_state_dict"],
            bad_epochs=ckpt["bad_epochs"],
        )
        torch.set_rng_state(ckpt["rng"])

    use_amp = device.type == "cuda"
    step_loss = distributed.wrap(Objective(model), world, device)
    stopped = "epochs"
    objective_name = OBJECTIVES[kind]
    # On a terminal, a bar per epoch; on a file or pipe only the line per epoch (no \r updates).
    bar_shown = progress and interactive()
    seconds = {"train": 0.0, "validation": 0.0}  # this run's, for the summary
    while state["epoch"] < cfg.epochs and stopped == "epochs":
        model.train()
        epoch_start = time.monotonic()
        order = torch.randperm(
            len(images), generator=torch.Generator().manual_seed(cfg.seed + state["epoch"])
        )
        order = distributed.shard(order, world)  # one permutation on every rank, cut in shards
        losses = []
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{kind} epoch {state['epoch'] + 1}/{cfg.epochs}",
            disable=not bar_shown,
            leave=False,
            unit="batch",
        )
        for step in bar:
            index = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = images[index].to(device)
            y = labels[index].to(device) if cfg.conditional else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = step_loss(x, y).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if cfg.max_minutes is not None:
                clock.sync()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix({f"{objective_name}_bits_per_dim": f"{np.mean(losses[-20:]):.3f}"})
            if cfg.max_minutes is not None and clock.elapsed() > 60 * cfg.max_minutes:
                stopped = "budget"
                break
        bar.close()
        validation_start = time.monotonic()
        val = evaluate_bits_per_dim(
            model, splits.validation, device=device, conditional=cfg.conditional, world=world
        )
        loss_sum, loss_count = distributed.all_sum([float(np.sum(losses)), len(losses)], world)
        state["epoch"] += 1
        row = {
            "epoch": state["epoch"],
            f"train_{objective_name}_bits_per_dim": loss_sum / loss_count,
            f"val_{objective_name}_bits_per_dim": val,
            "train_seconds": validation_start - epoch_start,
            "validation_seconds": time.monotonic() - validation_start,
        }
        state["history"].append(row)
        seconds["train"] += row["train_seconds"]
        seconds["validation"] += row["validation_seconds"]
        if progress:
            tqdm.write(
                f"{kind} epoch {state['epoch']}/{cfg.epochs}: {objective_name} bits/dim "
                f"train {loss_sum / loss_count:.4f}, val {val:.4f} "
                f"({row['train_seconds']:.1f} s training, {row['validation_seconds']:.1f} s "
                "validation)",
                file=sys.stderr,
            )
        if val < state["best_val"]:
            state.update(
                best_val=val,
                bad_epochs=0,
                best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            )
        else:
            state["bad_epochs"] += 1
            if state["bad_epochs"] >= cfg.patience and stopped == "epochs":
                stopped = "early_stopping"
        if checkpoint and world.is_main:
            save_checkpoint(
                checkpoint, kind, model_config, cfg, model, optimizer, scheduler, state, extra
            )

    if state["best_state"] is not None:  # None only if every validation score was NaN
        model.load_state_dict(state["best_state"])
    model.eval()
    return model, TrainResult(
        state["epoch"],
        state["best_val"],
        state["history"],
        stopped,
        objective=objective_name,
        train_seconds=seconds["train"],
        validation_seconds=seconds["validation"],
    )


def save_checkpoint(path, kind, model_config, cfg, model, optimizer, scheduler, state, extra=None):
    payload = {
        "kind": kind,
        "model_config": dict(model_config),
        "train_config": asdict(cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "best_state_dict": state["best_state"],
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": state["epoch"],
        "history": state["history"],
        "best_val": state["best_val"],
        "bad_epochs": state["bad_epochs"],
        "rng": torch.get_rng_state(),
        "extra": extra or {},
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
