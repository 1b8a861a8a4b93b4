"""Whole-network latency: the layer-adaptive correction recovers a planted device from whole networks
only, a cost table applies it layer by layer, and a real host measures a built deployment."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from deploy.build import kernel_symbol
from deploy.cost_table import CostTable
from deploy.deployment import evaluate
from deploy.latency_correction import algorithm_class, correction_document, load_correction
from deploy.targets import get_target
from deploy.whole_network import (NETWORK_INPUT_CALLS, NetworkSample, corrected_sum, cross_validated, deployment_digest, features,
                                  fit_network_correction, in_network_layers, leave_one_network_out, measurement_key, prediction_errors,
                                  sample_deployments)
from envs.network import Op
from envs.zoo import get_network, small_input_variant

TARGET = get_target("cortex-a72")
TABLE = CostTable(TARGET.model(), TARGET.search_space())
NETWORKS = (get_network("mobilenet_v2_32"), small_input_variant("resnet18"))


def _planted_ms(network, choices) -> float:
    """A device on which int8 kernels run 1.6x slower than their table says, depthwise ones 0.7x, pools
    and adds 2x, conversions 1.5x."""
    cost = evaluate(network, choices, TABLE)
    total = 1.5 * cost.conversion_ms
    for part in cost.layers:
        if part.choice is None:
            total += 2.0 * part.latency_ms
        else:
            factor = (1.6 if part.choice.quant == "int8" else 1.0) * (0.7 if network[part.name].op is Op.DEPTHWISE else 1.0)
            total += factor * part.latency_ms
    return total


def _samples(count: int, seed: int) -> list[NetworkSample]:
    out = []
    for network in NETWORKS:
        for choices in sample_deployments(network, TABLE.space, count, seed):
            out.append(NetworkSample(network, choices, evaluate(network, choices, TABLE), _planted_ms(network, choices)))
    return out


def test_sampled_deployments_spread_over_precisions_and_threads():
    network = NETWORKS[0]
    samples = sample_deployments(network, TABLE.space, 30, seed=0)
    assert samples == sample_deployments(network, TABLE.space, 30, seed=0)  # seeded
    assert len({deployment_digest(c) for c in samples}) == 30
    themes = {tuple(sorted({c.quant for c in s.values()})) for s in samples}
    assert {("fp32",), ("int8",), ("fp16",)} <= themes and any(len(t) == 3 for t in themes)
    threads = {tuple(sorted({c.dataflow.threads for c in s.values()})) for s in samples}
    assert (1,) in threads and (4,) in threads and any(len(t) > 1 for t in threads)


def test_fit_recovers_a_planted_device_and_predicts_a_network_it_never_saw():
    samples = _samples(30, seed=0)
    held_out = _samples(10, seed=1)
    correction = fit_network_correction(samples, "planted")
    before = prediction_errors(held_out, None)
    after = prediction_errors(held_out, correction)
    assert before["median_abs_error_percent"] > 5
    assert after["median_abs_error_percent"] < 2
    assert math.exp(correction.log_factors["POINTWISE/int8/im2col"]) == pytest.approx(1.6, rel=0.1)
    assert math.exp(correction.log_factors["DEPTHWISE/fp32/depthwise"]) == pytest.approx(0.7, rel=0.2)
    # Pools and adds are ~0.1% of these networks' modelled latency (the A72 model's fork/join is
    # microseconds): too small a share to recover their planted 2x from totals, and too small for the
    # factor the fit gives them to move any prediction by more than half a percent.
    fixed = math.exp(correction.fixed_log_factor)
    assert all(abs(fixed - 1) * features(s.network, s.priced)["fixed"] < 0.005 * s.priced.latency_ms for s in held_out)
    cv = cross_validated(samples, "planted")
    assert cv["corrected"]["median_abs_error_percent"] < 2 < 5 < cv["uncorrected"]["median_abs_error_percent"]
    lono = leave_one_network_out(samples, "planted")
    assert set(lono) == {n.name for n in NETWORKS}
    # A network fitted without: its ranking of deployments is corrected (its level less so: MobileNetV2
    # has one plain conv, ResNet-18 no depthwise one, so each network's dominant kind is a guess for the other)
    for errors in lono.values():
        assert errors["corrected"]["spearman"] > 0.93 > 0.6 > errors["uncorrected"]["spearman"]  # here 0.50 -> 0.95, 0.51 -> 0.97
        assert errors["corrected"]["max_abs_error_percent"] < errors["uncorrected"]["max_abs_error_percent"]


def test_a_cost_table_with_the_correction_sums_what_the_fit_predicts():
    samples = _samples(12, seed=0)
    correction = fit_network_correction(samples, "planted")
    corrected = CostTable(TARGET.model(), TARGET.search_space(), correction=correction)
    for s in samples[:4] + samples[-4:]:
        got = evaluate(s.network, s.choices, corrected).latency_ms
        assert got == pytest.approx(corrected_sum(correction, s.network, s.priced), rel=1e-9)
    layer = NETWORKS[0].searchable_layers[3]
    choice = TABLE.space.valid_choices(layer)[0]
    assert corrected.cost(layer, choice).provenance.endswith(f"+corrected:{correction.digest}")
    latency = corrected.latency_array(layer)[0][corrected.choices.index(choice)]
    assert latency == pytest.approx(corrected.cost(layer, choice).latency_ms)
    assert algorithm_class(layer, choice) in correction.log_factors  # the fitted kind reaches every algorithm


def test_a_correction_file_is_refused_for_another_target_or_costs(tmp_path):
    correction = fit_network_correction(_samples(6, seed=0), "planted")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(correction_document(correction, "cortex-a72", TABLE.fingerprint)))
    assert load_correction(path, "cortex-a72", TABLE.fingerprint) == correction
    with pytest.raises(ValueError, match="c.json: fitted to target 'cortex-a72'.*this run prices 'host'"):
        load_correction(path, "host", TABLE.fingerprint)
    path.write_text("{}")
    with pytest.raises(ValueError, match="c.json: not a latency correction file"):
        load_correction(path, "cortex-a72", TABLE.fingerprint)


def test_fewer_than_two_networks_cannot_be_left_out():
    with pytest.raises(ValueError, match="at least two networks"):
        leave_one_network_out([s for s in _samples(3, seed=0) if s.network is NETWORKS[0]], "planted")
    with pytest.raises(ValueError, match="no whole-network measurements"):
        fit_network_correction([], "nothing")


def test_a_built_deployment_is_timed_whole_on_this_machine_and_stored(tiny, tmp_path):
    """Real TVM: the tiny network built as one library and timed with time_evaluator; the database keeps it."""
    from deploy.artifact import SeededNumerics
    from deploy.db import MeasurementDB
    from deploy.tvm_measure import Device, MeasureSettings
    from deploy.whole_network import measure_networks

    space = get_target("host").search_space()
    (choices,) = sample_deployments(tiny, space, 1, seed=3)
    (result,) = measure_networks([(tiny, choices, SeededNumerics(tiny))], "host", Device(), MeasureSettings(repeats=3, min_repeat_ms=0),
                                 in_network=True)
    assert result["provenance"] == "measured:local:vm:whole-network" and "group" not in result  # timed alone
    assert result["repeats"] == 3 and 0 < result["iqr_ms"][0] <= result["median_ms"] <= result["iqr_ms"][1] < 100
    # where its time went, from the runtime's calls: every kernel's layer, the image's conversion before them
    inside = result["layers_ms"]
    assert set(inside) == {layer.name for layer in tiny.searchable_layers} | {NETWORK_INPUT_CALLS} and min(inside.values()) > 0
    db = MeasurementDB(tmp_path / "m.sqlite")
    db.put_network("fp", tiny.fingerprint, measurement_key(choices), {n: c.to_dict() for n, c in choices.items()}, result)
    assert db.network_measurement("fp", tiny.fingerprint, measurement_key(choices)) == result
    assert db.network_measurement("fp", tiny.fingerprint, "other") is None
    db.put_network("fp", tiny.fingerprint, measurement_key(choices), {}, {"median_ms": 1.0})  # first writer wins
    assert db.network_measurement("fp", tiny.fingerprint, measurement_key(choices)) == result
    db.put_network("fp", tiny.fingerprint, measurement_key(choices), {}, {"median_ms": 1.0}, replace=True)
    assert db.network_measurement("fp", tiny.fingerprint, measurement_key(choices)) == {"median_ms": 1.0}
    db.put_correction("c.json", "fp", {"schema": "x", "n": 1})
    db.put_correction("c.json", "fp", {"schema": "x", "n": 2})  # a refit replaces it
    assert db.correction("c.json") == ("fp", {"schema": "x", "n": 2}) and db.correction("other") is None


def test_instrumented_runs_become_one_breakdown_scaled_to_the_drift_corrected_latency():
    """Planted runs: each call's median over the runs, scaled so the calls sum to the latency the
    timed runs gave; runs that made different calls are not one network's."""
    from deploy.validation import call_breakdown

    runs = [[("k_a", 1.0), ("fused", 0.2), ("k_b", 3.0)], [("k_a", 1.2), ("fused", 0.1), ("k_b", 2.0)],
            [("k_a", 5.0), ("fused", 0.3), ("k_b", 2.8)]]  # medians 1.2, 0.2, 2.8: 4.2 ms, scaled to 8.4
    assert call_breakdown(runs, 8.4) == [["k_a", pytest.approx(2.4)], ["fused", pytest.approx(0.4)], ["k_b", pytest.approx(5.6)]]
    with pytest.raises(RuntimeError, match="made different calls"):
        call_breakdown(runs[:2] + [[("k_a", 1.0), ("k_b", 3.0)]], 8.4)


