"""The NAS experiment script, small: joint searches against the fixed MobileNetV2 on the A72 model."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from deploy.npu_hardware import load_preset, write_npu_spec
from deploy.targets import get_target
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_experiment_writes_fronts_choices_and_an_honest_dominance_verdict(tmp_path):
    args = ["--target", "cortex-a72", "--timesteps", "1024", "--supernet-epochs", "1", "--proxy", "digits", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "nas.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "nas-cortex-a72.json").read_text())
    assert (tmp_path / "nas-cortex-a72.png").stat().st_size > 10_000
    joint, fastest, fixed = report["searches"]
    assert joint["architecture_searched"] and fastest["architecture_searched"] and not fixed["architecture_searched"]
    assert (joint["implementation"], fastest["implementation"], fixed["implementation"]) == ("agent", "fastest", "agent")
    assert joint["episodes"] > 0 and fastest["episodes"] > 0 and fixed["episodes"] > 0
    assert all(len(p["architecture"]) == 17 for p in joint["accuracy_latency_front"] + fastest["accuracy_latency_front"])
    assert all(p["architecture"] is None for p in fixed["accuracy_latency_front"])
    assert report["accuracy"]["provenance"].endswith("/supernet")
    assert report["target"]["target"] == "cortex-a72" and report["target"]["tvm_target"]["mcpu"] == "cortex-a72"
    # the reference: as many random architectures as the first search had episodes, each deployed in int8, drawn once
    (random,) = report["random_architectures"]
    points = json.loads((tmp_path / report["points"]).read_text())  # the per-point dump beside the report
    assert set(points) == {s["name"] for s in [*report["searches"], random, *report["references"]]}
    assert random["episodes"] == joint["episodes"] == random["evaluated"] == len(points[random["name"]]["points"])
    front = random["accuracy_latency_front"]
    assert front and all(len(p["architecture"]) == 17 for p in front)
    stored = {tuple(p["architecture"]): p["choices"] for p in points[random["name"]]["front"]}
    assert all(c["quant"] == "int8" for p in front for c in stored[tuple(p["architecture"])].values())

    def covered(points, by):
        return [any(b["accuracy"] >= p["accuracy"] and b["latency_ms"] <= p["latency_ms"] for b in by["accuracy_latency_front"])
                for p in points]

    # the fixed network deployed as fast as possible in int8: MobileNetV2's own blocks, every layer int8
    (original,) = report["references"]
    assert original["episodes"] == 1 and original["choice"]["architecture"] == ["k3e1"] + ["k3e6"] * 16
    assert all(c["quant"] == "int8" for c in original["choice"]["choices"].values())
    verdict = report["comparison"]
    assert verdict["fixed_network_int8_fastest"] == {k: original["choice"][k] for k in ("latency_ms", "accuracy")}
    assert verdict["fixed_front_points"] == len(fixed["accuracy_latency_front"])
    assert verdict["random_architectures"] == {"networks": joint["episodes"], "front_points": len(front)}
    assert list(verdict["joint_searches"]) == [joint["name"], fastest["name"]]
    for search in (joint, fastest):
        row = verdict["joint_searches"][search["name"]]
        fixed_covered = covered(fixed["accuracy_latency_front"], search)
        assert row["fixed_points_dominated"] == sum(fixed_covered) and row["dominates_fixed"] == all(fixed_covered)
        assert row["choice_speedup_over_fixed_choice"] == fixed["choice"]["latency_ms"] / search["choice"]["latency_ms"]
        assert row["random_points_dominated"] == sum(covered(front, search))
        assert row["dominates_fixed_network_int8_fastest"] == covered([original["choice"]], search)[0]
    # the environment deployed every layer of the fastest-implementation search: one dataflow of many is not a coincidence
    fastest_choices = [c for p in points[fastest["name"]]["front"] for c in p["choices"].values()]
    assert len({json.dumps(c["dataflow"], sort_keys=True) for c in fastest_choices}) > 1


def test_bad_arguments_are_named(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "nas.py"), "--target", "host", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--target 'host': use an NPU preset" in done.stderr
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "nas.py"), "--target", "cortex-a72", "--random-architectures", "-5",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 2 and "--random-architectures -5: use 0 (none) or more" in done.stderr
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "nas.py"), "--target", "cortex-a72", "--local-search", "5",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 2 and "--local-search 5: use 0 or more on an NPU; on a CPU only 0" in done.stderr


def test_an_npu_experiment_compares_dataflows_on_its_own_hardware(tmp_path):
    nas = load_script("nas")
    assert [(p.target, p.dataflow) for p in nas.npu_searches("npu-tpu", tmp_path)] == [
        ("npu-eyeriss", "latency"), ("npu-nvdla", "fixed"), ("npu-eyeriss", "fixed")]
    spec = replace(load_preset("npu-tpu"), name="big", rows=32, cols=32)
    path = write_npu_spec(spec, tmp_path / "big.yaml")
    plans = nas.npu_searches(str(path), tmp_path / "nas-big")
    targets = [get_target(p.target) for p in plans]
    assert all(t.spec.hardware == spec.hardware for t in targets)
    assert [(t.name, str(t.spec.fixed_dataflow.key), p.dataflow) for t, p in zip(targets, plans)] == [
        ("big-eyeriss-like", "npu:rs:stationary", "latency"),
        ("big-nvdla-like", "npu:ws:stationary", "fixed"),
        ("big-eyeriss-like", "npu:rs:stationary", "fixed"),
    ]
    assert all(Path(p.target).parent == tmp_path / "nas-big" for p in plans)


def test_random_reference_compares_the_same_networks_at_every_accuracy_level():
    nas = load_script("nas")

    def search(latencies):
        front, samples = nas.ParetoFront(), []
        for i, (accuracy, latency) in enumerate(zip((0.70, 0.80, 0.90), latencies)):
            samples.append(nas.Point(accuracy, latency, architecture=[f"net{i}"]))
            front.add(samples[-1])
        return nas.Search(nas.SearchPlan("s", "npu", "fixed", True), front, {}, 3, 0.0, samples)

    ours, theirs = search((1.0, 1.5, 4.0)), search((3.0, 2.0, 6.0))  # per-network gains 3, 4/3, 1.5
    reference = nas.random_reference(ours, theirs)
    assert reference["networks"] == 3
    assert reference["per_network_speedup"] == {"min": 4 / 3, "median": 1.5, "max": 3.0}
    # their front: net1 (2.0 ms, 80%) and net2 (6.0 ms, 90%); net0 is slower and less accurate than net1
    levels = reference["levels"]
    assert [(l["accuracy"], l["their_latency_ms"], l["our_latency_ms"]) for l in levels] == [(0.80, 2.0, 1.5), (0.90, 6.0, 4.0)]
    assert all(l["same_architecture"] for l in levels)
    assert reference["speedup_at_equal_or_better_accuracy"] == pytest.approx({"min": 2.0 / 1.5, "median": (2.0 / 1.5 + 1.5) / 2, "max": 1.5})
    # where a more accurate network of ours is also faster, it is the one compared, and named as different
    levels = nas.random_reference(search((1.0, 3.0, 2.5)), theirs)["levels"]
    assert [(l["our_latency_ms"], l["our_accuracy"], l["same_architecture"]) for l in levels] == [(2.5, 0.9, False), (2.5, 0.9, True)]


def test_local_search_adds_its_networks_to_a_search_and_keeps_the_best_reward_as_its_choice(supernet_oracle, tmp_path):
    nas = load_script("nas")
    plan = nas.CPU_SEARCHES[1]  # architecture searched, each layer deployed by the environment
    space, rng = supernet_oracle.space, np.random.default_rng(3)
    start = nas.random_search(plan, supernet_oracle, [space.labels(space.sample(rng)) for _ in range(4)], tmp_path / "m.sqlite", None)
    before = (start.reward, start.best["latency_ms"], len(start.front.points))
    nas.refine_search(start, supernet_oracle, 12, 0, tmp_path / "m.sqlite", None)
    assert start.refinement["evaluations"] == 12 and len(start.front.points) == before[2] + 12
    assert start.refinement["front_changes"] >= 1
    # the choice is the highest reward of all 16 networks: replaying every front point cannot beat it
    # (deployed as the search deployed them: the random reference's plan deploys by dynamic programming)
    deploy = nas.int8_deployer(start.plan, supernet_oracle, tmp_path / "m.sqlite", None)
    assert start.reward >= before[0]
    assert all(deploy(p.architecture)[0] <= start.reward + 1e-12 for p in start.front.front)
    assert deploy(start.best["architecture"])[0] == pytest.approx(start.reward)
    assert start.to_dict()["refinement"] == start.refinement


def test_across_a_front_every_accuracy_level_is_compared_and_levels_we_do_not_reach_are_counted():
    nas = load_script("nas")

    def search(points):
        front = nas.ParetoFront()
        for accuracy, latency in points:
            front.add(nas.Point(accuracy, latency, architecture=[f"{accuracy}"]))
        return nas.Search(nas.SearchPlan("s", "npu", "fixed", True), front, {}, len(points), 0.0)

    ours, theirs = search([(0.80, 1.0), (0.85, 2.0)]), search([(0.79, 2.5), (0.84, 3.0), (0.90, 9.0)])
    levels = nas.gains_across_front(ours, theirs)
    assert [l["speedup"] for l in levels] == [2.5, 1.5, None]
    assert nas.across_front(ours, theirs) == {
        "levels": 3, "levels_we_reach": 2, "speedup_at_equal_or_better_accuracy": {"min": 1.5, "median": 2.0, "max": 2.5}}
    assert nas.across_front(search([(0.5, 1.0)]), theirs) == {"levels": 3, "levels_we_reach": 0}
