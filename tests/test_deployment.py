"""Network-level assembly: conversions, the best per-layer deployment, incremental pricing."""

from __future__ import annotations

import pytest

from deploy.cost_table import CostTable
from deploy.db import MeasurementDB
from deploy.deployment import Assembler, evaluate, uniform_choices
from deploy.optimum import best_choices
from envs.space import Choice, CpuSchedule


def test_totals_are_the_sum_of_layers_and_conversions(tiny, a72_table):
    choices = uniform_choices(tiny, lambda l: a72_table.space.valid_choices(l)[0])
    result = evaluate(tiny, choices, a72_table)
    assert [l.name for l in result.layers] == [l.name for l in tiny.layers]
    summed = sum(l.latency_ms + l.conversion_ms for l in result.layers)
    # plus the final conversion of the logits to fp32 NCHW
    assert result.latency_ms == pytest.approx(summed, rel=1e-9) or result.latency_ms > summed
    assert result.conversion_ms >= sum(l.conversion_ms for l in result.layers)
    assert result.provenance == ("modelled:cortex-a72-model@2",)


def test_mixed_precision_pays_conversions(tiny, a72_table):
    sched = CpuSchedule(threads=1)
    same = uniform_choices(tiny, lambda l: Choice("fp32", "direct", sched))
    alternating = {name: Choice("int8" if i % 2 else "fp32", "direct", sched) for i, name in enumerate(same)}
    assert evaluate(tiny, same, a72_table).conversion_ms < evaluate(tiny, alternating, a72_table).conversion_ms


def test_incremental_assembly_equals_evaluate(mobilenet_v2, a72_table):
    choices = best_choices(mobilenet_v2, a72_table)
    assembler = Assembler(mobilenet_v2, a72_table)
    added = sum(assembler.add(choices[l.name]) for l in mobilenet_v2.searchable_layers)
    whole = evaluate(mobilenet_v2, choices, a72_table)
    assert added == pytest.approx(whole.latency_ms)
    assert assembler.result().latency_ms == pytest.approx(whole.latency_ms)


def test_best_deployment_beats_every_uniform_one_and_the_baseline(mobilenet_v2, a72_table):
    space = a72_table.space
    best = evaluate(mobilenet_v2, best_choices(mobilenet_v2, a72_table), a72_table).latency_ms
    baseline = evaluate(mobilenet_v2, uniform_choices(mobilenet_v2, lambda l: space.baseline_choice()), a72_table)
    assert best < baseline.latency_ms / 2
    for quant in ("fp32", "fp16", "int8"):
        constrained = best_choices(mobilenet_v2, a72_table, lambda c, q=quant: c.quant == q)
        assert {c.quant for c in constrained.values()} == {quant}
        assert evaluate(mobilenet_v2, constrained, a72_table).latency_ms >= best - 1e-9


def test_missing_or_invalid_choices_are_refused(tiny, a72_table):
    with pytest.raises(ValueError, match="no choice for layer"):
        evaluate(tiny, {}, a72_table)
    choices = uniform_choices(tiny, lambda l: a72_table.space.baseline_choice())
    choices["dw"] = Choice("fp32", "winograd_f2", CpuSchedule())
    with pytest.raises(ValueError, match="Winograd needs a dense"):
        evaluate(tiny, choices, a72_table)


def test_costs_land_in_the_database_and_a_warm_table_never_recomputes(tiny, a72, a72_space, tmp_path):
    db_path = tmp_path / "m.sqlite"
    cold = CostTable(a72.backend(), a72_space, MeasurementDB(db_path))
    choices = best_choices(tiny, cold)
    first = evaluate(tiny, choices, cold).latency_ms
    assert cold.backend_calls == len(tiny.searchable_layers)
    stored = MeasurementDB(db_path).count(cold.fingerprint)
    assert stored == sum(len(a72_space.valid_choices(l)) for l in tiny.searchable_layers)
    warm = CostTable(a72.backend(), a72_space, MeasurementDB(db_path))
    assert evaluate(tiny, best_choices(tiny, warm), warm).latency_ms == first
    assert warm.backend_calls == 0


def test_without_a_board_earlier_measurements_of_the_target_are_used_before_the_model(tmp_path, mobilenet_v2):
    from deploy.cost import Cost
    from envs.make import make_cost_table

    layer = mobilenet_v2.searchable_layers[0]
    db_path = tmp_path / "m.sqlite"
    with MeasurementDB(db_path) as db:  # what a run on a board left behind
        db.register_target("measured:rpc:pi4:9090:abc", {"target": "cortex-a72"})
        db.register_target("measured:local:x86:def", {"target": "host"})
        board = Cost(3.25, 1000, "measured:rpc:pi4:9090", None, 0.02, 10)
        chosen = make_cost_table("cortex-a72").space.baseline_choice()
        db.put("measured:rpc:pi4:9090:abc", layer.signature, chosen.key, board)
        db.put("measured:local:x86:def", mobilenet_v2.searchable_layers[1].signature, chosen.key, board)
    table = make_cost_table("cortex-a72", db_path)
    assert table.measured == ("measured:rpc:pi4:9090:abc",)  # this target's measurements only
    assert table.cost(layer, chosen) == board
    other = table.space.valid_choices(layer)[0]
    assert other != chosen and table.cost(layer, other).provenance == "modelled:cortex-a72-model@2"
    baseline = evaluate(mobilenet_v2, uniform_choices(mobilenet_v2, lambda l: chosen), table)
    assert baseline.provenance == ("measured:rpc:pi4:9090", "modelled:cortex-a72-model@2")
    assert baseline.layers[0].latency_ms == 3.25
