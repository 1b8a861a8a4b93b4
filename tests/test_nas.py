"""The NAS experiment script, small: joint search against the fixed MobileNetV2 on the A72 model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_experiment_writes_fronts_choices_and_an_honest_dominance_verdict(tmp_path):
    args = ["--target", "cortex-a72", "--timesteps", "1024", "--supernet-epochs", "1", "--proxy", "digits", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "nas.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "nas-cortex-a72.json").read_text())
    assert (tmp_path / "nas-cortex-a72.png").stat().st_size > 10_000
    joint, fixed = report["searches"]
    assert joint["architecture_searched"] and not fixed["architecture_searched"]
    assert joint["episodes"] > 0 and fixed["episodes"] > 0
    assert all(len(p["architecture"]) == 17 for p in joint["accuracy_latency_front"])
    assert all(p["architecture"] is None for p in fixed["accuracy_latency_front"])
    covered = [
        any(j["accuracy"] >= f["accuracy"] and j["latency_ms"] <= f["latency_ms"] for j in joint["accuracy_latency_front"])
        for f in fixed["accuracy_latency_front"]
    ]
    verdict = report["comparison"]
    assert verdict["dominated_by_joint_front"] == sum(covered) and verdict["joint_front_dominates_fixed"] == all(covered)
    assert verdict["joint_choice_speedup_over_fixed_choice"] == fixed["choice"]["latency_ms"] / joint["choice"]["latency_ms"]
    assert report["accuracy"]["provenance"].endswith("/supernet")


def test_an_unsupported_target_is_named(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "nas.py"), "--target", "host", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--target 'host': use an NPU preset" in done.stderr
