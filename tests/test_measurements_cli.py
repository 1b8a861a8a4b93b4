"""The measurement-database command: list, export one target, merge refusing another target's file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from deploy.cost import Cost
from deploy.db import MeasurementDB
from envs.make import make_cost_table
from envs import zoo

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "measurements.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_list_export_and_merge(tmp_path: Path) -> None:
    db_path = tmp_path / "m.sqlite"
    table = make_cost_table("cortex-a72", db_path)  # registers its fingerprint as cortex-a72
    layer = zoo.get_network("mobilenet_v2").searchable_layers[0]
    table.cost(layer, table.space.baseline_choice())
    listed = run("list", "--db", str(db_path))
    assert listed.returncode == 0 and '"target": "cortex-a72"' in listed.stdout
    out = tmp_path / "a72.json"
    exported = run("export", "--db", str(db_path), "--target", "cortex-a72", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert len(json.loads(out.read_text())["costs"]) == table.db.count() > 0
    with MeasurementDB(tmp_path / "host.sqlite") as other:
        other.register_target("fp-host", {"target": "host"})
        other.put("fp-host", layer.signature, "x", Cost(1.0, 0, "measured:local:x", repeats=5))
    refused = run("merge", "--db", str(db_path), "--target", "cortex-a72", "--source", str(tmp_path / "host.sqlite"))
    assert refused.returncode == 2 and "refused, nothing merged" in refused.stderr and "Traceback" not in refused.stderr
    missing = run("export", "--db", str(db_path), "--out", str(out))
    assert missing.returncode == 2 and "needs --target" in missing.stderr
