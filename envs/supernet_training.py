"""Training a supernet with the sandwich rule, checkpointed every epoch and resumable.

Every minibatch trains the largest sub-network on the labels and, by in-place distillation from the
largest one's (detached) predictions, the smallest and `RANDOM_PER_STEP` uniformly sampled ones
(BigNAS / Once-for-All); their gradients add up into the shared weights before one Adam step under a
one-cycle schedule. After every epoch the checkpoint (weights, optimiser, schedule, random states,
per-epoch history) is written atomically; a run resumes from it. The held-out accuracy of the largest
and smallest sub-networks (batch norm recalibrated) is logged to TensorBoard every epoch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from envs.accuracy import Dataset, _save_atomically, default_cache_dir
from envs.proxy_training import TRAIN_BATCH_SIZE
from envs.arch_space import ArchSpace
from envs.supernet import Supernet

log = logging.getLogger(__name__)

SUPERNET_RECIPE = "sandwich-kd-r2-adam-onecycle-lr5e-3-bs64-v1"
"""Names everything about supernet training not in the cache key's other parts; change it with the recipe."""
DEFAULT_SUPERNET_EPOCHS = 12
RANDOM_PER_STEP = 2
LEARNING_RATE = 5e-3
RECALIBRATION_IMAGES = 512
"""Training images (8 batches) that re-estimate a sub-network's batch-norm statistics."""


class SupernetCheckpointError(ValueError):
    """A supernet checkpoint that cannot be used (unreadable, or for another space, data or recipe)."""


@dataclass(frozen=True)
class SupernetSpec:
    """What a trained supernet depends on; `path` is its checkpoint in a cache folder."""

    space: str
    dataset: str
    input_size: int
    num_classes: int
    epochs: int
    seed: int

    @property
    def key(self) -> str:
        """Names the trained weights (and is the checkpoint's file name)."""
        return (
            f"supernet-{self.space}-{self.input_size}-{self.num_classes}cls-{self.dataset}"
            f"-e{self.epochs}-s{self.seed}-{SUPERNET_RECIPE}"
        )

    def path(self, cache_dir: Path | None = None) -> Path:
        """The checkpoint file: `cache_dir` or `<default cache>/supernet`."""
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir().parent / "supernet"
        return folder / f"{self.key}.pt"


def spec_for(space: ArchSpace, dataset: Dataset, epochs: int = DEFAULT_SUPERNET_EPOCHS, seed: int = 0) -> SupernetSpec:
    """The supernet of `space` trained on `dataset` (input size and classes from the data)."""
    if epochs < 1:
        raise ValueError(f"supernet epochs must be positive, got {epochs}")
    channels, height, width = dataset.image_shape
    if channels != 3 or height != width:
        raise ValueError(f"a supernet reads square 3-channel images, dataset {dataset.name!r} has {dataset.image_shape}")
    return SupernetSpec(space.name, dataset.name, height, dataset.num_classes, epochs, seed)


def heldout_accuracy(module: torch.nn.Module, dataset: Dataset) -> float:
    """Top-1 accuracy of an eval-mode module on the held-out images (fp32)."""
    with torch.inference_mode():
        predicted = torch.cat([module(x).argmax(1) for x in dataset.x_test.split(256)])
    return (predicted == dataset.y_test).float().mean().item()


def _load_checkpoint(path: Path, spec: SupernetSpec) -> dict[str, Any]:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or "state_dict" not in saved or "spec" not in saved:
            raise ValueError("not a supernet checkpoint")
    except Exception as e:
        reason = (str(e).splitlines() or [""])[0][:120]
        raise SupernetCheckpointError(
            f"supernet checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {reason}); it was left as it is. "
            "Train from scratch, replacing it, with `experiments/train_supernet.py --restart` "
            "(or `restart=True`)"
        ) from e
    if saved["spec"] != spec.key:
        raise SupernetCheckpointError(f"supernet checkpoint {path} is for {saved['spec']}, not {spec.key}")
    return saved


