"""The measurement database: every `Cost` lands here first, and a hit is never recomputed.

A SQLite file keyed by (target fingerprint, layer signature, choice key), all plain strings from callers;
beside the costs, the choices a backend rejected for good (with the reason), the measured
accuracies of precision assignments, keyed by the accuracy oracle, whole deployments measured as one
network (keyed by device fingerprint, network fingerprint and deployment digest), and the latency
corrections fitted to them, with their provenance.
One file is shared across runs and by concurrent worker processes: WAL journal, a 30 s busy timeout,
short `BEGIN IMMEDIATE` transactions, and first-writer-wins inserts, so a measurement is never
silently replaced (only `merge_from` upgrades a row, and only with one of more repeats).
A file that is not a DeployGym database of this schema is refused with `DatabaseError` before
anything is written to it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from deploy.cost import Cost

SCHEMA_VERSION = 1
"""Bumped on any incompatible change of the tables below; newer files are refused."""
BUSY_TIMEOUT_S = 30.0
"""How long a connection waits for another process's write lock before giving up."""

_KEY = ("fingerprint", "signature", "choice")
_VALUES = ("latency_ms", "spread_ms", "repeats", "memory_bytes", "energy_mj", "provenance")
_COLUMNS = ", ".join(_KEY + _VALUES + ("created_at",))
_PLACEHOLDERS = ", ".join("?" * (len(_KEY) + len(_VALUES) + 1))
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS targets (fingerprint TEXT PRIMARY KEY, description TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS costs (
    fingerprint TEXT NOT NULL, signature TEXT NOT NULL, choice TEXT NOT NULL,
    latency_ms REAL NOT NULL, spread_ms REAL NOT NULL, repeats INTEGER NOT NULL,
    memory_bytes INTEGER NOT NULL, energy_mj REAL, provenance TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (fingerprint, signature, choice)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejections (
    fingerprint TEXT NOT NULL, signature TEXT NOT NULL, choice TEXT NOT NULL, reason TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (fingerprint, signature, choice)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accuracies (
    oracle TEXT NOT NULL, assignment TEXT NOT NULL, accuracy REAL NOT NULL, provenance TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (oracle, assignment)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS networks (
    fingerprint TEXT NOT NULL, network TEXT NOT NULL, deployment TEXT NOT NULL, choices TEXT NOT NULL,
    measurement TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (fingerprint, network, deployment)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS corrections (
    name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, document TEXT NOT NULL, created_at REAL NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
"""
_INSERT = f"INSERT INTO costs ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) ON CONFLICT DO NOTHING"
_MERGE = (
    f"INSERT INTO costs ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) "
    f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _VALUES + ("created_at",))
    + " WHERE excluded.repeats > costs.repeats"
)
_INSERT_ACCURACY = "INSERT INTO accuracies VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
_INSERT_REJECTION = "INSERT INTO rejections VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
_INSERT_TARGET = "INSERT INTO targets (fingerprint, description) VALUES (?, ?) ON CONFLICT DO NOTHING"


class DatabaseError(RuntimeError):
    """The measurement database file cannot be used; the message names the file and the problem."""


class MeasurementDB:
    """Costs keyed by (target fingerprint, layer signature, choice key), shared safely between processes.

    Args:
        path: the SQLite file, created with its schema if missing (or empty); `":memory:"` for a
            throwaway database. An existing file must be a DeployGym database of this schema.
    """

    def __init__(self, path: str | Path) -> None:
        self.path: str | Path = path if path == ":memory:" else Path(path)
        if isinstance(self.path, Path) and self.path.exists():
            checked = _open_checked(self.path)
            if checked is not None:
                checked.close()
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise DatabaseError(f"{self.path}: cannot create a measurement database there ({e})") from e
        try:
            # Schema before WAL: a non-empty file is then never seen without its tables.
            self._conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
            enable_wal(self._conn)
            # In WAL mode NORMAL cannot corrupt the file; a power cut may lose the last commits only.
            self._conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as e:
            self._conn.close()
            raise DatabaseError(f"{self.path}: cannot initialise the measurement database ({e})") from e

    def get(self, fingerprint: str, signature: str, choice_key: str) -> Cost | None:
        """The stored cost of one choice for one layer on one target, or None."""
        row = self._conn.execute(
            f"SELECT {', '.join(_VALUES)} FROM costs WHERE fingerprint = ? AND signature = ? AND choice = ?",
            (fingerprint, signature, choice_key),
        ).fetchone()
        return None if row is None else _cost(row)

    def get_layer(self, fingerprint: str, signature: str) -> dict[str, Cost]:
        """Every stored choice of one layer on one target, as {choice key: cost}."""
        rows = self._conn.execute(
            f"SELECT choice, {', '.join(_VALUES)} FROM costs WHERE fingerprint = ? AND signature = ?",
            (fingerprint, signature),
        )
        return {row[0]: _cost(row[1:]) for row in rows}

    def put(self, fingerprint: str, signature: str, choice_key: str, cost: Cost) -> None:
        """Store a cost unless the key already has one (first writer wins)."""
        self.put_many(fingerprint, [(signature, choice_key, cost)])

    def put_many(self, fingerprint: str, rows: Iterable[tuple[str, str, Cost]]) -> None:
        """Store (signature, choice key, cost) rows in one transaction; existing keys are kept."""
        now = time.time()
        records = [_record(fingerprint, sig, choice, cost, now) for sig, choice, cost in rows]
        with self._write():
            self._conn.executemany(_INSERT, records)

    def count(self, fingerprint: str | None = None) -> int:
        """Number of stored costs, for one target or for all."""
        where, args = _where(fingerprint)
        return self._conn.execute(f"SELECT COUNT(*) FROM costs {where}", args).fetchone()[0]

    def fingerprints(self) -> list[str]:
        """Sorted fingerprints of the targets that have at least one cost."""
        return [r[0] for r in self._conn.execute("SELECT DISTINCT fingerprint FROM costs ORDER BY 1")]

    def register_target(self, fingerprint: str, description: dict[str, Any]) -> None:
        """Record what a fingerprint stands for (JSON-able); the first description is kept."""
        with self._write():
            self._conn.execute(_INSERT_TARGET, (fingerprint, json.dumps(description, sort_keys=True)))

    def target_description(self, fingerprint: str) -> dict[str, Any] | None:
        """The description registered for a fingerprint, or None."""
        row = self._conn.execute(
            "SELECT description FROM targets WHERE fingerprint = ?", (fingerprint,)
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def put_network(self, fingerprint: str, network: str, deployment: str, choices: dict[str, Any],
                    measurement: dict[str, Any], replace: bool = False) -> None:
        """Store a whole-network measurement of one deployment (`choices` as JSON) on the device with
        `fingerprint` (first writer wins, unless it is to `replace` the stored one)."""
        conflict = "DO UPDATE SET choices = excluded.choices, measurement = excluded.measurement, created_at = excluded.created_at" \
            if replace else "DO NOTHING"
        with self._write():
            self._conn.execute(
                f"INSERT INTO networks VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT {conflict}",
                (fingerprint, network, deployment, json.dumps(choices, sort_keys=True), json.dumps(measurement), time.time()),
            )

    def network_measurement(self, fingerprint: str, network: str, deployment: str) -> dict[str, Any] | None:
        """A stored whole-network measurement, or None."""
        row = self._conn.execute(
            "SELECT measurement FROM networks WHERE fingerprint = ? AND network = ? AND deployment = ?",
            (fingerprint, network, deployment),
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def put_correction(self, name: str, fingerprint: str, document: dict[str, Any]) -> None:
        """Store (or replace: a refit supersedes) the latency correction `name` for the cost table with
        `fingerprint`; `document` holds the correction and its provenance."""
        with self._write():
            self._conn.execute(
                "INSERT OR REPLACE INTO corrections VALUES (?, ?, ?, ?)",
                (name, fingerprint, json.dumps(document, sort_keys=True), time.time()),
            )

    def correction(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """(cost table fingerprint, document) of a stored latency correction, or None."""
        row = self._conn.execute("SELECT fingerprint, document FROM corrections WHERE name = ?", (name,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def put_rejection(self, fingerprint: str, signature: str, choice_key: str, reason: str) -> None:
        """Record that the backend will never price this choice for this layer (first writer wins)."""
        with self._write():
            self._conn.execute(_INSERT_REJECTION, (fingerprint, signature, choice_key, reason, time.time()))

    def rejections(self, fingerprint: str, signature: str) -> dict[str, str]:
        """The rejected choices of one layer on one target, as {choice key: reason}."""
        rows = self._conn.execute(
            "SELECT choice, reason FROM rejections WHERE fingerprint = ? AND signature = ?", (fingerprint, signature)
        )
        return dict(rows.fetchall())

    def put_accuracy(self, oracle: str, assignment: Sequence[str], accuracy: float, provenance: str) -> None:
        """Store the measured accuracy of one per-layer precision assignment (first writer wins)."""
        with self._write():
            self._conn.execute(
                _INSERT_ACCURACY,
                (oracle, ",".join(assignment), accuracy, provenance, time.time()),
            )

    def accuracies(self, oracle: str) -> dict[tuple[str, ...], float]:
        """Every stored accuracy of one accuracy oracle, keyed by assignment."""
        rows = self._conn.execute("SELECT assignment, accuracy FROM accuracies WHERE oracle = ?", (oracle,))
        return {tuple(assignment.split(",")): accuracy for assignment, accuracy in rows}

    def export_rows(self, fingerprint: str) -> list[tuple[str, str, Cost]]:
        """Every (layer signature, choice key, cost) stored under one fingerprint."""
        rows = self._conn.execute(
            f"SELECT signature, choice, {', '.join(_VALUES)} FROM costs WHERE fingerprint = ? ORDER BY 1, 2",
            (fingerprint,),
        )
        return [(sig, choice, _cost(values)) for sig, choice, *values in rows]

    def export_json(self, path: str | Path, fingerprint: str | Sequence[str] | None = None) -> int:
        """Write the costs (of one or several fingerprints, or all) and their target descriptions as JSON; returns rows written."""
        where, args = _where(fingerprint)
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM costs {where} ORDER BY fingerprint, signature, choice", args
        ).fetchall()
        targets = self._conn.execute(
            f"SELECT fingerprint, description FROM targets {where} ORDER BY fingerprint", args
        )
        n_key = len(_KEY)
        doc = {
            "schema_version": SCHEMA_VERSION,
            "targets": {fp: json.loads(desc) for fp, desc in targets},
            "costs": [
                {
                    **dict(zip(_KEY, row[:n_key])),
                    "cost": _cost(row[n_key:-1]).to_dict(),
                    "created_at": row[-1],
                }
                for row in rows
            ],
        }
        Path(path).write_text(json.dumps(doc, indent=1) + "\n")
        return len(rows)

    def fingerprints_of(self, target: str) -> list[str]:
        """Sorted fingerprints registered as belonging to the target named `target`."""
        rows = self._conn.execute("SELECT fingerprint, description FROM targets ORDER BY 1")
        return [fp for fp, desc in rows if json.loads(desc).get("target") == target]

    def merge_from(self, other_path: str | Path, target: str | None = None) -> int:
        """Copy another database's costs, targets, rejections and accuracies in, in one transaction; returns cost rows added or upgraded.

        A key already present is kept (first writer wins) unless the other row has more repeats.
        With `target`, a file holding costs of any other (or an unregistered) target is refused whole.
        The other file is only read.
        """
        other = Path(other_path)
        if not other.exists():
            raise DatabaseError(f"{other}: no such file to merge from")
        source = _open_checked(other)
        if source is None:
            return 0
        if target is not None:
            owners = {fp: json.loads(d).get("target") for fp, d in source.execute("SELECT fingerprint, description FROM targets")}
            foreign = sorted(
                {str(owners.get(fp)) for (fp,) in source.execute("SELECT DISTINCT fingerprint FROM costs")} - {target}
            )
            if foreign:
                source.close()
                raise DatabaseError(
                    f"{other}: holds measurements of target(s) {foreign}, not {target!r}; refused, nothing merged"
                )
        try:
            with self._write():
                before = self._conn.total_changes
                self._conn.executemany(_MERGE, source.execute(f"SELECT {_COLUMNS} FROM costs"))
                added = self._conn.total_changes - before
                self._conn.executemany(_INSERT_TARGET, source.execute("SELECT fingerprint, description FROM targets"))
                tables = {r[0] for r in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "accuracies" in tables:
                    self._conn.executemany(_INSERT_ACCURACY, source.execute("SELECT * FROM accuracies"))
                if "rejections" in tables:
                    self._conn.executemany(_INSERT_REJECTION, source.execute("SELECT * FROM rejections"))
        finally:
            source.close()
        return added

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()

    def __enter__(self) -> MeasurementDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One short write transaction, taken up front so concurrent writers queue instead of deadlocking."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise DatabaseError(f"{self.path}: no write lock within {BUSY_TIMEOUT_S:.0f} s ({e})") from e
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")


def enable_wal(conn: sqlite3.Connection, timeout_s: float = BUSY_TIMEOUT_S) -> None:
    """Switch `conn`'s database to WAL, waiting up to `timeout_s` for other writers: SQLite refuses
    the switch at once (no busy handler) while another connection holds a write lock, e.g. a
    process creating the schema of a database that several processes open at the same time."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _open_checked(path: Path) -> sqlite3.Connection | None:
    """Open an existing file read-only and check its schema; None when it holds no tables yet.

    Read-only, so a file that turns out not to be ours is never written to. SQLite still creates
    `-wal` and `-shm` files beside one whose header says WAL; those it created are removed on refusal.
    """
    if path.is_dir():
        raise DatabaseError(f"{path} is a directory, not a DeployGym measurement database")
    beside = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")]
    created = [p for p in beside if not p.exists()]
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        problem = _schema_problem(conn, tables) if tables else None
    except sqlite3.Error as e:
        tables, problem = set(), f"not a DeployGym measurement database (SQLite: {e})"
    if problem is None and tables:
        return conn
    if conn is not None:
        conn.close()
    if problem is not None:
        for p in created:
            p.unlink(missing_ok=True)
        raise DatabaseError(f"{path}: {problem}; the file was left unchanged")
    return None


def _schema_problem(conn: sqlite3.Connection, tables: set[str]) -> str | None:
    """Why a SQLite database with these tables is not a DeployGym database of this schema, or None."""
    missing = {"meta", "targets", "costs"} - tables
    if missing:
        return f"not a DeployGym measurement database (tables {sorted(tables)}, missing {sorted(missing)})"
    columns = {r[1] for r in conn.execute("PRAGMA table_info(costs)")}
    missing = set(_KEY + _VALUES + ("created_at",)) - columns
    if missing:
        return f"not a DeployGym measurement database (table costs lacks columns {sorted(missing)})"
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        version = int(row[0])
    except (TypeError, ValueError):
        return f"not a DeployGym measurement database (meta has no integer schema_version: {row})"
    if version > SCHEMA_VERSION:
        return f"schema_version {version} is newer than this DeployGym reads ({SCHEMA_VERSION}); upgrade DeployGym"
    if version < SCHEMA_VERSION:
        return f"schema_version {version} is older than {SCHEMA_VERSION} and there is no migration for it"
    return None


def _record(fingerprint: str, signature: str, choice: str, cost: Cost, now: float) -> tuple[Any, ...]:
    """A `costs` row; NaN is refused because SQLite would store it as NULL."""
    for name in ("latency_ms", "spread_ms", "energy_mj"):
        value = getattr(cost, name)
        if value is not None and math.isnan(value):
            raise ValueError(f"{name} is NaN for ({fingerprint!r}, {signature!r}, {choice!r})")
    return (fingerprint, signature, choice, *(getattr(cost, c) for c in _VALUES), now)


def _cost(values: tuple[Any, ...]) -> Cost:
    """A `Cost` from the `_VALUES` columns of a row."""
    return Cost(**dict(zip(_VALUES, values)))


def _where(fingerprint: str | Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
    """A WHERE clause restricting to one or several fingerprints, or none."""
    if fingerprint is None:
        return "", ()
    chosen = (fingerprint,) if isinstance(fingerprint, str) else tuple(fingerprint)
    return f"WHERE fingerprint IN ({', '.join('?' * len(chosen))})", chosen
