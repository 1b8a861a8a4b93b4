"""The chosen deployment as versioned JSON, and re-evaluating such a file.

The file carries the network itself, the target, the per-layer choices with their costs and
provenance, the totals and the baseline, so it can be re-evaluated, replayed and compared later.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.cost_table import CostTable
from deploy.deployment import NetworkCost, evaluate
from deploy.targets import get_target
from envs.network import Network
from envs.space import Choice

SCHEMA = "deploygym.deployment/1"


class DeploymentFileError(ValueError):
    """A deployment file that cannot be read, naming the file and the problem."""


@dataclass(frozen=True)
class DeploymentRecord:
    """A deployment read back from a file."""

    network: Network
    target: str
    fingerprint: str
    choices: dict[str, Choice]
    totals: dict[str, Any]
    architecture: list[str] | None = None
    """Every block's setting label when architecture search chose the network (else None)."""


def deployment_dict(
    network: Network,
    target: str,
    fingerprint: str,
    choices: dict[str, Choice],
    cost: NetworkCost,
    accuracy: float | None,
    accuracy_provenance: str,
    baseline: NetworkCost,
    baseline_accuracy: float | None,
    baseline_choice: Choice,
    architecture: list[str] | None = None,
) -> dict[str, Any]:
    """The JSON document of a deployment (`baseline` deploys every layer as `baseline_choice`);
    `architecture` labels every block's setting when architecture search chose the network."""
    return {
        "schema": SCHEMA,
        "network": network.to_dict(),
        "architecture": architecture,
        "target": target,
        "cost_fingerprint": fingerprint,
        "layers": [layer.to_dict() for layer in cost.layers],
        "choices": {name: c.to_dict() for name, c in choices.items()},
        "totals": {
            "latency_ms": cost.latency_ms,
            "conversion_ms": cost.conversion_ms,
            "memory_bytes": cost.memory_bytes,
            "energy_mj": cost.energy_mj,
            "latency_provenance": list(cost.provenance),
            "accuracy": accuracy,
            "accuracy_provenance": accuracy_provenance,
        },
        "baseline": {
            "description": f"every layer {baseline_choice.key}",
            "choice": baseline_choice.to_dict(),
            "latency_ms": baseline.latency_ms,
            "memory_bytes": baseline.memory_bytes,
            "energy_mj": baseline.energy_mj,
            "accuracy": baseline_accuracy,
            "speedup": baseline.latency_ms / cost.latency_ms,
            "memory_ratio": baseline.memory_bytes / cost.memory_bytes,
        },
    }


def write_json(path: str | Path, document: dict[str, Any]) -> Path:
    """Write atomically (temporary file + rename): a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # mode from the umask
    try:
        with open(tmp, "x") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_deployment(path: str | Path) -> DeploymentRecord:
    """Read a deployment file; DeploymentFileError names the file and what is wrong."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DeploymentFileError(f"{path}: cannot read a deployment file ({err})") from err
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise DeploymentFileError(f"{path}: schema {found!r} is not {SCHEMA!r}")
    try:
        record = DeploymentRecord(
            network=Network.from_dict(doc["network"]),
            target=doc["target"],
            fingerprint=doc["cost_fingerprint"],
            choices={name: Choice.from_dict(c) for name, c in doc["choices"].items()},
            totals=doc["totals"],
            architecture=doc.get("architecture"),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DeploymentFileError(f"{path}: malformed deployment ({err!r})") from err
    searchable = {layer.name for layer in record.network.searchable_layers}
    unknown = sorted(set(record.choices) - searchable)
    if unknown:
        raise DeploymentFileError(f"{path}: choices for layers that {record.network.name!r} has not (or cannot search): {unknown}")
    missing = [name for name in searchable if name not in record.choices]
    if missing:
        raise DeploymentFileError(f"{path}: {record.network.name!r} has no choice for layer(s) {sorted(missing)}")
    return record


def reevaluate(path: str | Path) -> NetworkCost:
    """Price a deployment file again with its target's current cost backend (the model, or for a
    target that runs here, fresh measurements)."""
    record = load_deployment(path)
    target = get_target(record.target)
    table = CostTable(target.backend(), target.search_space(), estimator=target.model())
    return evaluate(record.network, record.choices, table)
