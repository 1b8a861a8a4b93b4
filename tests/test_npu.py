"""NPUs simulated with ZigZag: numbers equal ZigZag's own, cached in the database, YAML hardware, masking."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import yaml

from deploy.cost import ChoiceRejected, Cost
from deploy.deployment import evaluate
from deploy.optimum import best_choices
from deploy.flow_optimizer import best_dataflows
from deploy.npu_backend import ZigZagBackend
from deploy.npu_hardware import PRESET_DIR, NpuSpecError, load_npu_spec, load_preset, preset_names, write_npu_spec
from deploy.targets import NpuTarget, get_target
from deploy.zigzag_sim import ZIGZAG_VERSION, SimulationSettings, simulate, zigzag_inputs
from envs.make import make_cost_table, make_deployment_env
from envs.network import Layer, Network, Op
from envs.space import Choice, NpuDataflow

QUICK = SimulationSettings(lpf_limit=4)


@pytest.fixture
def closing():
    """Closes every backend (its ZigZag worker processes) handed to it, when the test ends."""
    backends = []
    yield backends.append
    for backend in backends:
        backend.close()


def preset_yaml(name: str = "npu-eyeriss") -> dict:
    return yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text())


def write_yaml(path, data: dict):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def direct(choice: str) -> Choice:
    quant, flow = choice.split(" ")
    return Choice(quant, "direct", NpuDataflow.parse(flow))


# ---- the numbers are ZigZag's -------------------------------------------------------------------
def test_simulated_costs_are_exactly_what_zigzag_reports(tiny, tmp_path, closing):
    from zigzag.api import get_hardware_performance_zigzag

    spec = load_preset("npu-eyeriss")
    layers = {layer.name: layer for layer in tiny.searchable_layers}
    cases = [(layers["stem"], direct("int8 rs:stationary")), (layers["dw"], direct("fp16 ws:auto")),
             (layers["pw"], direct("int8 os_ch:auto"))]
    backend = ZigZagBackend(spec, QUICK)
    closing(backend)
    costs = backend.price_many(cases)
    assert backend.simulations == len(cases)
    for i, ((layer, choice), cost) in enumerate(zip(cases, costs)):
        assert isinstance(cost, Cost), cost
        work, accelerator, mapping = zigzag_inputs(layer, choice, spec)
        acc_path = write_yaml(tmp_path / f"acc{i}.yaml", accelerator)
        map_path = tmp_path / f"map{i}.yaml"
        map_path.write_text(yaml.safe_dump(mapping, sort_keys=False))
        energy_pj, cycles, _ = get_hardware_performance_zigzag(
            work, str(acc_path), str(map_path), opt="latency", dump_folder=str(tmp_path / f"out{i}"),
            lpf_limit=4, loma_show_progress_bar=False,
        )
        assert cost.latency_ms == pytest.approx(cycles / (spec.clock_mhz * 1e3), rel=1e-9)
        assert cost.energy_mj == pytest.approx(energy_pj * 1e-9, rel=1e-9)
        assert cost.provenance == f"simulated:zigzag@{ZIGZAG_VERSION}"
        assert backend.cycles(cost) == pytest.approx(cycles, rel=1e-9)
        assert backend.utilization(layer, cost) == pytest.approx(layer.macs / (spec.rows * spec.cols * cycles), rel=1e-9)


def test_simulations_are_cached_in_the_database_and_never_rerun(tiny, tmp_path, closing):
    db = tmp_path / "m.sqlite"
    first = make_cost_table("npu-eyeriss", db, settings=QUICK)
    closing(first.backend)
    space = first.space
    pairs = [(layer, c) for layer in tiny.searchable_layers[:3] for c in (space.baseline_choice(), direct("fp16 os:auto"))]
    assert first.prefetch(pairs + pairs[:2]) == []  # duplicates simulated once
    assert first.backend.simulations == len(pairs)
    priced = [first.cost(layer, c) for layer, c in pairs]
    assert [first.cost(layer, c) for layer, c in pairs] == priced
    assert first.backend.simulations == len(pairs)  # cost() read what prefetch stored
    extra = (tiny.searchable_layers[3], direct("int8 ws:auto"))  # one cost() not prefetched: simulated once
    priced_extra = first.cost(*extra)
    assert first.cost(*extra) == priced_extra and first.backend.simulations == len(pairs) + 1

    again = make_cost_table("npu-eyeriss", db, settings=QUICK)
    closing(again.backend)
    assert again.fingerprint == first.fingerprint
    assert [again.cost(layer, c) for layer, c in pairs] == priced
    assert again.cost(*extra) == priced_extra
    assert again.backend.simulations == 0


def test_zigzag_writes_nothing_to_the_working_directory(tiny, tmp_path, monkeypatch, closing):
    monkeypatch.chdir(tmp_path)
    spec = load_preset("npu-tpu")
    layer, choice = tiny.searchable_layers[2], direct("int8 os_ch:stationary")
    result = simulate(layer.to_dict(), choice.to_dict(), spec.to_dict(), {"lpf_limit": 4})  # in this process
    assert result["cycles"] > 0
    backend = ZigZagBackend(spec, QUICK)  # its workers start here, in tmp_path
    closing(backend)
    assert isinstance(backend.price_many([(layer, direct("fp16 rs:auto"))])[0], Cost)
    assert list(tmp_path.iterdir()) == []


# ---- hardware described in YAML ------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d.pop("global_buffer"), "global_buffer"),
        (lambda d: d["array"].pop("rows"), "array.rows"),
        (lambda d: d["pe_buffers"]["outputs"].pop("bits_per_cycle"), "pe_buffers.outputs.bits_per_cycle"),
        (lambda d: d["array"].update(rows=0), "array.rows"),
        (lambda d: d["array"].update(cols=5000), "array.cols"),
        (lambda d: d.update(dataflow="xy:stationary"), "dataflow"),
        (lambda d: d.update(dataflow="rs"), "dataflow"),
        (lambda d: d.update(clock_mhz=-1), "clock_mhz"),
    ],
)
def test_a_wrong_hardware_yaml_is_an_error_naming_the_field(tmp_path, edit, field):
    data = preset_yaml()
    edit(data)
    path = write_yaml(tmp_path / "bad.yaml", data)
    with pytest.raises(NpuSpecError) as err:
        load_npu_spec(path)
    assert str(err.value).startswith(f"{path}: ") and field in str(err.value)
    with pytest.raises(NpuSpecError, match=re.escape(field)):
        get_target(str(path))


def test_a_hardware_file_that_is_not_text_is_an_error_naming_it(tmp_path):
    path = tmp_path / "garbage.yaml"
    path.write_bytes(b"\xaa\xbb\x00 not yaml")
    with pytest.raises(NpuSpecError, match=rf"^{re.escape(str(path))}: not a text file \(byte 0 is not UTF-8\)"):
        load_npu_spec(path)


def test_any_npu_yaml_file_is_a_target(tmp_path):
    data = preset_yaml("npu-nvdla")
    data["name"] = "my-npu"
    path = write_yaml(tmp_path / "my-npu.yaml", data)
    target = get_target(str(path))
    assert isinstance(target, NpuTarget) and target.name == "my-npu"
    assert target.spec.hardware == load_preset("npu-nvdla").hardware
    space = target.search_space()
    assert {q for q, _ in space.quant_algos} == {"int8", "fp16"}
    assert space.baseline_choice() == direct("int8 ws:stationary")
    assert len(space.dataflows) == 8


def test_a_written_npu_description_reads_back_equal(tmp_path):
    spec = replace(load_preset("npu-eyeriss"), name="npu-32x14", rows=32, cols=14, dataflow="ws:auto")
    path = write_npu_spec(spec, tmp_path / "npu-32x14.yaml")
    assert load_npu_spec(path) == spec
    target = get_target(str(path))
    assert target.spec.hardware["array"] == {"rows": 32, "cols": 14}
    assert target.search_space().baseline_choice() == direct("int8 ws:auto")


def test_the_shipped_32x32_npu_is_the_presets_hardware_with_a_larger_array():
    big = load_npu_spec(PRESET_DIR.parents[2] / "benchmarks" / "npu-32x32.yaml")
    assert big.hardware == replace(load_preset("npu-eyeriss"), rows=32, cols=32).hardware


def test_the_presets_are_the_same_hardware_with_their_own_dataflow():
    assert preset_names() == ["npu-eyeriss", "npu-nvdla", "npu-tpu"]
    specs = {name: load_preset(name) for name in preset_names()}
    assert specs["npu-eyeriss"].hardware == specs["npu-nvdla"].hardware == specs["npu-tpu"].hardware
    assert {name: spec.fixed_dataflow.spatial for name, spec in specs.items()} == {
        "npu-eyeriss": "rs", "npu-nvdla": "ws", "npu-tpu": "os_ch"}
    assert all(spec.fixed_dataflow.temporal == "stationary" for spec in specs.values())
    assert {get_target(name).search_space().baseline_choice().dataflow for name in specs} == {
        spec.fixed_dataflow for spec in specs.values()}


# ---- a layer ZigZag cannot map -------------------------------------------------------------------
def fp16_unmappable_yaml(tmp_path):
    """The shared NPU with 2-byte, 16-bit output registers: an int8 partial sum (16 bits) fits, fp16's (32) does not."""
    data = preset_yaml("npu-nvdla")
    data["name"] = "npu-narrow-psum"
    data["pe_buffers"]["outputs"].update(bytes=2, bits_per_cycle=16)
    return write_yaml(tmp_path / "narrow.yaml", data)


