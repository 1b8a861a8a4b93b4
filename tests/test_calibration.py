"""The shipped Cortex-A72 calibration against the public Raspberry Pi 4 figures."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from deploy.calibration import FITTED, PI4_REFERENCES, report
from envs import zoo


@pytest.fixture(scope="module")
def rows(a72, a72_space):
    networks = {r.network: zoo.get_network(r.network) for r in PI4_REFERENCES}
    return report(a72.model(), a72_space, networks, PI4_REFERENCES)


def test_best_deployments_land_within_25_percent_of_every_public_figure(rows):
    for row in rows:
        assert abs(row["error"]) <= 0.25, row


def test_calibration_file_records_fitted_parameters_in_range_and_leave_one_out():
    doc = json.loads(resources.files("deploy").joinpath("data", "cortex_a72.json").read_text())
    for name, (lo, hi) in FITTED.items():
        assert lo <= doc["params"][name] <= hi
    assert "fork_join_us" not in FITTED  # measured, not fitted
    fork_join = doc["fork_join"]
    assert doc["params"]["fork_join_us"] == fork_join["us_per_thread"] and 0.1 < fork_join["us_per_thread"] < 50
    assert fork_join["source"].startswith(("measured on", "estimated: measured on"))
    loo = doc["leave_one_out"]
    assert [r["reference"] for r in loo] == [r.label for r in PI4_REFERENCES]
    assert all(r["predicted_ms"] > 0 for r in loo)


def test_a_negative_fork_join_cost_is_refused_before_anything_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments" / "calibrate_cpu_model.py"
    result = subprocess.run([sys.executable, str(script), "--fork-join-us", "-3", "--out", str(tmp_path / "a72.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--fork-join-us -3: a fork/join cost is at least 0 us" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "a72.json").exists()
