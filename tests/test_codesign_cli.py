"""`experiments/codesign.py` end to end with real ZigZag simulations: the exported NPU is a target whose
simulations are in the database, a budget nothing meets is a one-line error, and the same sweep as
tasks on a real local Ray cluster (`ray start --head` on 127.0.0.1) writes the rows local workers write."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AREA = "1.3"
"""Only the smallest candidate (8x8 PEs, 64 KiB global buffer, 1.209 mm^2) fits: 248 simulations of MobileNetV2 in int8."""
DESIGN = "npu-8x8-gb64k-rf32-int8"


def run(script: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "experiments" / f"{script}.py"), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def codesign(logdir: Path, *extra: str) -> subprocess.CompletedProcess:
    return run("codesign", "--net", "mobilenet_v2", "--area-mm2", AREA, "--precisions", "int8", "--logdir", str(logdir), *extra)


def rows(db: Path) -> list[tuple]:
    """Every simulated cost in a database, sorted."""
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute("SELECT fingerprint, signature, choice, latency_ms, memory_bytes, energy_mj, provenance FROM costs"))


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("local")
    result = codesign(logdir, "--workers", "2")
    assert result.returncode == 0, result.stderr
    return logdir, result


def test_the_design_is_exported_as_a_target_priced_from_its_simulations(local_sweep):
    logdir, result = local_sweep
    out = logdir / f"codesign-mobilenet_v2-{AREA}mm2-latency"
    summary = json.loads((out / "codesign.json").read_text())
    assert summary["npu"]["name"] == DESIGN and summary["area_mm2"]["total"] <= float(AREA)
    assert summary["solver"]["optimality_gap"] <= 1e-6 and f"NPU {DESIGN}" in result.stdout
    priced = run("estimate_latency", "--deployment", str(out / "deployment.json"))
    assert priced.returncode == 0, priced.stderr
    assert "simulated:zigzag" in priced.stdout
    assert f"{summary['latency_ms']:.2f} ms" in priced.stdout


def test_an_area_nothing_fits_in_is_one_line_naming_the_smallest_npu(tmp_path):
    result = codesign(tmp_path, "--area-mm2", "1.0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"the smallest, {DESIGN}, takes 1.209 mm^2 (--area-mm2 1.209 is feasible)" in result.stderr


@pytest.fixture
def ray_head():
    """A real Ray head on 127.0.0.1 with 2 CPUs; stopped after the test."""
    from deploy.ray_pool import local_head

    with local_head(cpus=2) as address:
        yield address


def test_a_sweep_on_a_local_ray_cluster_writes_the_rows_local_workers_write(local_sweep, tmp_path, ray_head):
    logdir, local = local_sweep
    on_ray = codesign(tmp_path, "--ray", ray_head)
    assert on_ray.returncode == 0, on_ray.stderr
    got, expected = rows(tmp_path / "measurements.sqlite"), rows(logdir / "measurements.sqlite")
    assert len(got) >= 2 * 248 and got == expected  # the candidate's 248 and the exported NPU's copies
    assert design_lines(on_ray.stdout) == design_lines(local.stdout)


def design_lines(stdout: str) -> list[str]:
    """The NPU and what its deployment costs, as printed (solve times differ between runs)."""
    return [line.split("; precisions")[0] for line in stdout.splitlines() if line.startswith(("NPU ", "  area ", "  latency-optimal"))]
