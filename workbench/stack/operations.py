"""The personal server's operations in SQLite, so that they outlive a restart of its process.

One database file per server (`<data_dir>/operations.sqlite`; without a data_dir an in-memory
database, gone with the process). WAL journal: polls read while a worker commits, and with
`synchronous=NORMAL` a committed change survives the process being killed (`kill -9`); only an
OS crash or power loss may undo the last commits, which a load-test stack need not survive.

Decrypted files are never written here: an operation that a restart interrupted is prepared
again from the chain and storage (see `PersonalServer.resume`). Finished operations beyond the
newest `keep_finished` are deleted, so a long run's database and poll answers stay bounded.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_NAME = "operations.sqlite"
FINISHED = frozenset({"succeeded", "failed", "canceled"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- creation order
    id TEXT NOT NULL UNIQUE,
    permission_id INTEGER NOT NULL,
    grantee TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,                             -- JSON
    error TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    finished_seq INTEGER                     -- finishing order, for retiring the oldest
);
CREATE INDEX IF NOT EXISTS operations_by_permission ON operations (permission_id, seq);
CREATE INDEX IF NOT EXISTS operations_by_finish ON operations (finished_seq);
"""
_COLUMNS = "id, permission_id, grantee, status, result, error, created_at, finished_at"


@dataclass(frozen=True)
class StoredOperation:
    """One row: what a poll answers and what a restart needs to resume the operation."""

    id: str
    permission_id: int
    grantee: str
    status: str
    result: Any
    error: str | None
    created_at: float
    finished_at: float | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def view(self) -> dict[str, Any]:
        """The `GET /operations/{id}` answer."""
        out = {
            "kind": "OperationStatus",
            "id": self.id,
            "permission_id": self.permission_id,
            "status": self.status,
            "result": self.result,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }
        if self.error:
            out["error"] = self.error
        return out


class OperationStore:
    """Operations by id and by permission; every change is committed at once (autocommit).

    Used from the server's event-loop thread only; each statement takes microseconds (an
    indexed row, no fsync per commit in WAL mode with synchronous=NORMAL)."""

    def __init__(self, data_dir: str | Path | None, keep_finished: int):
        if data_dir is None:
            target = ":memory:"
        else:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
            target = str(Path(data_dir) / FILE_NAME)
        self.path = target
        self.keep_finished = keep_finished
        self.db = sqlite3.connect(target, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        last = self.db.execute("SELECT MAX(finished_seq) FROM operations").fetchone()[0]
        self._finished_seq = int(last or 0)

    def close(self) -> None:
        self.db.close()

    def add(
        self, op_id: str, permission_id: int, grantee: str, status: str, created_at: float
    ) -> None:
        self.db.execute(
            "INSERT INTO operations (id, permission_id, grantee, status, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (op_id, permission_id, grantee, status, created_at),
        )

    def set_status(self, op_id: str, status: str) -> None:
        self.db.execute("UPDATE operations SET status = ? WHERE id = ?", (status, op_id))

    def finish(
        self,
        op_id: str,
        status: str,
        finished_at: float,
        result: Any = None,
        error: str | None = None,
    ) -> None:
        """Records the end state, then deletes finished operations beyond `keep_finished`."""
        self._finished_seq += 1
        self.db.execute(
            "UPDATE operations SET status = ?, result = ?, error = ?, finished_at = ?, "
            "finished_seq = ? WHERE id = ?",
            (status, json.dumps(result), error, finished_at, self._finished_seq, op_id),
        )
        oldest_kept = self._finished_seq - self.keep_finished
        if oldest_kept > 0:
            self.db.execute("DELETE FROM operations WHERE finished_seq <= ?", (oldest_kept,))

    def get(self, op_id: str) -> StoredOperation | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM operations WHERE id = ?", (op_id,))
        return _stored(row.fetchone())

    def latest_for(self, permission_id: int) -> StoredOperation | None:
        """The permission's newest operation (a failed one may have been started again)."""
        row = self.db.execute(
            f"SELECT {_COLUMNS} FROM operations WHERE permission_id = ? ORDER BY seq DESC LIMIT 1",
            (permission_id,),
        )
        return _stored(row.fetchone())

    def unfinished(self) -> list[StoredOperation]:
        """Operations a stopped or killed server left running, oldest first."""
        marks = ", ".join("?" * len(FINISHED))
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM operations WHERE status NOT IN ({marks}) ORDER BY seq",
            tuple(FINISHED),
        )
        return [op for op in map(_stored, rows.fetchall()) if op is not None]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM operations").fetchone()[0]


def _stored(row: tuple | None) -> StoredOperation | None:
    if row is None:
        return None
    op_id, permission_id, grantee, status, result, error, created_at, finished_at = row
    return StoredOperation(
        op_id,
        permission_id,
        grantee,
        status,
        None if result is None else json.loads(result),
        error,
        created_at,
        finished_at,
    )
