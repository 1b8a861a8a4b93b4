"""The main job end to end: a short real PPO run, its TensorBoard events, export and bad inputs."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.resumable import checkpoints
from deploy.export import load_deployment, reevaluate
from tests.conftest import load_script
from tests.test_pareto import brute_force_front

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "run_ppo.py"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=900,
    )


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    """The main job exactly as the README runs it (MobileNetV2, default budget and timesteps)."""
    logdir = tmp_path_factory.mktemp("runs")
    result = run("--target", "cortex-a72", "--logdir", str(logdir), cwd=logdir)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = [p for p in logdir.iterdir() if p.is_dir()]
    return folder


def test_default_run_beats_blas_fp32_twice_over_within_a_point_of_accuracy(default_run):
    doc = json.loads((default_run / "deployment.json").read_text())
    assert doc["network"]["name"] == "mobilenet_v2"
    assert doc["baseline"]["speedup"] >= 2.0
    assert doc["baseline"]["accuracy"] - doc["totals"]["accuracy"] <= 0.01
    assert doc["totals"]["accuracy_provenance"] == "measured:heldout/digits-32@360"


def test_default_run_is_near_the_exact_optimum_of_its_objective(default_run):
    """The main job's goals: within 2% of the fastest deployment with its precisions (exact, so no
    deployment scores more with them), and within 5% of the minimum latency at no worse accuracy."""
    refs = json.loads((default_run / "deployment.json").read_text())["references"]
    assert refs["exact"] and refs["note"] == ""
    assert refs["implementation_regret"] <= 1.02
    assert refs["latency_vs_minimum"] <= 1.05 and refs["accuracy_vs_minimum_points"] >= 0
    assert refs["for_its_precisions"]["latency_ms"] >= refs["minimum_latency"]["latency_ms"] - 1e-9
    assert refs["found"]["reward"] <= refs["best_known"]["reward"] + 1e-9 <= refs["reward_bound"] + 1e-9
    summary = (default_run / "summary.txt").read_text()
    for line in ("reward               100 x accuracy - ", "vs its precisions", "vs minimum latency", "reward bound"):
        assert line in summary


def test_run_folder_holds_config_command_checkpoints_export_and_summary(default_run):
    assert (default_run / "config.yml").read_text().startswith("target: cortex-a72")
    assert "run_ppo.py" in (default_run / "command.txt").read_text()
    assert sorted(p.name for p in (default_run / "checkpoints").glob("*.zip"))
    assert "speedup" in (default_run / "summary.txt").read_text()
    assert (default_run.parent / "measurements.sqlite").is_file()


def test_pareto_front_of_every_evaluated_deployment_is_exported_and_drawn(default_run):
    from agents.pareto import Point

    doc = json.loads((default_run / "pareto.json").read_text())
    front = [Point(p["accuracy"], p["latency_ms"], p["energy_mj"]) for p in doc["front"]]
    assert doc["evaluated"] == len(doc["points"]) > 500 and len(front) >= 1
    # exactly the evaluated points nothing beats (on the digits proxy, where quantization may cost no
    # held-out image, that can be the single fastest deployment)
    assert {(f.accuracy, f.latency_ms, f.energy_mj) for f in front} == brute_force_front([Point(*p) for p in doc["points"]])
    assert all(len(p["choices"]) == 53 for p in doc["front"])  # each point comes with its deployment
    assert (default_run / "pareto.png").stat().st_size > 10_000


def test_tensorboard_events_hold_the_search_scalars_and_histograms(default_run):
    (events_dir,) = list((default_run / "tb").iterdir())
    acc = EventAccumulator(str(events_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0, "images": 0})
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
    assert "pareto/front" in acc.Tags()["images"]
    assert any("hparams" in tag for tag in acc.Tags()["tensors"]) or acc.summary_metadata


def test_export_is_versioned_and_reproduces_its_numbers(default_run):
    path = default_run / "deployment.json"
    doc = json.loads(path.read_text())
    assert doc["schema"] == "deploygym.deployment/1"
    assert doc["totals"]["latency_provenance"] == ["modelled:cortex-a72-model@2"]
    assert len(doc["choices"]) == 53
    again = reevaluate(path)
    assert again.latency_ms == pytest.approx(doc["totals"]["latency_ms"], rel=1e-12)
    assert again.memory_bytes == doc["totals"]["memory_bytes"]
    assert doc["baseline"]["speedup"] == pytest.approx(doc["baseline"]["latency_ms"] / again.latency_ms)
    assert load_deployment(path).target == "cortex-a72"


def test_resume_continues_from_the_checkpoint_and_keeps_the_best(default_run):
    from envs.accuracy import oracle_for
    from envs.make import make_deployment_env

    before = load_deployment(default_run / "deployment.json")
    result = run("--resume", str(default_run), "--timesteps", "242176", cwd=default_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout and "at 240128 steps" in result.stdout
    assert (default_run / "checkpoints" / "maskable_ppo_242176_steps.zip").is_file()
    after = load_deployment(default_run / "deployment.json")
    env = make_deployment_env(before.network, "cortex-a72", accuracy=oracle_for(before.network))
    assert env.replay(after.choices)[0] >= env.replay(before.choices)[0]  # a resumed run never loses its best
    assert not (default_run / "best_deployment.json").exists()


def test_same_seed_and_warm_database_give_the_same_deployment_without_measuring(tmp_path):
    args = ("--timesteps", "512", "--logdir", str(tmp_path))
    first = run(*args, cwd=tmp_path)
    second = run(*args, cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-3000:]
    assert "reusing" not in first.stdout and "reusing" in second.stdout
    assert "accuracy queries     0 measured" in second.stdout
    one, two = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    a, b = load_deployment(one / "deployment.json"), load_deployment(two / "deployment.json")
    assert a.choices == b.choices and a.totals == b.totals


@pytest.mark.parametrize("agent", ["maskable_ppo", "evolution"])
def test_an_interrupted_search_resumes_exactly_where_it_stopped(agent, tmp_path):
    """SIGINT mid-search: a checkpoint and one line saying how to resume, no traceback; `--resume` then
    ends with the same deployment (and for PPO the same policy weights) as the search never stopped."""
    import io
    import signal
    import time
    import zipfile

    import torch

    hyperparams = tmp_path / "ppo.yml"
    hyperparams.write_text("default:\n  n_envs: 2\n  n_steps: 64\n  batch_size: 64\n  n_epochs: 1\n")
    args = ["--agent", agent, "--timesteps", "1024", "--hyperparams", str(hyperparams), "--logdir", str(tmp_path)]
    whole = run(*args, cwd=tmp_path)  # also fills the database's accuracy cache the others then read
    assert whole.returncode == 0, whole.stderr[-3000:]
    (uninterrupted,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    command = [sys.executable, str(ROOT / "experiments" / "run_ppo.py"), *args, "--checkpoint-minutes", "0"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while process.poll() is None and not [
        c for c in tmp_path.glob("*/checkpoints/*_steps.*") if c.parent.parent != uninterrupted and "_0_steps" not in c.name
    ]:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-3000:]
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir() and p != uninterrupted]
    assert "Traceback" not in err and f"continue with: python experiments/run_ppo.py --resume {folder}" in err
    stopped_at = int(err.split("stopped at ")[1].split(" steps")[0])
    assert 0 < stopped_at < 1024 and not (folder / "deployment.json").exists()
    resumed = run("--resume", str(folder), "--timesteps", "1024", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at {stopped_at} steps, exactly where it stopped" in resumed.stdout
    a, b = load_deployment(uninterrupted / "deployment.json"), load_deployment(folder / "deployment.json")
    assert a.choices == b.choices and a.totals == b.totals
    if agent == "maskable_ppo":
        def weights(run_folder: Path) -> dict:
            with zipfile.ZipFile(run_folder / "checkpoints" / "maskable_ppo_1024_steps.zip") as z:
                return torch.load(io.BytesIO(z.read("policy.pth")))

        x, y = weights(uninterrupted), weights(folder)
        assert all(torch.equal(x[k], y[k]) for k in x)
    events = EventAccumulator(str(next((folder / "tb").iterdir()))).Reload()
    steps = [e.step for e in events.Scalars("deploy/episodes")]
    assert len(list((folder / "tb").iterdir())) == 1 and steps == sorted(steps) and steps[-1] >= 1024 - 128


def whole_episodes(tmp_path: Path, n_envs: int) -> tuple[str, ...]:
    """Arguments of a MobileNetV2-32 search (53 layers) just long enough for one complete episode in each
    of `n_envs` environments."""
    hyperparams = tmp_path / "ppo.yml"
    hyperparams.write_text(f"default:\n  n_envs: {n_envs}\n  n_steps: 64\n  batch_size: 64\n  n_epochs: 1\n")
    return ("--net", "mobilenet_v2_32", "--timesteps", str(64 * n_envs), "--hyperparams", str(hyperparams))


def one_measured_episode(tmp_path: Path) -> tuple[str, ...]:
    """Arguments of a host search learning on measured rewards just long enough for one complete episode."""
    return ("--target", "host", "--guide", "none", *whole_episodes(tmp_path, 1))


def test_main_job_on_an_npu_reports_simulated_latency_and_energy(tmp_path):
    from deploy.zigzag_sim import ZIGZAG_VERSION

    result = run("--target", "npu-nvdla", *whole_episodes(tmp_path, 2), "--zigzag-lpf", "2", "--logdir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    doc = json.loads((folder / "deployment.json").read_text())
    searched = [l for l in doc["layers"] if l["choice"] is not None]
    assert searched and all(l["provenance"] == f"simulated:zigzag@{ZIGZAG_VERSION}" for l in searched)
    assert all("spatial" in l["choice"]["dataflow"] for l in searched)
    assert all(l["cycles"] > 0 and 0 < l["utilization"] <= 1 for l in searched)
    assert doc["totals"]["energy_mj"] > 0 and "energy " in result.stdout and "mJ" in result.stdout
    assert doc["baseline"]["choice"]["dataflow"] == {"spatial": "ws", "temporal": "stationary"}  # NVDLA's own
    from deploy.deployment import evaluate
    from deploy.zigzag_sim import SimulationSettings
    from envs.make import make_cost_table

    record = load_deployment(folder / "deployment.json")  # priced again from the run's simulations, at its ZigZag depth
    again = evaluate(record.network, record.choices, make_cost_table("npu-nvdla", tmp_path / "measurements.sqlite",
                                                                     settings=SimulationSettings(lpf_limit=2)))
    assert again.latency_ms == pytest.approx(doc["totals"]["latency_ms"], rel=1e-12)
    (events_dir,) = list((folder / "tb").iterdir())
    acc = EventAccumulator(str(events_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    assert "deploy/energy_mj" in acc.Tags()["scalars"]
    assert {"choices/spatial", "choices/temporal"} <= set(acc.Tags()["histograms"])
    assert not any(p.name.startswith("outputs") for p in tmp_path.iterdir())  # ZigZag wrote into a temporary folder


def test_joint_search_exports_the_network_it_chose_with_its_architecture(tmp_path):
    args = ("--arch", "--proxy", "digits", "--supernet-epochs", "1", "--timesteps", "2048", "--logdir", str(tmp_path))
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    record = load_deployment(folder / "deployment.json")
    from envs.arch_space import MobileNetV2ArchSpace
    from envs.zoo import mobilenet_v2

    space = MobileNetV2ArchSpace()
    blocks = space.parse(record.architecture)
    assert record.network == mobilenet_v2(blocks=blocks)  # the chosen variant, at full size
    assert set(record.choices) == {l.name for l in record.network.searchable_layers}
    assert reevaluate(folder / "deployment.json").latency_ms == pytest.approx(record.totals["latency_ms"], rel=1e-12)
    assert record.totals["accuracy_provenance"].endswith("/supernet")
    assert f"architecture         {' '.join(record.architecture)}" in result.stdout
    front = json.loads((folder / "pareto.json").read_text())["front"]
    assert front and all(len(p["architecture"]) == space.blocks for p in front)
    (events_dir,) = list((folder / "tb").iterdir())
    acc = EventAccumulator(str(events_dir), size_guidance={"histograms": 0, "images": 0})
    acc.Reload()
    assert "choices/block" in acc.Tags()["histograms"] and "pareto/front" in acc.Tags()["images"]


def test_fastest_implementation_exports_the_fastest_deployment_of_the_agents_precisions(tmp_path):
    from deploy.cost_table import CostTable
    from deploy.targets import get_target
    from tests.test_fastest_implementation import assert_each_layer_adds_the_least

    result = run("--implementation", "fastest", "--timesteps", "1024", "--logdir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert "implementation: fastest" in (folder / "config.yml").read_text()
    record = load_deployment(folder / "deployment.json")
    target = get_target("cortex-a72")
    assert_each_layer_adds_the_least(CostTable(target.backend(), target.search_space()), record.network, record.choices)
    assert reevaluate(folder / "deployment.json").latency_ms == pytest.approx(record.totals["latency_ms"], rel=1e-12)


def test_joint_search_with_the_predictor_reports_it_and_exports_measured_accuracy(tmp_path):
    args = ("--arch", "--proxy", "digits", "--supernet-epochs", "1", "--predictor-samples", "16", "--timesteps", "1024",
            "--logdir", str(tmp_path))
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy predictor: Spearman" in result.stdout and "on 4 held-out sub-networks" in result.stdout
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    totals = json.loads((folder / "deployment.json").read_text())["totals"]
    assert totals["accuracy_provenance"].startswith("measured:") and totals["accuracy_provenance"].endswith("/supernet")
    assert 0 <= totals["predicted_accuracy"] <= 1 and totals["predictor"]["samples"] == 16
    assert "predicted:ridge@16/" in result.stdout  # the summary names where the search's accuracy came from


def test_a_board_over_an_rpc_tracker_is_searched_model_guided_and_an_unreachable_one_is_named(tmp_path):
    """The default on a measured target: a first measured deployment after a few calibration kernels and
    a short learning on the corrected model, then one a round within the kernel budget; each logged and
    exported as measured on the board behind the tracker."""
    from tests.tvm_rpc import RpcCluster, free_port

    (tmp_path / "ppo.yml").write_text("default:\n  n_envs: 2\n  n_steps: 64\n  batch_size: 64\n  n_epochs: 1\n")
    small = ("--target", "host", "--net", "mobilenet_v2_32", "--hyperparams", str(tmp_path / "ppo.yml"),
             "--calibration-kernels", "8", "--pretrain-steps", "512", "--round-steps", "256", "--logdir", str(tmp_path / "ok"))
    cluster = RpcCluster().start()
    try:
        board = ("--rpc-tracker", f"127.0.0.1:{cluster.tracker_port}", "--rpc-key", cluster.key)
        short = run(*small, *board, "--kernel-budget", "24", cwd=tmp_path)
        result = run(*small, *board, "--kernel-budget", "64", cwd=tmp_path)
    finally:
        cluster.stop()
    assert short.returncode == 1 and "Traceback" not in short.stderr
    assert "more than --kernel-budget 24" in short.stderr  # says what to raise
    assert result.returncode == 0, result.stderr[-3000:]
    device = f"measured:tracker:127.0.0.1:{cluster.tracker_port}/{cluster.key}"
    assert device in result.stdout and "model-guided search: 8 calibration kernels" in result.stdout
    rounds = re.findall(r"round (\d+): [\d.]+ ms measured, reward (-?[\d.]+) \(best -?[\d.]+\), (\d+)/64 kernels", result.stdout)
    assert rounds and [int(r) for r, _, _ in rounds] == list(range(1, len(rounds) + 1))
    assert all(8 < int(k) <= 64 for _, _, k in rounds)
    (folder,) = [p for p in (tmp_path / "ok").iterdir() if p.is_dir() and (p / "deployment.json").exists()]
    doc = json.loads((folder / "deployment.json").read_text())
    assert all(l["provenance"] == device for l in doc["layers"] if l["choice"] is not None)
    assert all(p == device or p.startswith("modelled:host-model@") for p in doc["totals"]["latency_provenance"])  # pools, conversions
    assert doc["totals"]["energy_mj"] is None and "energy n/a" in result.stdout  # timed, not metered: no made-up total
    assert checkpoints(folder / "checkpoints", "maskable_ppo", ".zip")
    (events_dir,) = list((folder / "tb").iterdir())
    events = EventAccumulator(str(events_dir)).Reload()
    assert len(events.Scalars("deploy/latency_ms")) == len(rounds)  # the measured deployments, not the model's episodes
    assert events.Scalars("best/reward")[-1].value == pytest.approx(max(float(r) for _, r, _ in rounds), abs=1e-3)
    dead = run(*one_measured_episode(tmp_path), "--rpc", f"127.0.0.1:{free_port()}", "--logdir", str(tmp_path / "dead"), cwd=tmp_path)
    assert dead.returncode == 2 and "Traceback" not in dead.stderr
    assert "rpc:127.0.0.1:" in dead.stderr and "cannot reach" in dead.stderr
    assert not [p for p in (tmp_path / "dead").iterdir() if p.is_dir()]  # no run folder was started


def test_cold_cache_kernels_are_timed_and_stored_apart_from_warm_ones():
    from deploy.targets import get_target
    from envs.make import make_cost_table

    script = load_script("run_ppo")
    host = get_target("host")
    cold, warm = (script.backend_settings(script.parse_args(["--target", "host", *flag]), host) for flag in (["--cold-cache"], []))
    assert cold.cold_cache and warm is None
    assert make_cost_table("host", settings=cold).fingerprint != make_cost_table("host", settings=warm).fingerprint
    assert script.backend_settings(script.parse_args(["--target", "npu-nvdla", "--zigzag-lpf", "2"]), get_target("npu-nvdla")).lpf_limit == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "cortex-a99"], "valid targets: cortex-a72, host"),
        (["--net", "vgg99"], "mobilenet_v1"),
        (["--budget-ms", "0.001"], "below the fastest deployment"),
        (["--target", "npu-eyeriss", "--rpc", "127.0.0.1:9"], "simulated with ZigZag: --rpc / --rpc-tracker do not apply"),
        (["--target", "no_such_npu.yaml"], "no_such_npu.yaml: cannot read the NPU description"),
        (["--dataflow", "fastest"], "use 'agent', 'fixed' or a FlowOptimizer criterion"),
        (["--implementation", "quickest"], "implementation='quickest': use one of ('agent', 'fastest')"),
        (["--implementation", "fastest", "--dataflow", "latency"], "picks the dataflow too: dataflow='latency' must be 'agent'"),
        (["--arch", "--net", "mobilenet_v1"], "network 'mobilenet_v1' has no architecture space"),
        (["--arch", "--proxy", "mnist"], "unknown proxy data set 'mnist'"),
        (["--predictor-samples", "50"], "--predictor-samples predicts sub-network accuracy: it needs --arch"),
        (["--latency-correction", "nope.json"], "nope.json: cannot read a latency correction"),
        (["--resume", "/tmp"], "--resume /tmp: not a run folder (no config.yml)"),
        (["--budget-ms", "-5"], "--budget-ms must be positive, got -5"),
        (["--tradeoff", "0"], "--tradeoff must be positive, got 0"),
        (["--guide", "maybe"], "--guide must be auto, model or none, got 'maybe'"),
        (["--guide", "model", "--agent", "evolution"], "--guide model needs --agent maskable_ppo"),
        (["--guide", "model"], "--guide model corrects the model by measured kernels: it needs a measured target"),
        (["--kernel-budget", "0"], "--kernel-budget must be positive, got 0"),
        (["--cold-cache"], "--cold-cache times kernels with flushed caches: it needs a measured target"),
    ],
)
def test_bad_arguments_give_a_clear_error_and_no_traceback(args, message, tmp_path, capsys, monkeypatch):
    """In this process (a subprocess per case spent ~10 s importing torch and TVM): the script's own
    `run_main`, which turns a user error into `error: ...` and exit code 2; anything else would raise here."""
    import torch

    from deploy.cli import run_main

    script = load_script("run_ppo")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exited:
            run_main(lambda: script.main([*args, "--timesteps", "64", "--logdir", str(tmp_path)]))
    finally:
        torch.set_num_threads(threads)  # main() sets the search's thread count
    assert exited.value.code == 2 and message in capsys.readouterr().err
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