def train_supernet(
    space: ArchSpace,
    dataset: Dataset,
    epochs: int = DEFAULT_SUPERNET_EPOCHS,
    seed: int = 0,
    cache_dir: Path | None = None,
    restart: bool = False,
    log_dir: Path | None = None,
    stop_after: int | None = None,
) -> tuple[Supernet, dict[str, Any]]:
    """Train (or resume, or just load) the supernet of `space` on `dataset`; returns it and its checkpoint.

    An existing checkpoint is resumed from its last finished epoch, or returned if training finished.
    A corrupt one raises `SupernetCheckpointError` unless `restart`, which trains from scratch and
    replaces it. `log_dir` receives TensorBoard scalars per epoch. `stop_after` ends this call after
    that many epochs (the checkpoint then resumes the rest)."""
    spec = spec_for(space, dataset, epochs, seed)
    path = spec.path(cache_dir)
    saved = None if restart or not path.exists() else _load_checkpoint(path, spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        supernet = Supernet(space, spec.input_size, spec.num_classes)
    n = len(dataset.x_train)
    batch = min(TRAIN_BATCH_SIZE, n)
    starts = range(0, n - batch + 1, batch)  # full batches only: batch norm needs more than one sample
    optimizer = torch.optim.Adam(supernet.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=epochs * len(starts))
    order_rng = torch.Generator().manual_seed(seed)
    arch_rng = np.random.default_rng(seed)
    history: list[dict[str, float]] = []
    if saved is not None:
        supernet.body.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        order_rng.set_state(saved["order_rng"])
        arch_rng.bit_generator.state = saved["arch_rng"]
        history = list(saved["history"])
        if saved["complete"]:
            return supernet.eval(), saved
        log.info("resuming supernet training at epoch %d of %d from %s", len(history) + 1, epochs, path)
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    largest, smallest = space.largest(), space.smallest()
    last = epochs if stop_after is None else min(epochs, len(history) + stop_after)
    bar = tqdm(range(len(history), last), initial=len(history), total=epochs, desc=f"supernet {space.name} on {dataset.name}")
    checkpoint: dict[str, Any] = dict(saved) if saved is not None else {}
    for epoch in bar:
        start = time.perf_counter()
        supernet.train()
        order = torch.randperm(n, generator=order_rng)
        total_ce = total_kd = 0.0
        for s in starts:
            idx = order[s : s + batch]
            x, y = dataset.x_train[idx], dataset.y_train[idx]
            optimizer.zero_grad(set_to_none=True)
            logits = supernet(x, largest)
            ce = F.cross_entropy(logits, y)
            ce.backward()
            teacher = logits.detach().softmax(1)
            for blocks in [smallest] + [space.sample(arch_rng) for _ in range(RANDOM_PER_STEP)]:
                kd = F.cross_entropy(supernet(x, blocks), teacher)
                kd.backward()
                total_kd += kd.item() / (1 + RANDOM_PER_STEP)
            optimizer.step()
            schedule.step()
            total_ce += ce.item()
        supernet.eval()
        recalibration = dataset.x_train[:RECALIBRATION_IMAGES]
        metrics = {
            "loss_largest": total_ce / len(starts),
            "distillation_loss": total_kd / len(starts),
            "heldout_accuracy_largest": heldout_accuracy(supernet.extract(largest, recalibration), dataset),
            "heldout_accuracy_smallest": heldout_accuracy(supernet.extract(smallest, recalibration), dataset),
            "learning_rate": schedule.get_last_lr()[0],
            "seconds": time.perf_counter() - start,
        }
        history.append(metrics)
        if writer is not None:
            for name, value in metrics.items():
                writer.add_scalar(f"supernet/{name}", value, epoch + 1)
            writer.flush()
        checkpoint = {
            "spec": spec.key,
            "state_dict": supernet.body.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "order_rng": order_rng.get_state(),
            "arch_rng": arch_rng.bit_generator.state,
            "history": history,
            "complete": len(history) == epochs,
        }
        _save_atomically(checkpoint, path)
        bar.set_postfix(
            largest=f"{metrics['heldout_accuracy_largest']:.3f}", smallest=f"{metrics['heldout_accuracy_smallest']:.3f}"
        )
    if writer is not None:
        writer.close()
    return supernet.eval(), checkpoint
