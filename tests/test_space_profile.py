"""Space profiling from end-to-end numbers, reduced spaces, and searching in them."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import numpy as np
import pytest
import yaml

from envs.arch_space import MobileNetV2ArchSpace, ResNet18ArchSpace
from envs.make import make_cost_table, make_deployment_env
from envs.reduced_space import ReducedArchSpace, architectures, read_arch_space, write_arch_space
from envs.space_profile import (
    ArchitecturePricer,
    ProfiledArchitecture,
    aggressiveness_for_size,
    fit_profile,
    profile_space,
    reduce_space,
    reference_option,
    sample_architectures,
)
from tests.conftest import load_script
from tests.test_arch_env import random_episode, walk_to

RESNET = ResNet18ArchSpace()


def synthetic_samples(space, effects: dict, count: int, noise: float, seed: int, latency_noise: float = 0.0,
                      bias: tuple[int, str, float] | None = None) -> list[ProfiledArchitecture]:
    """Architectures whose latency and accuracy are exactly additive in `effects` ((block, label) ->
    (ms, points) over the reference), plus Gaussian noise of `noise` points on accuracy and
    `latency_noise` ms on latency. Every block's per-layer cost is 1 ms plus its effect; `bias`
    (block, label, ms) adds ms end to end, never to the per-layer costs, where a block takes label."""
    rng = np.random.default_rng(seed)
    samples = []
    for blocks in sample_architectures(space, count, rng):
        labels = space.labels(blocks)
        per_block = tuple(1.0 + effects.get((b, l), (0.0, 0.0))[0] for b, l in enumerate(labels))
        latency = 10.0 + sum(per_block)
        if latency_noise:  # drawn only when asked: the accuracy noise of noiseless samples stays as it was
            latency += rng.normal(0, latency_noise)
        if bias and labels[bias[0]] == bias[1]:
            latency += bias[2]
        points = 70.0 + sum(effects.get((b, l), (0.0, 0.0))[1] for b, l in enumerate(labels)) + rng.normal(0, noise)
        samples.append(ProfiledArchitecture(labels, latency, points / 100, per_block))
    return samples


def random_effects(seed: int) -> dict:
    """(block, label) -> (ms, points) over the reference, drawn for every other option of ResNet-18's space."""
    rng = np.random.default_rng(seed)
    return {(b, RESNET.label(o)): (float(rng.uniform(0.5, 3)), float(rng.uniform(-2, 4)))
            for b in range(RESNET.blocks) for o in RESNET.options(b) if o != reference_option(RESNET, b)}


def test_the_regression_recovers_additive_effects_within_its_intervals():
    effects = random_effects(1)
    profile = fit_profile(RESNET, synthetic_samples(RESNET, effects, 300, noise=0.5, seed=0), "synthetic")
    assert profile.latency_r2 == pytest.approx(1.0)
    covered = []
    for (block, label), (ms, points) in effects.items():
        e = profile.effect(RESNET.block_name(block), label)
        assert e.latency_ms == pytest.approx(ms, abs=1e-9)
        covered.append(abs(e.accuracy_points - points) <= e.accuracy_ci_points)
        assert e.accuracy_ci_points < 0.4  # 300 samples, 0.5 points of noise
    assert np.mean(covered) >= 0.8  # 95% intervals: 20 options, a miss or two at most
    references = [e for e in profile.effects if e.reference]
    assert {e.option for e in references} == {"w0.5", "drop"} and all(e.latency_ms == 0 for e in references)


def test_recovery_tells_timing_noise_from_a_cost_the_layers_alone_do_not_show():
    effects = random_effects(2)
    noisy = fit_profile(RESNET, synthetic_samples(RESNET, effects, 300, 0.5, seed=0, latency_noise=0.5), "noisy").recovery(RESNET)
    assert noisy["options"] == 20 and noisy["max_relative_error"] > 0.01
    assert noisy["within_interval"] >= 0.8  # 95% intervals: the errors are the noise's
    biased = synthetic_samples(RESNET, effects, 300, 0.5, seed=0, latency_noise=0.05, bias=(3, "w1", 1.0))
    recovery = fit_profile(RESNET, biased, "biased").recovery(RESNET)
    worst = recovery["worst"][0]
    assert (worst["block"], worst["option"]) == ("layer2.1", "w1")
    assert worst["estimate_ms"] - worst["per_layer_ms"] == pytest.approx(1.0, abs=0.05) and worst["interval_ms"] < 0.1
    assert 0.8 <= recovery["within_interval"] <= 19 / 20  # that one is outside its interval: a bias, not noise


