"""The main job end to end: a short real PPO run, its TensorBoard events, export and bad inputs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deploy.export import load_deployment, reevaluate

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "run_ppo.py"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=900,
    )


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("runs")
    result = run("--target", "cortex-a72", "--net", "mobilenet_v2", "--timesteps", "4096",
                 "--logdir", str(logdir), "--checkpoint-every", "2048", cwd=logdir)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = [p for p in logdir.iterdir() if p.is_dir()]
    return folder


def test_run_folder_holds_config_command_checkpoints_export_and_summary(short_run):
    assert (short_run / "config.yml").read_text().startswith("target: cortex-a72")
    assert "run_ppo.py" in (short_run / "command.txt").read_text()
    assert sorted(p.name for p in (short_run / "checkpoints").glob("*.zip"))
    assert "speedup" in (short_run / "summary.txt").read_text()
    assert (short_run.parent / "measurements.sqlite").is_file()


def test_tensorboard_events_hold_the_search_scalars_and_histograms(short_run):
    (events_dir,) = list((short_run / "tb").iterdir())
    acc = EventAccumulator(str(events_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("deploy/episode_reward", "deploy/latency_ms", "deploy/accuracy", "deploy/speedup",
                "best/reward", "best/latency_ms", "best/accuracy", "best/speedup"):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    latency = [e.value for e in acc.Scalars("deploy/latency_ms")]
    assert len(latency) >= 3 and all(v > 0 for v in latency)
    best = [e.value for e in acc.Scalars("best/reward")]
    assert best == sorted(best)  # best so far never gets worse
    accuracy = [e.value for e in acc.Scalars("deploy/accuracy")]
    assert all(0.5 < v <= 1.0 for v in accuracy)
    histograms = set(acc.Tags()["histograms"])
    assert {"choices/quant", "choices/algo", "choices/threads", "choices/tile"} <= histograms
    assert any("hparams" in tag for tag in acc.Tags()["tensors"]) or acc.summary_metadata


def test_export_is_versioned_and_reproduces_its_numbers(short_run):
    path = short_run / "deployment.json"
    doc = json.loads(path.read_text())
    assert doc["schema"] == "deploygym.deployment/1"
    assert doc["totals"]["latency_provenance"] == ["modelled:cortex-a72-model@1"]
    assert len(doc["choices"]) == 53
    again = reevaluate(path)
    assert again.latency_ms == pytest.approx(doc["totals"]["latency_ms"], rel=1e-12)
    assert again.memory_bytes == doc["totals"]["memory_bytes"]
    assert doc["baseline"]["speedup"] == pytest.approx(doc["baseline"]["latency_ms"] / again.latency_ms)
    assert load_deployment(path).target == "cortex-a72"


def test_resume_continues_from_the_checkpoint(short_run):
    result = run("--resume", str(short_run), "--timesteps", "6144", cwd=short_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout
    assert (short_run / "checkpoints" / "ppo_6144_steps.zip").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "cortex-a99"], "valid targets: cortex-a72, host"),
        (["--net", "vgg99"], "mobilenet_v1"),
        (["--budget-ms", "0.001"], "below the fastest deployment"),
    ],
)
def test_bad_arguments_give_a_clear_error_and_no_traceback(args, message, tmp_path):
    result = run(*args, "--timesteps", "64", "--logdir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no run folder was started


def test_malformed_hyperparameter_yaml_is_named(tmp_path):
    bad = tmp_path / "ppo.yml"
    bad.write_text("default: [1, 2\n")
    result = run("--hyperparams", str(bad), "--timesteps", "64", "--logdir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and str(bad) in result.stderr and "Traceback" not in result.stderr


def test_unreadable_database_is_refused_and_left_unchanged(tmp_path):
    db = tmp_path / "measurements.sqlite"
    db.write_bytes(b"these are not the measurements you are looking for" * 100)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    result = run("--timesteps", "64", "--logdir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and str(db) in result.stderr and "Traceback" not in result.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
