"""A deployment's artifact: one TVM library for its target, a manifest, and a runner for the board.

`runs/<run>/artifact/` holds
- `deployment.so`: the whole network (`deploy.build.network_module`) compiled for the target (an
  aarch64 shared library for `cortex-a72`, cross-compiled with `aarch64-linux-gnu-gcc`), weights inside;
- `manifest.json`: target and TVM target, TVM version, network, per-layer choices, input and output
  shape and type, the thread count to run with, where the weights came from, and the sha256 of every
  file (and of the deployment file it was built from);
- `run.py`: a runner that needs only the TVM runtime (`deploy/runner.py`, copied).

Every layer runs on the thread count it chose, in one thread pool sized at the largest count any layer
chose (`deploy.build.network_module`, `on_threads`); `threads` in the manifest is that size, at most the
target's cores.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tvm

from deploy.build import NumericsSource, compile_network, network_module
from deploy.export import DeploymentRecord, write_json
from deploy.targets import CpuTarget, checked_tvm_target, get_target
from envs.accuracy import AccuracyOracle, LayerNumerics
from envs.network import Network, Op
from envs.space import Choice

SCHEMA = "deploygym.artifact/1"
LIBRARY = "deployment.so"
MANIFEST = "manifest.json"
RUNNER = "run.py"
CROSS_COMPILER = {"cortex-a72": "aarch64-linux-gnu-gcc"}
"""The C compiler that links a target's library when it is not this machine."""


class ArtifactError(ValueError):
    """An artifact that cannot be built or trusted, naming the file and the problem."""


@dataclass(frozen=True)
class SeededNumerics:
    """Weights for a network that has no trained ones (e.g. full-size MobileNetV2 at 224x224, whose
    accuracy the search measured on its 32x32 proxy): He-normal from a seed, zero bias, int8 scales
    fixed. A deployment's latency does not depend on its weights' values; its outputs mean nothing."""

    network: Network
    seed: int = 0
    activation_scale: float = 0.05

    @property
    def provenance(self) -> str:
        """Where the weights came from, as the manifest records it."""
        return f"seeded:he-normal:{self.seed}"

    def layer_numerics(self, name: str) -> LayerNumerics:
        """Seeded weights of layer `name` (the same for the same seed and layer name)."""
        layer = self.network[name]
        cin, h, w = layer.in_shape
        cout = layer.out_shape[0]
        shape = (cout, cin * h * w) if layer.op is Op.DENSE else (cout, cin // layer.groups, *layer.kernel)
        rng = np.random.default_rng([self.seed, *name.encode()])
        weight = (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)
        scales = np.abs(weight).reshape(cout, -1).max(axis=1) / 127.0
        return LayerNumerics(weight, np.zeros(cout, np.float32), scales, self.activation_scale, self.activation_scale)

    def affine_numerics(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A standalone batch norm at its initial state: scale 1, shift 0."""
        channels = self.network[name].in_shape[0]
        return np.ones(channels, np.float32), np.zeros(channels, np.float32)


def weights_for(network: Network, oracle: AccuracyOracle) -> tuple[NumericsSource, str]:
    """The weights a deployment of `network` is built with, and where they came from: the accuracy
    oracle's trained ones when it trained this very network, else `SeededNumerics`."""
    if oracle.network == network:
        return oracle, f"trained:{oracle.key}"
    seeded = SeededNumerics(network)
    return seeded, f"{seeded.provenance} ({network.name} has no trained weights; its accuracy is its proxy's)"


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def threads_of(choices: Mapping[str, Choice], target: CpuTarget) -> int:
    """A built deployment's thread pool size: the largest count any layer chose, at most the target's cores."""
    return min(target.spec.cores, max(getattr(c.dataflow, "threads", 1) for c in choices.values()))


def artifact_folder(run: Path, record: DeploymentRecord, target: str) -> Path:
    """Where a run's artifact for `target` lives: `artifact/` for the deployment's own target, else `artifact-<target>/`."""
    return run / ("artifact" if target == record.target else f"artifact-{target}")


def compile_library(network: Network, choices, numerics: NumericsSource, target: str, library: Path) -> dict[str, Any]:
    """Compile a deployment's whole network for CPU `target` into the shared library `library`
    (cross-compiled where the target is not this machine); the TVM target used."""
    tgt = get_target(target)
    if not isinstance(tgt, CpuTarget):
        raise ArtifactError(f"target {target!r} is not a CPU: only CPU deployments build into a TVM library")
    cc = CROSS_COMPILER.get(target)
    if cc is not None and shutil.which(cc) is None:
        raise ArtifactError(f"building for {target!r} needs the cross compiler {cc!r} (Debian: gcc-aarch64-linux-gnu)")
    tvm_target = checked_tvm_target(tgt.tvm_target)
    executable = compile_network(network_module(network, choices, numerics), tvm_target)
    executable.export_library(str(library), **({"cc": cc} if cc else {}))
    return tvm_target


def build_artifact(
    record: DeploymentRecord, deployment_file: Path, target: str, folder: Path, numerics: NumericsSource, weights: str
) -> dict[str, Any]:
    """Compile the deployment for `target` into `folder` (library, manifest, runner); the manifest.

    `weights` says where `numerics` came from (it goes into the manifest)."""
    tgt = get_target(target)
    if not isinstance(tgt, CpuTarget):
        raise ArtifactError(f"target {target!r} is not a CPU: only CPU deployments build into a TVM library")
    if record.target not in (target, "host", "cortex-a72"):
        raise ArtifactError(f"{deployment_file}: a deployment for {record.target!r} cannot be built for {target!r}")
    folder.mkdir(parents=True, exist_ok=True)
    tvm_target = compile_library(record.network, record.choices, numerics, target, folder / LIBRARY)
    shutil.copyfile(Path(__file__).with_name("runner.py"), folder / RUNNER)
    first = record.network.layers[0]
    manifest = {
        "schema": SCHEMA,
        "target": target,
        "tvm_target": tvm_target,
        "tvm_version": tvm.__version__,
        "network": record.network.name,
        "network_fingerprint": record.network.fingerprint,
        "input": {"name": "image", "shape": [1, *first.in_shape], "dtype": "float32"},
        "output": {"shape": [1, record.network.num_classes], "dtype": "float32"},
        "threads": threads_of(record.choices, tgt),
        "weights": weights,
        "choices": {name: choice.to_dict() for name, choice in record.choices.items()},
        "deployment": {"file": str(deployment_file), "sha256": sha256(deployment_file)},
        "files": {name: sha256(folder / name) for name in (LIBRARY, RUNNER)},
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def verified_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of an artifact whose files are what it says (sha256) and whose TVM version is
    this one; ArtifactError names the file that is missing or changed."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: cannot read an artifact manifest ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise ArtifactError(f"{path}: not a DeployGym artifact manifest (schema {SCHEMA!r})")
    for name, digest in manifest["files"].items():
        file = folder / name
        if not file.exists():
            raise ArtifactError(f"{file}: missing from the artifact")
        if sha256(file) != digest:
            raise ArtifactError(f"{file}: sha256 differs from the manifest's (edited or corrupted); rebuild it")
    if manifest["tvm_version"] != tvm.__version__:
        raise ArtifactError(
            f"{path}: built with TVM {manifest['tvm_version']}, this is TVM {tvm.__version__}; rebuild it"
        )
    return manifest