def test_a_stored_measurement_without_the_layers_times_is_timed_again_only_when_they_are_asked_for(tiny, tmp_path):
    """Real TVM and SQLite: a deployment timed without per-call times is read back as it is, unless a
    caller needs the layers' times inside the network; then it is timed again and replaces the row."""
    from deploy.tvm_measure import Device, MeasureSettings
    from deploy.whole_network import measured_whole_networks
    from envs.make import make_cost_table

    quick = MeasureSettings(repeats=3, min_repeat_ms=0)
    table = make_cost_table("host", tmp_path / "m.sqlite", settings=quick)
    (choices,) = sample_deployments(tiny, table.space, 1, seed=3)
    (plain,) = measured_whole_networks([(tiny, choices)], table, "host", Device(), quick)
    assert "layers_ms" not in plain
    assert measured_whole_networks([(tiny, choices)], table, "host", Device(), quick) == [plain]  # read back
    (profiled,) = measured_whole_networks([(tiny, choices)], table, "host", Device(), quick, in_network=True)
    assert set(profiled["layers_ms"]) >= {layer.name for layer in tiny.searchable_layers}
    assert table.db.network_measurement(table.fingerprint, tiny.fingerprint, measurement_key(choices)) == profiled  # replaced
    assert measured_whole_networks([(tiny, choices)], table, "host", Device(), quick, in_network=True) == [profiled]
    assert len(table.db._conn.execute("SELECT * FROM networks").fetchall()) == 1
    table.backend.close()