def test_in_network_recovery_checks_the_profile_against_where_the_timed_networks_spent_their_time():
    """One option costs 1 ms more inside the network than its kernels timed alone say (as a layer whose
    weights the others evicted does): against the kernels it stands out as a bias; against the blocks'
    times inside the networks, measured in the same runs as the networks, every option is recovered."""
    effects = random_effects(5)
    samples = synthetic_samples(RESNET, effects, 300, 0.5, seed=0, latency_noise=0.05, bias=(3, "w1", 1.0))
    measured = [replace(s, block_in_network_ms=tuple(ms + (1.0 if b == 3 and s.architecture[3] == "w1" else 0.0)
                                                     for b, ms in enumerate(s.block_latency_ms))) for s in samples]
    profile = fit_profile(RESNET, measured, "measured")
    alone, inside = profile.recovery(RESNET), profile.recovery(RESNET, in_network=True)
    assert (alone["worst"][0]["block"], alone["worst"][0]["option"]) == ("layer2.1", "w1") and alone["within_10_percent"] == 19 / 20
    assert inside["within_10_percent"] == 1.0 and inside["max_relative_error"] < 0.02
    assert profile.in_network and profile.to_dict(RESNET)["recovery_in_network"] == inside
    modelled = fit_profile(RESNET, samples, "modelled")  # no times inside networks: nothing to check against
    assert not modelled.in_network and "recovery_in_network" not in modelled.to_dict(RESNET)
    with pytest.raises(ValueError, match="no blocks' times inside measured networks"):
        modelled.recovery(RESNET, in_network=True)


