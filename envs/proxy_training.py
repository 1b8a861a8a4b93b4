"""Training an accuracy proxy to the same bits on any x86-64 machine, whatever its CPU and cores.

A training run's floating-point results depend on which kernels run: PyTorch picks vectorised code
for the CPU at hand (AVX2, AVX-512), oneDNN generates kernels for it, MKL picks code paths for it, and
threads split reductions differently. A difference in the last bit of one gradient grows within a few
dozen steps into a different network (seen here: after one epoch of MobileNetV2 on digits the loss
differed in its first digit between PyTorch's AVX2 and scalar kernels, even in float64). So the proxy
trains in a child process with all of it pinned: PyTorch's baseline x86-64 kernels
(`ATEN_CPU_CAPABILITY=default`), no oneDNN or NNPACK, MKL in its conditional-numerical-reproducibility
compatible mode (`MKL_CBWR=COMPATIBLE`), one thread, deterministic algorithms. Checked here: the same
bits with MKL restricted to SSE4.2 (what an older CPU would run) and from parents with 1 or 2 threads;
with MKL's AVX2 path, or PyTorch's AVX2 kernels, the network differs. The price is speed: MobileNetV2
at 32x32 trains in ~35 s per epoch on digits here, against ~4 s with vectorised kernels (the main
job's proxy ships trained: `envs/data/proxies/`).

Recipe: Adam with a one-cycle learning rate, minibatches in a seeded order, then every batch norm's
statistics recomputed exactly over the training images (`recalibrate_batch_norm`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from envs.network import Network
from envs.torch_build import NetworkModule, build_module

TRAIN_BATCH_SIZE = 64
LEARNING_RATE = 1e-2
TRAIN_RECIPE = "adam-onecycle-lr1e-2-bs64-bnrecal-pinned-v4"
"""Names everything about training not in a trained-weights cache key's other parts; change it when
the recipe or the pinned environment changes."""
PINNED_ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
"""What the training process runs with (module docstring)."""
_ROOT = str(Path(__file__).resolve().parents[1])


class TrainingError(RuntimeError):
    """The training process failed; its own messages went to standard error."""


def train(network: Network, x_train: torch.Tensor, y_train: torch.Tensor, epochs: int, seed: int) -> NetworkModule:
    """A freshly initialised module for `network`, trained on `(x_train, y_train)` in a pinned child
    process (module docstring); the same bits on any x86-64 machine. Returned in eval mode."""
    with tempfile.TemporaryDirectory(prefix="deploygym-train-") as tmp:
        job, result = Path(tmp) / "job.pt", Path(tmp) / "state.pt"
        torch.save({"network": network.to_dict(), "x": x_train, "y": y_train, "epochs": epochs, "seed": seed}, job)
        env = {**os.environ, **PINNED_ENVIRONMENT}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))
        done = subprocess.run([sys.executable, "-m", "envs.proxy_training", str(job), str(result)], env=env)
        if done.returncode != 0:
            raise TrainingError(f"training {network.name} failed in its process (exit {done.returncode}); see the messages above")
        module = build_module(network)
        module.load_state_dict(torch.load(result, weights_only=True))
    return module.eval()


def _train_pinned(network: Network, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> NetworkModule:
    """The training loop itself (run only in the pinned process)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_module(network)
    module.train()
    generator = torch.Generator().manual_seed(seed)
    x = x.contiguous()
    n = len(x)
    batch = min(TRAIN_BATCH_SIZE, n)
    starts = range(0, n - batch + 1, batch)  # full batches only: batch norm needs more than one sample
    optimizer = torch.optim.Adam(module.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=max(1, epochs * len(starts)))
    bar = tqdm(range(epochs), desc=f"training {network.name} (pinned kernels, reproducible)", leave=False)
    for _ in bar:
        order = torch.randperm(n, generator=generator)
        for start in starts:
            idx = order[start : start + batch]
            loss = F.cross_entropy(module(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    recalibrate_batch_norm(module, x)
    return module.eval()


def recalibrate_batch_norm(module: nn.Module, images: torch.Tensor) -> None:
    """Replace every batch norm's running statistics by the exact mean and variance over `images`.

    Running averages lag the weights when training takes few steps (small data sets); evaluation
    then sees statistics of an earlier network. A cumulative average (momentum None) over the
    whole training set, with the weights frozen, removes that lag.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    with torch.no_grad():
        for chunk in images.split(TRAIN_BATCH_SIZE):
            if len(chunk) > 1:
                module(chunk)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def _main(job: str, result: str) -> None:
    for name, value in PINNED_ENVIRONMENT.items():
        if os.environ.get(name) != value:
            raise SystemExit(f"envs.proxy_training must run with {name}={value} (use envs.proxy_training.train)")
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.enabled = False
    torch.use_deterministic_algorithms(True)
    spec = torch.load(job, weights_only=True)
    module = _train_pinned(Network.from_dict(spec["network"]), spec["x"], spec["y"], spec["epochs"], spec["seed"])
    torch.save(module.state_dict(), result)


if __name__ == "__main__":
    _main(*sys.argv[1:3])
