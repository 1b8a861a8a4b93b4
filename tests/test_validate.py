"""Building a run's deployment into one library, and validating it locally and over a real RPC server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.artifact import LIBRARY, MANIFEST, ArtifactError, verified_manifest
from tests.tvm_rpc import RpcCluster

ROOT = Path(__file__).resolve().parents[1]


def script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / name), *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A short search on MobileNetV2-32, the network the accuracy oracle trained (so the artifact has its weights)."""
    logdir = tmp_path_factory.mktemp("runs")
    result = script("run_ppo.py", "--net", "mobilenet_v2_32", "--target", "cortex-a72", "--timesteps", "1024",
                    "--logdir", str(logdir), cwd=logdir)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = [p for p in logdir.iterdir() if p.is_dir()]
    return folder


@pytest.fixture(scope="module")
def validated(small_run) -> dict:
    result = script("validate.py", str(small_run), "--target", "host", "--repeats", "5", cwd=small_run)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads((small_run / "validation.json").read_text())


def test_validation_rebuilds_remeasures_and_matches_the_claimed_accuracy(validated, small_run):
    claimed = json.loads((small_run / "deployment.json").read_text())["totals"]
    check = validated["measured"]["accuracy"]
    assert check["top1_agreement"] >= 0.99 and check["images"] == 360
    assert abs(validated["accuracy_drift_points"]) <= 0.3 and validated["accuracy_validated"]
    assert check["artifact_accuracy"] == pytest.approx(claimed["accuracy"], abs=0.003)
    whole = validated["measured"]["whole_network"]
    assert whole["provenance"].startswith("measured:local:") and whole["repeats"] == 5 and whole["median_ms"] > 0
    layers = validated["measured"]["sum_of_layers"]
    assert any(p.startswith("measured:local:") for p in layers["provenance"])
    drift = validated["drift_percent"]["whole_network_vs_sum_of_layers"]
    assert drift == pytest.approx(100 * (whole["median_ms"] / layers["latency_ms"] - 1))
    assert validated["claimed"]["target"] == "cortex-a72" and "two machines" in validated["note"]


def test_artifact_manifest_records_every_file_and_the_deployment(validated, small_run):
    folder = Path(validated["artifact"])
    manifest = verified_manifest(folder)
    assert manifest["target"] == "host" and manifest["network"] == "mobilenet_v2_32_10cls" and manifest["threads"] <= 2
    assert set(manifest["files"]) == {LIBRARY, "run.py"} and manifest["weights"].startswith("trained:")
    assert len(manifest["choices"]) == 53 and manifest["input"]["shape"] == [1, 3, 32, 32]
    out = subprocess.run([sys.executable, str(folder / "run.py"), "--time", "3", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(json.loads(out.stdout)["logits"]) == 10


def test_an_edited_or_missing_artifact_file_or_another_tvm_is_refused_by_name(validated, tmp_path):
    folder = tmp_path / "artifact"
    shutil.copytree(validated["artifact"], folder)
    (folder / LIBRARY).write_bytes((folder / LIBRARY).read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match=r"deployment\.so: sha256 differs"):
        verified_manifest(folder)
    (folder / LIBRARY).unlink()
    with pytest.raises(ArtifactError, match=r"deployment\.so: missing"):
        verified_manifest(folder)
    shutil.copy(Path(validated["artifact"]) / LIBRARY, folder / LIBRARY)
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "tvm_version": "0.1"}))
    with pytest.raises(ArtifactError, match=r"built with TVM 0\.1"):
        verified_manifest(folder)


def test_validation_over_rpc_and_a_board_that_is_gone(validated, small_run):
    cluster = RpcCluster().start()
    try:
        address = f"127.0.0.1:{cluster.tracker_port}"
        result = script("validate.py", str(small_run), "--target", "host", "--rpc-tracker", address,
                        "--rpc-key", cluster.key, "--repeats", "3", cwd=small_run)
        assert result.returncode == 0, result.stderr[-3000:]
        remote = json.loads((small_run / "validation.json").read_text())
        assert remote["device"] == f"tracker:{address}/{cluster.key}" or cluster.key in remote["device"]
        assert remote["measured"]["whole_network"]["provenance"].startswith("measured:") and remote["accuracy_validated"]
        cluster.kill_server()
        gone = script("validate.py", str(small_run), "--target", "host", "--rpc-tracker", address,
                      "--rpc-key", cluster.key, "--timeout-s", "10", cwd=small_run)
        assert gone.returncode == 2 and "Traceback" not in gone.stderr
        assert gone.stderr.strip().splitlines()[-1].startswith("error: ") and cluster.key in gone.stderr
        assert json.loads((small_run / "validation.json").read_text()) == remote  # nothing overwritten
    finally:
        cluster.stop()


def test_a_cortex_a72_deployment_without_a_board_says_what_to_give(small_run):
    result = script("validate.py", str(small_run), cwd=small_run)
    assert result.returncode == 2 and "--rpc HOST:PORT" in result.stderr and "--target host" in result.stderr


def test_a_cortex_a72_deployment_builds_into_an_aarch64_library_that_computes_the_same_under_qemu(small_run, tmp_path):
    result = script("build.py", str(small_run), "--out", str(tmp_path / "a72"), cwd=small_run)
    assert result.returncode == 0, result.stderr[-3000:]
    emulated = json.loads((tmp_path / "a72" / "check.json").read_text())["aarch64_vs_host"]
    assert emulated["images"] == 4 and emulated["top1_agreement"] == 1.0
    assert emulated["max_abs_logit_difference"] <= 1e-3 * emulated["logit_scale"]
    elf = (tmp_path / "a72" / LIBRARY).read_bytes()[:20]
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64
    manifest = verified_manifest(tmp_path / "a72")
    assert manifest["target"] == "cortex-a72" and manifest["tvm_target"]["mtriple"] == "aarch64-linux-gnu"
    assert manifest["threads"] == max(c["dataflow"]["threads"] for c in manifest["choices"].values())