def test_recovery_says_how_many_samples_would_bring_every_interval_within_10_percent():
    effects = random_effects(3)
    noisy = fit_profile(RESNET, synthetic_samples(RESNET, effects, 200, 0.5, seed=0, latency_noise=2.0), "noisy").recovery(RESNET)
    needed = noisy["samples_for_intervals_within_10_percent"]
    assert needed > 400  # 2 ms of timing noise on options of 1.5-4 ms: 200 samples are far from enough

    def widest(count: int) -> float:
        """The widest interval, over 10% of its option's cost, from `count` fresh samples."""
        profile = fit_profile(RESNET, synthetic_samples(RESNET, effects, count, 0.5, seed=1, latency_noise=2.0), "noisy")
        costs = {(RESNET.block_name(b), l): 1.0 + ms for (b, l), (ms, _) in effects.items()}
        return max(e.latency_ci_ms / (0.1 * costs[e.block, e.option]) for e in profile.effects if not e.reference)

    assert 0.8 < widest(needed) <= 1.1  # the projection holds on new samples
    assert widest(needed // 2) > 1.2
    exact = fit_profile(RESNET, synthetic_samples(RESNET, effects, 200, 0.5, seed=0), "exact").recovery(RESNET)
    assert exact["samples_for_intervals_within_10_percent"] == 31  # no timing noise: the fewest a fit takes


def test_too_few_samples_is_an_error_naming_the_minimum():
    with pytest.raises(ValueError, match="use at least 31"):
        fit_profile(RESNET, synthetic_samples(RESNET, {}, 25, 0.0, 0), "synthetic")
    with pytest.raises(ValueError, match="20 block options of resnet18 and 4 group constants: use at least 35"):
        fit_profile(RESNET, in_groups(synthetic_samples(RESNET, {}, 34, 0.0, 0), 7, drift_ms=1.0, seed=0), "synthetic")


def in_groups(samples: list[ProfiledArchitecture], size: int, drift_ms: float, seed: int) -> list[ProfiledArchitecture]:
    """The samples timed `size` at a time on a device whose speed drifts between groups: each group's
    latencies shifted by one draw of `drift_ms` standard deviation."""
    rng = np.random.default_rng(seed)
    shifts = rng.normal(0, drift_ms, len(samples) // size + 1)
    return [replace(s, latency_ms=s.latency_ms + shifts[i // size], group=f"g{i // size}") for i, s in enumerate(samples)]


def test_a_constant_per_group_timed_together_takes_the_device_drift_out_of_the_options():
    """2 ms of drift between groups of 8 and 0.1 ms within them: with the groups' constants every option
    is recovered within 10% of its cost from 96 samples; fitted as if each were timed alone, not."""
    effects = random_effects(4)
    samples = in_groups(synthetic_samples(RESNET, effects, 96, 0.5, seed=0, latency_noise=0.1), 8, drift_ms=2.0, seed=0)
    grouped = fit_profile(RESNET, samples, "grouped")
    alone = fit_profile(RESNET, [replace(s, group=None) for s in samples], "alone")
    assert grouped.latency_residual_ms < 0.15 < 1.0 < alone.latency_residual_ms
    assert grouped.recovery(RESNET)["within_10_percent"] == 1.0 and grouped.recovery(RESNET)["within_interval"] >= 0.8
    assert alone.recovery(RESNET)["within_10_percent"] < 0.8
    assert grouped.t_quantile == alone.t_quantile  # the accuracy regression has no group constants
    assert [e.accuracy_points for e in grouped.effects] == pytest.approx([e.accuracy_points for e in alone.effects])
    one_group = fit_profile(RESNET, [replace(s, group="g") for s in samples], "one group")
    assert one_group.latency_residual_ms == pytest.approx(alone.latency_residual_ms)  # its constant is the intercept


def test_reduction_drops_dominated_options_and_aggressiveness_drops_more():
    # layer2.1: w0.75 is slower than w0.5 and no more accurate (dominated); w1 costs 1 ms for 0.3 points
    effects = {(3, "w0.5"): (1.0, 2.0), (3, "w0.75"): (1.5, 1.5), (3, "w1"): (2.5, 2.3)}
    profile = fit_profile(RESNET, synthetic_samples(RESNET, effects, 200, noise=0.3, seed=2), "synthetic")
    lenient = reduce_space(RESNET, profile, aggressiveness=-10.0)  # drops only what is beaten by over 10 standard errors
    default = reduce_space(RESNET, profile)
    aggressive = reduce_space(RESNET, profile, aggressiveness=8.0)
    labels = lambda space: [RESNET.label(o) for o in space.options(3)]  # noqa: E731
    assert labels(default) == ["w0.5", "w1", "drop"]  # w0.75 is gone
    assert labels(aggressive) == ["w0.5", "drop"]  # 0.3 points for 1.5 ms is well inside 8 standard errors
    assert labels(lenient) == ["w0.5", "w0.75", "w1", "drop"]
    for block in range(RESNET.blocks):
        assert set(aggressive.options(block)) <= set(default.options(block)) <= set(lenient.options(block))
    assert architectures(aggressive) < architectures(default) < architectures(RESNET)
    # a size budget picks the least aggressive reduction within it
    found = aggressiveness_for_size(RESNET, profile, architectures(default))
    budget = reduce_space(RESNET, profile, found)
    assert found <= 0.0 and architectures(budget) <= architectures(default) and set(budget.options(3)) >= set(default.options(3))
    assert aggressiveness_for_size(RESNET, profile, architectures(RESNET)) == -64.0
    smallest = architectures(reduce_space(RESNET, profile, 64.0))
    with pytest.raises(ValueError, match=f"holds at most {smallest - 1} architectures"):
        aggressiveness_for_size(RESNET, profile, smallest - 1)


def test_a_reduced_space_round_trips_through_yaml_and_bad_files_are_named(tmp_path):
    space = ReducedArchSpace(RESNET, {1: [0.5, 0.0], 4: [1.0]}, note="test")
    path = write_arch_space(space, tmp_path / "reduced.yaml")
    again = read_arch_space(path)
    assert again == space and hash(again) == hash(space) and again != RESNET
    assert again.options(1) == (0.5, 0.0) and again.options(4) == (1.0,) and again.options(0) == RESNET.options(0)
    assert again.removed() == {"layer1.1": ["w0.75", "w1"], "layer3.0": ["w0.5", "w0.75"]}
    assert architectures(again) == architectures(RESNET) // 2 // 3
    with pytest.raises(ValueError, match="cannot be w0.75"):
        again.parse(["w1", "w0.75", "w1", "w1", "w1", "w1", "w1", "w1"])
    doc = yaml.safe_load(path.read_text())
    for blocks, message in (({"layer9.0": ["w1"]}, "no block 'layer9.0'"), ({"layer1.0": ["drop"]}, r"cannot keep \['drop'\]"),
                            ({"layer1.0": []}, "keeps no option")):
        path.write_text(yaml.safe_dump(doc | {"blocks": blocks}))
        with pytest.raises(ValueError, match=message):
            read_arch_space(path)
    path.write_text(yaml.safe_dump(doc | {"space": "vgg16"}))
    with pytest.raises(ValueError, match="'vgg16' is not one of"):
        read_arch_space(path)


def test_an_environment_over_a_reduced_space_only_builds_its_architectures(resnet_supernet_oracle):
    # the first block keeps one option that is not the original: set from the start, never asked
    reduced = ReducedArchSpace(RESNET, {0: [0.5], 1: [0.0], 3: [0.75, 0.0], 6: [0.5, 1.0]})
    env = make_deployment_env("resnet18", "cortex-a72", accuracy=resnet_supernet_oracle, architecture=reduced)
    full = make_deployment_env("resnet18", "cortex-a72", accuracy=resnet_supernet_oracle, architecture=True)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(12):
        info = random_episode(env, rng)
        blocks = reduced.parse(info["architecture"])  # raises unless every block took an option it keeps
        seen.add(blocks[3])
        assert blocks[0] == 0.5 and blocks[1] == 0.0
    assert seen == {0.75, 0.0}
    options = lambda e: np.flatnonzero(e.action_masks()[: len(RESNET.OPTIONS)]).tolist()  # noqa: E731
    walk_to(full, "layer1.0.conv1")
    walk_to(env, "layer1.0.conv1")
    assert options(full) == [0, 1, 2] and options(env) == [0]  # not asked (one entry, ignored)
    walk_to(full, "layer2.1.conv1")
    walk_to(env, "layer2.1.conv1")
    assert options(full) == [0, 1, 2, 3] and options(env) == [1, 3]


@pytest.fixture(scope="module")
def resnet_profile(resnet_supernet_oracle):
    pricer = ArchitecturePricer(RESNET, make_cost_table("cortex-a72"), resnet_supernet_oracle)
    return profile_space(RESNET, pricer, 48, seed=0, target="cortex-a72")


def test_end_to_end_profiling_recovers_the_per_layer_costs_of_the_a72_model(resnet_profile):
    recovery = resnet_profile.recovery(RESNET)
    assert recovery["options"] == 20
    assert recovery["max_relative_error"] < 0.10  # the model is additive in layers: the regression sees it
    assert recovery["within_interval"] == 1.0  # exact, though its intervals are rounding-sized
    assert resnet_profile.latency_r2 > 0.999
    wider = [resnet_profile.effect("layer3.0", w).latency_ms for w in ("w0.75", "w1")]
    assert 0 < wider[0] < wider[1]  # a wider block costs more on the A72
    assert all(e.samples > 0 for e in resnet_profile.effects)
    front = resnet_profile.front()
    assert front and sum(e.on_front for e in resnet_profile.effects if e.block == "layer1.0") == len(front)


def test_profile_space_writes_a_profile_heatmap_and_a_reduced_space_the_searches_accept(tmp_path, resnet_supernet_oracle, monkeypatch):
    profile_space_script = load_script("profile_space")
    monkeypatch.setattr(profile_space_script, "supernet_oracle_for", lambda *a, **k: resnet_supernet_oracle)
    out = tmp_path / "profile"
    with pytest.raises(ValueError, match="--max-architectures 0: a reduced space holds at least one architecture"):
        profile_space_script.main(["--target", "cortex-a72", "--max-architectures", "0", "--logdir", str(tmp_path)])
    assert profile_space_script.main(["--target", "cortex-a72", "--space", "resnet18", "--samples", "40",
                                      "--logdir", str(tmp_path), "--out", str(out)]) == 0
    report = json.loads((out / "profile.json").read_text())
    assert report["samples"] == 40 and report["target"] == "cortex-a72"
    assert report["latency_provenance"].startswith("modelled:") and report["accuracy_provenance"].startswith("measured:")
    assert report["recovery"]["max_relative_error"] < 0.10
    assert set(report["placement"]) <= {"w0.5", "w0.75", "w1", "drop"} and report["placement"]
    assert (out / "profile.png").stat().st_size > 10_000
    reduced = read_arch_space(out / "reduced-space.yaml")
    assert architectures(reduced) == report["reduced_space"]["architectures"] < architectures(RESNET)
    budget = architectures(reduced) - 1  # a size budget below the default's: the aggressiveness found is reported
    assert profile_space_script.main(["--target", "cortex-a72", "--space", "resnet18", "--samples", "40", "--logdir", str(tmp_path),
                                      "--max-architectures", str(budget), "--out", str(tmp_path / "cut")]) == 0
    cut = json.loads((tmp_path / "cut" / "profile.json").read_text())["reduced_space"]
    assert cut["max_architectures"] == budget and cut["architectures"] <= budget and cut["aggressiveness"] > 0
    assert f"aggressiveness {cut['aggressiveness']:g}" in read_arch_space(tmp_path / "cut" / "reduced-space.yaml").note
    run_ppo = load_script("run_ppo")
    config = run_ppo.parse_args(["--arch", "--net", "resnet18", "--arch-space", str(out / "reduced-space.yaml")])
    assert config.arch_space == str(out / "reduced-space.yaml")
    with pytest.raises(SystemExit):
        run_ppo.parse_args(["--arch-space", str(out / "reduced-space.yaml")])  # without --arch
    with pytest.raises(ValueError, match="a space of resnet18; this experiment searches MobileNetV2"):
        load_script("nas").main(["--target", "cortex-a72", "--arch-space", str(out / "reduced-space.yaml"), "--out", str(tmp_path)])


def test_the_mobilenet_space_samples_cover_every_option_first():
    space = MobileNetV2ArchSpace()
    drawn = sample_architectures(space, 12, np.random.default_rng(0))
    assert len(set(drawn)) == 12
    for block in range(space.blocks):
        assert set(space.options(block)) <= {d[block] for d in drawn[:10]}


def test_on_a_measured_target_architectures_are_built_and_timed_whole_in_groups(tmp_path, resnet_supernet_oracle):
    from deploy.tvm_measure import Device, MeasureSettings
    from deploy.whole_network import measured_whole_networks

    table = make_cost_table("host", tmp_path / "m.sqlite")
    timer = functools.partial(measured_whole_networks, table=table, target="host", device=Device(),
                              settings=MeasureSettings(repeats=5, min_repeat_ms=0), rounds=3, in_network=True)
    pricer = ArchitecturePricer(RESNET, table, resnet_supernet_oracle, "fp32", input_size=32, whole_network=timer, group_size=2)
    smallest = (0.5, 0.0, 0.5, 0.0, 0.5, 0.0, 0.5, 0.0)  # quick builds
    wider = (0.5, 0.0, 0.5, 0.0, 0.5, 0.0, 0.75, 0.0)
    first, second, third = pricer.price([smallest, wider, smallest[:6] + (0.5, 0.5)])
    assert pricer.latency_provenance.startswith("measured:") and pricer.latency_provenance.endswith(":whole-network")
    assert first.group == second.group is not None and third.group is None  # the last was timed alone
    rows = [json.loads(r[0]) for r in table.db._conn.execute("SELECT measurement FROM networks").fetchall()]
    assert len(rows) == 3 and sorted(r["median_ms"] for r in rows) == sorted(p.latency_ms for p in (first, second, third))
    assert all(r["rounds"] == 3 and r["repeats"] == 15 for r in rows)
    # per block, the kernels timed alone: every kept block has some, a dropped block none
    assert all(ms > 0 for ms in first.block_latency_ms[::2]) and not any(first.block_latency_ms[1::2])
    # both in milliseconds (a unit slip is 1000x); nearer than that, the ratio is whatever else the machine
    # ran meanwhile: under the suite's two workers, the whole network once took 5.8x its blocks' kernels
    assert 1 / 50 < sum(first.block_latency_ms) / first.latency_ms < 50
    # per block, its time inside the network as timed: the same blocks, and less than the whole (stem and head are outside)
    assert all(ms > 0 for ms in first.block_in_network_ms[::2]) and not any(first.block_in_network_ms[1::2])
    assert 0 < sum(first.block_in_network_ms) < first.latency_ms
    assert all(p.block_in_network_ms for p in (first, second, third))
    assert pricer(smallest) == first and len(rows) == 3  # read back, not rebuilt
    assert len(table.db._conn.execute("SELECT * FROM networks").fetchall()) == 3
    with pytest.raises(ValueError, match="a group of 0 architectures"):
        ArchitecturePricer(RESNET, table, resnet_supernet_oracle, "fp32", input_size=32, whole_network=timer, group_size=0)