def test_an_unmappable_layer_is_masked_and_the_run_goes_on(tiny, tiny_oracle, tmp_path, closing):
    path = str(fp16_unmappable_yaml(tmp_path))
    stem = tiny.searchable_layers[0]
    backend = ZigZagBackend(load_npu_spec(path), QUICK)
    closing(backend)
    fp16, int8 = direct("fp16 ws:stationary"), direct("int8 ws:stationary")
    rejected, priced = backend.price_many([(stem, fp16), (stem, int8)])
    assert isinstance(rejected, ChoiceRejected) and "UnmappableLayer" in str(rejected)
    assert isinstance(priced, Cost)
    assert isinstance(backend.price_many([(stem, fp16)])[0], ChoiceRejected)
    assert backend.simulations == 2  # the rejection is remembered, not simulated again

    costs = make_cost_table(path, tmp_path / "m.sqlite", settings=QUICK)
    closing(costs.backend)
    env = make_deployment_env(tiny, path, mode="tradeoff", accuracy=tiny_oracle, costs=costs)
    space = env.space
    action = space.encode(fp16)
    entry = env._offsets[1] + action[1]
    # a new NPU environment simulates every choice up front: the rejections are masked from the start
    assert "no valid mapping" in costs.rejected(tiny.searchable_layers[0])[fp16.key]
    env.reset()
    masks = env.action_masks()
    assert not masks[entry]
    assert masks[env._offsets[1] + space.encode(int8)[1]]
    _, reward, terminated, _, info = env.step(action)
    assert terminated and reward == -100.0 and "is masked" in info["invalid_action"]
    env.reset()

    # a later run reads the rejections from the database: nothing is simulated again
    again = make_cost_table(path, tmp_path / "m.sqlite", settings=QUICK)
    closing(again.backend)
    later = make_deployment_env(tiny, path, mode="tradeoff", accuracy=tiny_oracle, costs=again)
    with pytest.raises(ChoiceRejected, match="no valid mapping"):
        again.cost(tiny.searchable_layers[0], fp16)
    assert again.backend.simulations == 0 and not later.action_masks()[entry]

    info = {}
    for layer in tiny.searchable_layers:
        _, _, terminated, _, info = env.step(space.encode(int8))
    assert terminated and "measurement_error" not in info
    assert info["latency_ms"] > 0 and "simulated:zigzag" in info["latency_provenance"]
    assert all(c["quant"] == "int8" for c in info["choices"].values())


