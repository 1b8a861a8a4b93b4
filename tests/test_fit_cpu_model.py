"""Fitting a CPU latency model to per-layer TVM measurements (here: of this machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from deploy.tvm_measure import MeasureSettings
from envs.make import make_cost_table

ROOT = Path(__file__).resolve().parents[1]


def test_fit_to_host_measurements_improves_the_model(tiny, tmp_path):
    db_path = tmp_path / "m.sqlite"
    costs = make_cost_table("host", db_path, settings=MeasureSettings(repeats=3, min_repeat_ms=2))
    rng = np.random.default_rng(0)
    for layer in tiny.searchable_layers:
        choices = costs.space.valid_choices(layer)
        for i in rng.choice(len(choices), 6, replace=False):
            assert costs.cost(layer, choices[i]).provenance.startswith("measured:local:")
    costs.backend.close()
    out = tmp_path / "fit.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "fit_cpu_model.py"), "--target", "host", "--db", str(db_path),
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["measurements"]["layers"] == 30 and len(doc["measurements"]["held_out_shapes"]) == 1
    before, after = doc["before"]["train"], doc["after"]["train"]
    assert after["samples"] == 24 and doc["after"]["held_out"]["samples"] == 6
    # The fit minimises the RMS log error; the median of |error| may move either way with a 3-repeat
    # measurement on a shared machine, so the test holds the fit to what it promises.
    assert after["rms_log_error"] < 0.9 * before["rms_log_error"]
    assert "held out" in result.stdout


def test_fit_without_measurements_is_a_clear_error(tmp_path):
    make_cost_table("cortex-a72", tmp_path / "m.sqlite")  # modelled costs only
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "fit_cpu_model.py"), "--target", "cortex-a72", "--db",
         str(tmp_path / "m.sqlite")], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "has no measurements of cortex-a72" in result.stderr