def test_a_network_s_calls_go_to_the_layer_whose_kernel_they_follow(tiny):
    """Planted calls in call order: the fused add and conversions after a kernel are its layer's, the
    image's conversion before the first kernel the input's; a profile without one of the kernels is not
    this network's."""
    calls = [["vm.builtin.alloc_storage", 0.01], ["fused_quantize", 0.02], ["k_stem", 1.0], ["k_dw", 0.5], ["k_pw", 0.25],
             ["fused_dequantize_add_relu_quantize", 0.125], ["k_conv2", 2.0], ["fused_mean", 0.0625], ["k_fc", 0.5]]
    assert in_network_layers(tiny, calls) == pytest.approx(
        {NETWORK_INPUT_CALLS: 0.03, "stem": 1.0, "dw": 0.5, "pw": 0.375, "conv2": 2.0625, "fc": 0.5})
    with pytest.raises(ValueError, match=r"no call of the kernels of \['dw'\]"):
        in_network_layers(tiny, [c for c in calls if c[0] != "k_dw"])
    # a residual block with a shortcut convolution: the add follows the last kernel called, the downsample
    resnet = NETWORKS[1]
    calls = [[kernel_symbol(layer.name), 1.0] for layer in resnet.searchable_layers]
    at = next(i for i, c in enumerate(calls) if c[0] == "k_layer2_0_downsample")
    calls.insert(at + 1, ["fused_dequantize_add_relu_quantize", 0.5])
    inside = in_network_layers(resnet, calls)
    assert inside["layer2.0.downsample"] == 1.5 and inside["layer2.0.conv2"] == 1.0 and NETWORK_INPUT_CALLS not in inside


