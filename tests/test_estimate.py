"""The public latency estimate: any network, a given or the best deployment, and it says it is modelled."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.deployment import evaluate, uniform_choices
from deploy.optimum import best_choices
from deploy.estimate import estimate_latency
from envs import zoo
from tests.test_torch_import import SmallNet, TorchMobileNetV2

ROOT = Path(__file__).resolve().parents[1]


def test_best_deployment_of_a_builtin_matches_the_dp_and_says_modelled(a72_table, mobilenet_v2):
    estimate = estimate_latency("mobilenet_v2", "cortex-a72")
    expected = evaluate(mobilenet_v2, best_choices(mobilenet_v2, a72_table), a72_table)
    assert estimate.latency_ms == pytest.approx(expected.latency_ms, rel=1e-12)
    assert not estimate.measured
    assert estimate.provenance == ("modelled:cortex-a72-model@2",)
    assert "not measured" in estimate.summary() and "modelled:cortex-a72-model@2" in estimate.summary()
    assert len(estimate.choices) == len(mobilenet_v2.searchable_layers)


def test_given_choices_are_priced_as_given(a72_table, mobilenet_v2):
    baseline = uniform_choices(mobilenet_v2, lambda layer: a72_table.space.baseline_choice())
    estimate = estimate_latency(mobilenet_v2, "cortex-a72", baseline)
    assert estimate.latency_ms == pytest.approx(evaluate(mobilenet_v2, baseline, a72_table).latency_ms, rel=1e-12)
    assert estimate.latency_ms > 2 * estimate_latency(mobilenet_v2).latency_ms


def test_precision_and_thread_constraints(mobilenet_v2):
    fp32_1t = estimate_latency(mobilenet_v2, quant="fp32", threads=1)
    assert {(c.quant, c.dataflow.threads) for c in fp32_1t.choices.values()} == {("fp32", 1)}
    int8_4t = estimate_latency(mobilenet_v2, quant="int8", threads=4)
    assert int8_4t.latency_ms < fp32_1t.latency_ms
    with pytest.raises(ValueError, match=r"threads=3 is not offered by cortex-a72; valid: \[1, 2, 4\]"):
        estimate_latency(mobilenet_v2, threads=3)
    with pytest.raises(ValueError, match="quant 'bf16' is not one of"):
        estimate_latency(mobilenet_v2, quant="bf16")


def test_a_torch_module_is_imported_and_priced():
    imported = estimate_latency(TorchMobileNetV2(10), input_shape=(3, 32, 32))
    builtin = estimate_latency(zoo.mobilenet_v2(32, 10))
    assert imported.latency_ms == pytest.approx(builtin.latency_ms, rel=1e-9)  # same layers, other names
    assert estimate_latency(SmallNet(), input_shape=(3, 32, 32)).latency_ms > 0
    with pytest.raises(ValueError, match=r"needs input_shape=\(C, H, W\)"):
        estimate_latency(SmallNet())


def test_command_line_prints_layers_and_provenance():
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "estimate_latency.py"), "--net", "resnet18", "--quant", "int8"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "layer1.0.conv1" in result.stdout and "int8" in result.stdout
    table = result.stdout.splitlines()[: 1 + len(zoo.get_network("resnet18").layers)]
    assert table[0].startswith("layer") and len({len(line) for line in table}) == 1  # columns line up, long choices too
    assert "resnet18 on cortex-a72" in result.stdout and "not measured: modelled:cortex-a72-model@2" in result.stdout
    bad = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "estimate_latency.py"), "--net", "vgg99"],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "valid names" in bad.stderr and "Traceback" not in bad.stderr


def _write_deployment(path: Path, network, target: str, choices) -> Path:
    from deploy.cost_table import CostTable
    from deploy.export import deployment_dict, write_json
    from deploy.targets import get_target

    tgt = get_target(target)
    table = CostTable(tgt.model(), tgt.search_space())
    cost = evaluate(network, choices, table)
    baseline = tgt.search_space().baseline_choice()
    doc = deployment_dict(network, target, table.fingerprint, dict(choices), cost, None, "none", cost, None, baseline)
    return write_json(path, doc)


def _estimate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "estimate_latency.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_a_deployment_is_priced_on_its_own_target_with_the_simulations_in_the_database(tiny, tmp_path):
    from envs.make import make_cost_table
    from tests.test_npu import QUICK

    choices = estimate_latency(tiny, "npu-eyeriss").choices
    file = _write_deployment(tmp_path / "run" / "deployment.json", tiny, "npu-eyeriss", choices)
    modelled = _estimate("--deployment", str(file))
    assert modelled.returncode == 0, modelled.stderr
    assert "tiny on npu-eyeriss" in modelled.stdout and "simulated:" not in modelled.stdout
    table = make_cost_table("npu-eyeriss", tmp_path / "measurements.sqlite", settings=QUICK)
    first = tiny.searchable_layers[0]
    simulated = table.cost(first, choices[first.name])
    table.backend.close()
    assert simulated.provenance.startswith("simulated:")
    priced = _estimate("--deployment", str(file))  # finds the database beside the run folder
    assert priced.returncode == 0, priced.stderr
    assert simulated.provenance in priced.stdout and "modelled:" in priced.stdout


def test_a_deployment_naming_a_layer_the_network_has_not_is_refused(tiny, tmp_path):
    choices = estimate_latency(tiny, "cortex-a72").choices
    file = _write_deployment(tmp_path / "deployment.json", tiny, "cortex-a72", choices)
    doc = json.loads(file.read_text())
    doc["choices"]["conv9"] = doc["choices"]["stem"]
    file.write_text(json.dumps(doc))
    result = _estimate("--deployment", str(file))
    assert result.returncode == 2 and "['conv9']" in result.stderr and "Traceback" not in result.stderr


def test_output_into_a_closed_pipe_ends_quietly():
    """`estimate_latency.py ... | head -1`: the reader is gone before the table is written; no error."""
    process = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "estimate_latency.py"), "--net", "resnet18"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # long before the script has imported torch and written anything
    assert process.wait(timeout=120) == 141 and process.stderr.read() == ""


def test_a_deployment_missing_a_layer_or_not_text_is_refused_naming_the_file(tiny, tmp_path):
    from deploy.export import DeploymentFileError, load_deployment

    choices = estimate_latency(tiny, "cortex-a72").choices
    file = _write_deployment(tmp_path / "deployment.json", tiny, "cortex-a72", choices)
    doc = json.loads(file.read_text())
    del doc["choices"]["dw"]
    file.write_text(json.dumps(doc))
    with pytest.raises(DeploymentFileError, match=rf"^{re.escape(str(file))}: 'tiny' has no choice for layer\(s\) \['dw'\]"):
        load_deployment(file)
    file.write_bytes(b"\xaa\xbb garbage")
    with pytest.raises(DeploymentFileError, match=rf"^{re.escape(str(file))}: cannot read a deployment file"):
        load_deployment(file)