class ConstantAccuracy:
    """An accuracy oracle for a network with no trained proxy: every deployment scores 1."""

    provenance = "constant"
    baseline_accuracy = 1.0

    def accuracy(self, precisions) -> float:
        return 1.0


def test_the_fastest_deployment_skips_choices_zigzag_cannot_map(tmp_path, closing):
    layer = Layer("c", Op.CONV, ("input",), (16, 8, 8), (64, 8, 8), (3, 3), (1, 1), (1, 1))
    net = Network("one", (16, 8, 8), (layer,))
    costs = make_cost_table(str(fp16_unmappable_yaml(tmp_path)), settings=QUICK)
    closing(costs.backend)
    rejected = costs.prefetch([(layer, c) for c in costs.space.valid_choices(layer)])
    assert len(rejected) == len(costs.space.dataflows)  # every fp16 choice, no int8 one
    fastest = best_choices(net, costs)
    assert evaluate(net, fastest, costs).latency_ms > 0  # every choice it picked can be priced
    assert fastest["c"].quant == "int8"
    env = make_deployment_env(net, str(fp16_unmappable_yaml(tmp_path)), accuracy=ConstantAccuracy(), costs=costs)
    assert env.reward_config.budget_ms >= evaluate(net, fastest, costs).latency_ms  # the default budget is feasible