def test_timing_in_turns_takes_out_what_a_slow_spell_does_to_every_library_of_a_round():
    """Planted timings: two libraries of 10 and 20 ms on a device whose speed swings 2.5x from round to
    round, and in one round the first alone twice as slow. Their corrected latencies keep the 2x between
    them exactly, and sit at the device's average speed."""
    from deploy.validation import drift_corrected

    speed = np.array([1.0, 1.5, 0.8, 2.0, 1.2])
    repeats = np.array([0.99, 1.0, 1.01])
    timings = np.array([[ms * s * repeats for s in speed] for ms in (10.0, 20.0)])  # libraries x rounds x repeats
    first, second = drift_corrected(timings)
    assert second / first == pytest.approx(2.0, rel=1e-12)
    average = float(np.exp(np.log(speed).mean()))
    assert first == pytest.approx(10.0 * average, rel=1e-12) and second == pytest.approx(20.0 * average, rel=1e-12)
    timings[0, 3] *= 2.0  # a spell on the first library alone: outvoted by the other rounds
    spelled = drift_corrected(timings)
    assert spelled[1] / spelled[0] == pytest.approx(2.0, rel=0.06)
    assert np.median(timings[1], axis=1).max() / np.median(timings[0], axis=1).min() > 4  # what raw timings would mix
    (alone,) = drift_corrected(timings[:1, :1])
    assert alone == pytest.approx(10.0, rel=1e-12)  # one library timed once: its median


def test_deployments_timed_together_share_a_group_and_are_timed_in_every_round(tiny):
    """Real TVM: two deployments of the tiny network built and timed in turns on this machine."""
    from deploy.artifact import SeededNumerics
    from deploy.tvm_measure import Device, MeasureSettings
    from deploy.whole_network import measure_networks

    space = get_target("host").search_space()
    deployments = [(tiny, choices, SeededNumerics(tiny)) for choices in sample_deployments(tiny, space, 2, seed=3)]
    first, second = measure_networks(deployments, "host", Device(), MeasureSettings(repeats=3, min_repeat_ms=0), rounds=4)
    assert first["group"] == second["group"] and first["group_size"] == second["group_size"] == 2
    for result in (first, second):
        assert result["rounds"] == 4 and result["repeats"] == 12
        assert 0 < result["median_ms"] < 100 and result["iqr_ms"][0] <= result["iqr_ms"][1]
        assert "layers_ms" not in result  # only when asked for
    (later, _) = measure_networks(deployments, "host", Device(), MeasureSettings(repeats=3, min_repeat_ms=0), rounds=1)
    assert later["group"] != first["group"]  # each timing in turns is a group of its own
    with pytest.raises(ValueError, match="at least one library and one round"):
        measure_networks(deployments, "host", Device(), MeasureSettings(repeats=3, min_repeat_ms=0), rounds=0)


