"""The measurement database: round trips, first writer wins, concurrency, refusing foreign files, speed."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from deploy.cost import Cost
from deploy.db import SCHEMA_VERSION, DatabaseError, MeasurementDB, enable_wal

FP = "cortex-a72/llvm-17/threads=4"
SIG = "conv3x3_c64_k64_h56_s1_g1_fp32"


def measured(latency_ms: float, repeats: int = 10, energy_mj: float | None = None) -> Cost:
    return Cost(latency_ms, 4096, "measured:rpi4", energy_mj=energy_mj, spread_ms=0.01, repeats=repeats)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- round trips


def test_get_missing_is_none_and_put_get_round_trips(tmp_path: Path) -> None:
    with MeasurementDB(tmp_path / "m.db") as db:
        assert db.get(FP, SIG, "direct") is None
        cost = measured(1.25, energy_mj=0.5)
        db.put(FP, SIG, "direct", cost)
        assert db.get(FP, SIG, "direct") == cost
        assert db.get(FP, SIG, "im2col") is None
        assert db.get("other-target", SIG, "direct") is None


@pytest.mark.parametrize(
    "latency_ms",
    [0.1 + 0.2, 1 / 3, 5e-324, 1.7976931348623157e308, math.nextafter(1.0, 2.0), math.inf, 0.0],
)
def test_floats_round_trip_exactly(latency_ms: float) -> None:
    cost = Cost(latency_ms, 2**40, "modelled:roofline@1", energy_mj=math.pi / 7, spread_ms=2 / 3, repeats=7)
    with MeasurementDB(":memory:") as db:
        db.put(FP, SIG, "c", cost)
        back = db.get(FP, SIG, "c")
    assert back == cost
    assert back is not None and back.latency_ms.hex() == latency_ms.hex()


def test_energy_none_round_trips_as_none() -> None:
    with MeasurementDB(":memory:") as db:
        db.put(FP, SIG, "c", measured(3.0, energy_mj=None))
        back = db.get(FP, SIG, "c")
    assert back is not None and back.energy_mj is None


def test_nan_is_refused_because_sqlite_would_store_null() -> None:
    with MeasurementDB(":memory:") as db:
        with pytest.raises(ValueError, match="energy_mj is NaN"):
            db.put(FP, SIG, "c", measured(1.0, energy_mj=math.nan))
        with pytest.raises(ValueError, match="latency_ms is NaN"):
            db.put_many(FP, [(SIG, "a", measured(1.0)), (SIG, "b", measured(math.nan))])
        assert db.count() == 0  # put_many validates everything before writing anything


def test_first_writer_wins(tmp_path: Path) -> None:
    with MeasurementDB(tmp_path / "m.db") as db:
        db.put(FP, SIG, "direct", measured(1.0))
        db.put(FP, SIG, "direct", measured(2.0, repeats=100))
        db.put_many(FP, [(SIG, "direct", measured(3.0)), (SIG, "im2col", measured(4.0))])
        assert db.get(FP, SIG, "direct") == measured(1.0)
        assert db.get(FP, SIG, "im2col") == measured(4.0)
        assert db.count() == 2


def test_get_layer_returns_exactly_that_layers_choices() -> None:
    with MeasurementDB(":memory:") as db:
        db.put_many(FP, [(SIG, f"c{i}", measured(float(i))) for i in range(5)])
        db.put_many(FP, [("other_layer", "c0", measured(99.0))])
        db.put_many("other-target", [(SIG, "c0", measured(98.0))])
        layer = db.get_layer(FP, SIG)
        assert layer == {f"c{i}": measured(float(i)) for i in range(5)}
        assert db.get_layer(FP, "unknown") == {}


def test_count_fingerprints_and_targets() -> None:
    with MeasurementDB(":memory:") as db:
        db.put_many("b", [(SIG, "x", measured(1.0)), (SIG, "y", measured(1.0))])
        db.put("a", SIG, "x", measured(1.0))
        assert (db.count(), db.count("a"), db.count("b"), db.count("zzz")) == (3, 1, 2, 0)
        assert db.fingerprints() == ["a", "b"]
        description = {"device": "rpi4", "target": "llvm -mcpu=cortex-a72", "threads": 4}
        db.register_target("a", description)
        db.register_target("a", {"device": "something else"})
        assert db.target_description("a") == description
        assert db.target_description("b") is None


def test_reopening_sees_earlier_rows(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with MeasurementDB(path) as db:
        db.put(FP, SIG, "direct", measured(1.5))
        db.register_target(FP, {"device": "rpi4"})
    with MeasurementDB(path) as db:
        assert db.get(FP, SIG, "direct") == measured(1.5)
        assert db.target_description(FP) == {"device": "rpi4"}
        db.put(FP, SIG, "im2col", measured(2.5))
    with MeasurementDB(path) as db:
        assert db.count() == 2


def test_file_uses_wal_and_records_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    MeasurementDB(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    conn.close()


def test_closed_database_refuses_work(tmp_path: Path) -> None:
    with MeasurementDB(tmp_path / "m.db") as db:
        pass
    db.close()  # idempotent
    with pytest.raises(sqlite3.ProgrammingError):
        db.count()


# ---------------------------------------------------------------- export and merge


def test_export_json(tmp_path: Path) -> None:
    with MeasurementDB(tmp_path / "m.db") as db:
        db.put_many(FP, [(SIG, "b", measured(2.0)), (SIG, "a", measured(1.0, energy_mj=None))])
        db.put("other", SIG, "a", measured(3.0))
        db.register_target(FP, {"device": "rpi4"})
        assert db.export_json(tmp_path / "all.json") == 3
        assert db.export_json(tmp_path / "one.json", fingerprint=FP) == 2
    doc = json.loads((tmp_path / "one.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["targets"] == {FP: {"device": "rpi4"}}
    assert [(r["fingerprint"], r["signature"], r["choice"]) for r in doc["costs"]] == [(FP, SIG, "a"), (FP, SIG, "b")]
    assert Cost.from_dict(doc["costs"][0]["cost"]) == measured(1.0, energy_mj=None)
    assert isinstance(doc["costs"][0]["created_at"], float)
    assert len(json.loads((tmp_path / "all.json").read_text())["costs"]) == 3


def test_merge_keeps_existing_rows_unless_the_other_has_more_repeats(tmp_path: Path) -> None:
    with MeasurementDB(tmp_path / "other.db") as other:
        other.put_many(
            FP,
            [
                (SIG, "kept", measured(9.0, repeats=3)),  # fewer repeats than ours: ours kept
                (SIG, "tie", measured(9.0, repeats=5)),  # same repeats: ours kept
                (SIG, "upgraded", measured(7.0, repeats=50)),  # more repeats: replaces ours
                (SIG, "new", measured(6.0)),
            ],
        )
        other.register_target(FP, {"device": "other"})
        other.register_target("t2", {"device": "t2"})
    other_hash = sha256(tmp_path / "other.db")
    with MeasurementDB(tmp_path / "main.db") as db:
        db.put_many(
            FP, [(SIG, c, measured(1.0, repeats=5)) for c in ("kept", "tie", "upgraded")] + [(SIG, "mine", measured(2.0))]
        )
        db.register_target(FP, {"device": "mine"})
        assert db.merge_from(tmp_path / "other.db") == 2
        assert db.get_layer(FP, SIG) == {
            "kept": measured(1.0, repeats=5),
            "tie": measured(1.0, repeats=5),
            "upgraded": measured(7.0, repeats=50),
            "new": measured(6.0),
            "mine": measured(2.0),
        }
        assert db.target_description(FP) == {"device": "mine"}
        assert db.target_description("t2") == {"device": "t2"}
        assert db.merge_from(tmp_path / "other.db") == 0  # idempotent
    assert sha256(tmp_path / "other.db") == other_hash


def test_accuracies_round_trip_first_writer_wins_and_merge(tmp_path: Path) -> None:
    assignment = ("fp32", "int8", "fp16")
    with MeasurementDB(tmp_path / "a.db") as db:
        assert db.accuracies("oracle-1") == {}
        db.put_accuracy("oracle-1", assignment, 0.975, "measured:heldout/digits-32@360")
        db.put_accuracy("oracle-1", assignment, 0.5, "measured:heldout/digits-32@360")  # ignored
        db.put_accuracy("oracle-2", assignment, 0.9, "measured:heldout/digits-32@360")
        assert db.accuracies("oracle-1") == {assignment: 0.975}
    with MeasurementDB(tmp_path / "b.db") as other:
        other.put_accuracy("oracle-1", ("int8",) * 3, 0.96, "measured:heldout/digits-32@360")
        assert other.merge_from(tmp_path / "a.db") == 0  # no cost rows, but the accuracies come along
        assert other.accuracies("oracle-1") == {assignment: 0.975, ("int8",) * 3: 0.96}
        assert other.accuracies("oracle-2") == {assignment: 0.9}


def test_rejections_round_trip_first_writer_wins_and_merge(tmp_path: Path) -> None:
    with MeasurementDB(tmp_path / "other.db") as other:
        other.put_rejection(FP, SIG, "fp16-choice", "no valid mapping")
        other.put_rejection(FP, SIG, "fp16-choice", "a later reason")  # first writer wins
        other.put_rejection(FP, "other-layer", "c", "wrong numbers")
        assert other.rejections(FP, SIG) == {"fp16-choice": "no valid mapping"}
        assert other.rejections("another-target", SIG) == {}
    with MeasurementDB(tmp_path / "main.db") as db:
        db.merge_from(tmp_path / "other.db")
        assert db.rejections(FP, SIG) == {"fp16-choice": "no valid mapping"}
        assert db.rejections(FP, "other-layer") == {"c": "wrong numbers"}


def test_merge_from_foreign_or_missing_file_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    before = sha256(garbage)
    with MeasurementDB(tmp_path / "m.db") as db:
        with pytest.raises(DatabaseError, match="not a DeployGym"):
            db.merge_from(garbage)
        with pytest.raises(DatabaseError, match="no such file"):
            db.merge_from(tmp_path / "absent.db")
    assert sha256(garbage) == before


# ---------------------------------------------------------------- refusing files that are not ours


def _foreign_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE foo (x INTEGER)")
    conn.execute("INSERT INTO foo VALUES (42)")
    conn.commit()
    conn.close()


def _meta_only_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.write_bytes(os.urandom(4096)), id="random-bytes"),
        pytest.param(lambda p: p.write_text("latency_ms,choice\n1.0,direct\n"), id="text"),
        pytest.param(lambda p: p.write_bytes(b"SQLite format 3\x00" + os.urandom(4080)), id="corrupt-sqlite"),
        # a header that says WAL (read and write versions 2): SQLite opens -wal and -shm files even read-only
        pytest.param(lambda p: p.write_bytes(b"SQLite format 3\x00\x10\x00\x02\x02" + os.urandom(4076)), id="corrupt-wal-header"),
        pytest.param(_foreign_sqlite, id="other-schema"),
        pytest.param(_meta_only_sqlite, id="meta-only"),
    ],
)
def test_foreign_file_is_refused_and_left_unchanged(tmp_path: Path, make: Callable[[Path], object]) -> None:
    path = tmp_path / "m.db"
    make(path)
    before = sha256(path)
    with pytest.raises(DatabaseError) as err:
        MeasurementDB(path)
    assert str(path) in str(err.value) and "not a DeployGym measurement database" in str(err.value)
    assert sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.db"]  # no -wal / -journal left behind


def test_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a_dir"
    path.mkdir()
    with pytest.raises(DatabaseError, match="is a directory, not a DeployGym measurement database") as err:
        MeasurementDB(path)
    assert str(path) in str(err.value)
    assert list(path.iterdir()) == []


def test_newer_schema_version_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with MeasurementDB(path) as db:
        db.put(FP, SIG, "direct", measured(1.0))
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    before = sha256(path)
    with pytest.raises(DatabaseError, match=f"schema_version {SCHEMA_VERSION + 1} is newer") as err:
        MeasurementDB(path)
    assert str(path) in str(err.value)
    assert sha256(path) == before


def test_empty_file_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    path.touch()
    with MeasurementDB(path) as db:
        db.put(FP, SIG, "direct", measured(1.0))
        assert db.count() == 1


def test_missing_parent_directory_is_an_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "m.db"
    with pytest.raises(DatabaseError, match="cannot create") as err:
        MeasurementDB(path)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------- several processes at once

def test_switching_to_wal_waits_for_another_writer(tmp_path: Path) -> None:
    """SQLite refuses `journal_mode = WAL` at once while another connection holds a write lock (a
    process creating the schema of a database opened by several at once): the switch waits instead."""
    path = str(tmp_path / "new.db")
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # a timer thread commits
    writer.execute("BEGIN IMMEDIATE")
    reader = sqlite3.connect(path, isolation_level=None, timeout=5)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        reader.execute("PRAGMA journal_mode = WAL")  # what a plain open met
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        enable_wal(reader, timeout_s=0.2)  # the lock outlives the wait
    release = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    release.start()
    start = time.monotonic()
    enable_wal(reader)
    release.join()
    assert time.monotonic() - start >= 0.25
    assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)


N_WORKERS, ROWS_PER_WORKER, STRIDE = 4, 500, 250
"""Worker w writes keys [w*STRIDE, w*STRIDE + ROWS_PER_WORKER): each overlaps its neighbours by 250."""


def _worker(path: str, worker: int, barrier) -> None:
    barrier.wait()
    with MeasurementDB(path) as db:  # opened concurrently too: first open creates the file
        keys = range(worker * STRIDE, worker * STRIDE + ROWS_PER_WORKER)
        for i, k in enumerate(keys):
            cost = Cost(float(k), k, f"measured:w{worker}", repeats=worker + 1)
            if i % 2:
                db.put(FP, f"layer{k % 7}", f"choice{k}", cost)
            else:
                db.put_many(FP, [(f"layer{k % 7}", f"choice{k}", cost)])


def test_concurrent_processes_write_each_key_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(N_WORKERS)
    procs = [ctx.Process(target=_worker, args=(str(path), w, barrier)) for w in range(N_WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * N_WORKERS

    n_keys = (N_WORKERS - 1) * STRIDE + ROWS_PER_WORKER
    with MeasurementDB(path) as db:
        assert db.count() == n_keys == 1250
        layers = [db.get_layer(FP, f"layer{layer}") for layer in range(7)]
    stored = {choice: cost for layer in layers for choice, cost in layer.items()}
    assert set(stored) == {f"choice{k}" for k in range(n_keys)}
    for k in range(n_keys):
        cost = stored[f"choice{k}"]
        writer = cost.repeats - 1
        assert writer * STRIDE <= k < writer * STRIDE + ROWS_PER_WORKER  # written by a worker that owns k
        assert cost == Cost(float(k), k, f"measured:w{writer}", repeats=writer + 1)


# ---------------------------------------------------------------- speed


def test_put_many_10k_rows_under_a_second_and_get_layer_fast(tmp_path: Path) -> None:
    with MeasurementDB(tmp_path / "m.db") as db:
        rows = [(f"layer{i // 1000}", f"choice{i % 1000}", measured(i / 7)) for i in range(10_000)]
        t0 = time.perf_counter()
        db.put_many(FP, rows)
        put_s = time.perf_counter() - t0
        assert db.count() == 10_000

        t0 = time.perf_counter()
        layer = db.get_layer(FP, "layer3")
        get_s = time.perf_counter() - t0
        assert len(layer) == 1000 and layer["choice5"] == measured(3005 / 7)
    print(f"put_many 10k: {put_s * 1e3:.1f} ms; get_layer 1k: {get_s * 1e3:.2f} ms")
    assert put_s < 1.0
    assert get_s < 0.1


def test_merge_for_a_target_refuses_a_file_with_another_targets_costs(tmp_path: Path) -> None:
    with MeasurementDB(tmp_path / "pi.db") as pi:
        pi.register_target("fp-a72", {"target": "cortex-a72"})
        pi.put("fp-a72", SIG, "a", measured(3.0))
    with MeasurementDB(tmp_path / "mixed.db") as mixed:
        mixed.register_target("fp-a72", {"target": "cortex-a72"})
        mixed.register_target("fp-host", {"target": "host"})
        mixed.put("fp-a72", SIG, "b", measured(4.0))
        mixed.put("fp-host", SIG, "b", measured(1.0))
    before = sha256(tmp_path / "mixed.db")
    with MeasurementDB(tmp_path / "main.db") as db:
        with pytest.raises(DatabaseError, match=r"holds measurements of target\(s\) \['host'\], not 'cortex-a72'; refused"):
            db.merge_from(tmp_path / "mixed.db", target="cortex-a72")
        assert db.count() == 0  # nothing merged
        assert db.merge_from(tmp_path / "pi.db", target="cortex-a72") == 1
        assert db.fingerprints_of("cortex-a72") == ["fp-a72"] and db.fingerprints_of("host") == []
        assert db.export_json(tmp_path / "a72.json", db.fingerprints_of("cortex-a72")) == 1
    assert sha256(tmp_path / "mixed.db") == before