# ---- FlowOptimizer -------------------------------------------------------------------------------
def test_flow_optimizer_picks_each_layers_fastest_dataflow(tiny, tiny_oracle, tmp_path, closing):
    costs = make_cost_table("npu-nvdla", tmp_path / "m.sqlite", settings=QUICK)
    closing(costs.backend)
    best = best_dataflows(tiny, costs, "int8", "latency")
    assert [b.layer for b in best] == [layer.name for layer in tiny.searchable_layers]
    for layer, b in zip(tiny.searchable_layers, best):
        latencies = [costs.cost(layer, Choice("int8", "direct", d)).latency_ms for d in costs.space.dataflows]
        assert b.choice.quant == "int8" and b.cost == costs.cost(layer, b.choice)
        assert b.cost.latency_ms == min(latencies)
        assert b.fixed_cost == costs.cost(layer, direct("int8 ws:stationary"))
    assert any(b.choice.dataflow != costs.space.dataflows[0] for b in best)  # not trivially the first

    env = make_deployment_env(tiny, "npu-nvdla", mode="tradeoff", accuracy=tiny_oracle, costs=costs, dataflow="latency")
    flows = env.action_masks()[env._offsets[2]:]
    assert flows.tolist() == env.space.dataflow_mask(0).tolist()
    info = {}
    for layer in tiny.searchable_layers:
        action = np.array([0, env.space.quant_algos.index(("int8", "direct")), 0])
        _, _, terminated, _, info = env.step(action)
    assert terminated
    assert info["choices"] == {b.layer: b.choice.to_dict() for b in best}


def test_fixed_dataflow_mode_keeps_the_npus_own_dataflow_and_simulates_only_it(tiny, tiny_oracle, tmp_path, closing):
    costs = make_cost_table("npu-eyeriss", tmp_path / "m.sqlite", settings=QUICK)
    closing(costs.backend)
    env = make_deployment_env(tiny, "npu-eyeriss", mode="tradeoff", accuracy=tiny_oracle, costs=costs, dataflow="fixed")
    own = costs.space.dataflows.index(NpuDataflow("rs", "stationary"))
    flows = env.action_masks()[env._offsets[2]:]
    assert flows.tolist() == env.space.dataflow_mask(own).tolist() and flows.sum() == 1
    simulated = costs.backend.simulations
    stored = [key for _, key, _ in costs.db.export_rows(costs.fingerprint)]
    assert simulated > 0 and stored and all(key.endswith("/npu:rs:stationary") for key in stored)
    _, info = env.replay({l.name: direct("fp16 ws:auto") for l in tiny.searchable_layers})
    assert {c["dataflow"]["spatial"] for c in info["choices"].values()} == {"rs"}
    assert costs.backend.simulations == simulated  # nothing outside its own dataflow was simulated


def test_the_fingerprint_changes_with_what_changes_a_number_only():
    spec = load_preset("npu-eyeriss")
    base = ZigZagBackend(spec, SimulationSettings(lpf_limit=4))
    assert ZigZagBackend(spec, SimulationSettings(lpf_limit=4, timeout_s=5, retries=3)).fingerprint() == base.fingerprint()
    assert ZigZagBackend(spec, SimulationSettings(lpf_limit=6)).fingerprint() != base.fingerprint()
    assert ZigZagBackend(spec, SimulationSettings(optimize="energy")).fingerprint() != base.fingerprint()
    assert base.fingerprint().startswith(f"simulated:zigzag@{ZIGZAG_VERSION}:npu-eyeriss:")


def test_flow_optimizer_command_prints_and_exports_each_layers_best_dataflow(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments" / "flow_optimizer.py"
    out = tmp_path / "best.json"
    result = subprocess.run(
        [sys.executable, str(script), "--target", "npu-tpu", "--net", "mobilenet_v2_32", "--logdir", str(tmp_path),
         "--out", str(out), "--zigzag-lpf", "2"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads(out.read_text())
    layers = doc["flow_optimizer"]["layers"]
    assert len(layers) == 53 and doc["flow_optimizer"]["criterion"] == "latency"
    assert all(l["latency_ms"] <= l["fixed_dataflow_latency_ms"] for l in layers)  # never worse than the fixed one
    assert all(l["cycles"] > 0 and 0 < l["utilization"] <= 1 for l in layers)
    assert doc["baseline"]["choice"]["dataflow"] == {"spatial": "os_ch", "temporal": "stationary"}  # the TPU's own
    assert doc["totals"]["latency_ms"] <= doc["baseline"]["latency_ms"]
    for l in layers:  # the table names every layer and its best dataflow
        assert re.search(rf"^{re.escape(l['layer'])}\s+npu:{l['dataflow']['spatial']}:{l['dataflow']['temporal']}\s",
                         result.stdout, re.M)
    assert "network:" in result.stdout and not (tmp_path / "outputs").exists()