def test_a_paired_measurement_times_the_kernels_again_right_before_the_network(tiny, tmp_path):
    """Real TVM: each kernel is timed again (compiled once: re-timing adds no library) just before the
    whole network; the sum of layers is then priced with those times, the rest as the table prices it."""
    from pathlib import Path

    from deploy.artifact import SeededNumerics
    from deploy.tvm_measure import Device, MeasureSettings
    from deploy.whole_network import measure_paired, priced_as_measured
    from envs.make import make_cost_table

    quick = MeasureSettings(repeats=3, min_repeat_ms=1)
    table = make_cost_table("host", tmp_path / "m.sqlite", settings=quick)
    (choices,) = sample_deployments(tiny, table.space, 1, seed=3)
    table.prefetch([(tiny[n], c) for n, c in choices.items()])
    libraries = set(Path(table.backend.measurer._dir.name).iterdir())
    (measured,) = measure_paired([(tiny, choices, SeededNumerics(tiny))], table, "host", Device(), quick)
    assert set(Path(table.backend.measurer._dir.name).iterdir()) == libraries
    searchable = [layer.name for layer in tiny.searchable_layers]
    assert sorted(measured["kernels_ms"]) == sorted(searchable) and all(v > 0 for v in measured["kernels_ms"].values())
    assert measured["kernel_drift_percent"] >= 0 and measured["median_ms"] > 0
    before, after = evaluate(tiny, choices, table), priced_as_measured(tiny, choices, table, measured)
    fixed = before.latency_ms - sum(part.latency_ms for part in before.layers if part.choice)
    assert after.latency_ms == pytest.approx(fixed + sum(measured["kernels_ms"].values()))
    assert {p.name: p.latency_ms for p in after.layers if p.choice is None} == {p.name: p.latency_ms for p in before.layers if p.choice is None}
    assert priced_as_measured(tiny, choices, table, {"median_ms": 1.0}) == before  # an unpaired measurement: the table's
    table.backend.close()


def test_the_fit_script_refuses_a_target_it_cannot_build(tmp_path):
    from experiments.fit_latency_correction import main

    with pytest.raises(ValueError, match="npu-eyeriss.*not a CPU"):
        main(["--target", "npu-eyeriss", "--logdir", str(tmp_path)])
    with pytest.raises(ValueError, match="runs on its board"):
        main(["--target", "cortex-a72", "--logdir", str(tmp_path)])
    with pytest.raises(ValueError, match="--samples must be at least 1"):
        main(["--samples", "0", "--logdir", str(tmp_path)])
    assert not (tmp_path / "corrections").exists()


def test_a_run_searches_on_corrected_costs_and_the_database_keeps_the_measured_ones(tmp_path):
    from envs.make import make_cost_table

    correction = fit_network_correction(_samples(6, seed=0), "planted")
    path = tmp_path / "a72.json"
    path.write_text(json.dumps(correction_document(correction, "cortex-a72", TABLE.fingerprint)))
    layer = NETWORKS[0].searchable_layers[5]
    choice = next(c for c in TABLE.space.valid_choices(layer) if c.quant == "int8")
    corrected = make_cost_table("cortex-a72", tmp_path / "m.sqlite", correction_file=path)
    plain = make_cost_table("cortex-a72", tmp_path / "m.sqlite")
    assert corrected.cost(layer, choice).latency_ms == pytest.approx(
        plain.cost(layer, choice).latency_ms * correction.factor(layer, choice))
    assert plain.db.get(plain.fingerprint, layer.signature, choice.key).latency_ms == plain.cost(layer, choice).latency_ms
    with pytest.raises(ValueError, match="a72.json: fitted to target 'cortex-a72'"):
        make_cost_table("host", tmp_path / "m.sqlite", correction_file=path)
