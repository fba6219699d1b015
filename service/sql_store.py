"""`JobStore` on SQL: SQLite (embedded default, WAL) and PostgreSQL (shared by many hosts).

Both run the same statements (written with ``?`` placeholders); they differ in how a transaction
excludes the others:

- SQLite: ``BEGIN IMMEDIATE`` takes the database's one write lock, so a claim or a submission
  (count, then insert) is atomic across threads and processes; WAL lets readers go on meanwhile.
- PostgreSQL: a claim locks its candidate rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` (two
  workers never wait on or take the same job); a submission takes a transaction-level advisory
  lock so that the queue limit and idempotency keys hold under concurrent submissions.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from service.store import (
    IdempotencyConflictError,
    Job,
    JobState,
    JobStore,
    NewJob,
    QueueFullError,
    StoreUnavailableError,
    WorkerInfo,
)

_JOB_COLUMNS = (
    "id",
    "owner",
    "model",
    "request",
    "request_hash",
    "members",
    "steps_total",
    "idempotency_key",
    "status",
    "steps_done",
    "error",
    "worker_id",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
    "heartbeat_at",
    "claimed_at",
    "claimed_steps",
    "progress_at",
    "expires_at",
    "expired",
)
_SELECT = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        model TEXT NOT NULL,
        request TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        members INTEGER NOT NULL,
        steps_total INTEGER NOT NULL,
        idempotency_key TEXT,
        status TEXT NOT NULL,
        steps_done INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        worker_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        heartbeat_at DOUBLE PRECISION,
        claimed_at DOUBLE PRECISION,
        claimed_steps INTEGER NOT NULL DEFAULT 0,
        progress_at DOUBLE PRECISION,
        expires_at DOUBLE PRECISION,
        expired INTEGER NOT NULL DEFAULT 0
    )""",
    # NULL keys are distinct in both databases: only keyed submissions are unique.
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (owner, idempotency_key)",
    "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, model, created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at)",
    """CREATE TABLE IF NOT EXISTS workers (
        id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        host TEXT NOT NULL,
        ready INTEGER NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL
    )""",
)


class _Tx:
    """One transaction's statement runner (``?`` placeholders)."""

    def __init__(self, cursor: Any, placeholder: str) -> None:
        self._cursor = cursor
        self._placeholder = placeholder

    def run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._placeholder != "?":
            sql = sql.replace("?", self._placeholder)
        self._cursor.execute(sql, tuple(params))
        return self._cursor

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self.run(sql, params).fetchall())


def _job(row: Sequence[Any]) -> Job:
    d = dict(zip(_JOB_COLUMNS, row, strict=True))
    d["request"] = json.loads(d["request"])
    d["status"] = JobState(d["status"])
    d["expired"] = bool(d["expired"])
    return Job(**d)


class SQLJobStore(JobStore):
    """The statements; subclasses provide transactions and row locking."""

    placeholder = "?"
    lock_rows = ""  # appended to the claim's candidate query

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[_Tx]:  # pragma: no cover - abstract
        """A transaction; ``write=False`` promises one read-only statement."""
        raise NotImplementedError
        yield

    def _serialize_submissions(self, tx: _Tx) -> None:
        """Exclude other submissions until the transaction ends (SQLite: the write lock does)."""

    def _create_schema(self, tx: _Tx) -> None:
        for statement in _SCHEMA:
            tx.run(statement)

    # -- submissions and reads -------------------------------------------------------------------

    def submit(self, job: NewJob, *, max_queued: int, now: float) -> tuple[Job, bool]:
        with self._transaction() as tx:
            self._serialize_submissions(tx)
            if job.idempotency_key is not None:
                rows = tx.rows(
                    f"{_SELECT} WHERE owner = ? AND idempotency_key = ?",
                    (job.owner, job.idempotency_key),
                )
                if rows:
                    earlier = _job(rows[0])
                    if earlier.request_hash != job.request_hash:
                        raise IdempotencyConflictError(
                            f"Idempotency-Key {job.idempotency_key!r} was used for job "
                            f"{earlier.id} with a different request"
                        )
                    return earlier, False
            (queued,) = tx.rows("SELECT COUNT(*) FROM jobs WHERE status = 'queued'")[0]
            if queued >= max_queued:
                raise QueueFullError(f"{queued} jobs are queued (the limit is {max_queued})")
            tx.run(
                "INSERT INTO jobs (id, owner, model, request, request_hash, members, steps_total,"
                " idempotency_key, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.owner,
                    job.model,
                    json.dumps(job.request, sort_keys=True),
                    job.request_hash,
                    job.members,
                    job.steps_total,
                    job.idempotency_key,
                    JobState.QUEUED.value,
                    now,
                ),
            )
            return _job(tx.rows(f"{_SELECT} WHERE id = ?", (job.id,))[0]), True

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        sql, params = f"{_SELECT} WHERE id = ?", [job_id]
        if owner is not None:
            sql, params = sql + " AND owner = ?", [*params, owner]
        with self._transaction(write=False) as tx:
            rows = tx.rows(sql, params)
        return _job(rows[0]) if rows else None

    def list_jobs(
        self,
        owner: str | None,
        statuses: Sequence[JobState] = (),
        *,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Job]:
        where, params = [], []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if statuses:
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(JobState(s).value for s in statuses)
        sql = _SELECT + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        with self._transaction(write=False) as tx:
            return [_job(r) for r in tx.rows(sql, [*params, limit, offset])]

    def queue_position(self, job: Job) -> int | None:
        if job.status != JobState.QUEUED:
            return None
        with self._transaction(write=False) as tx:
            (ahead,) = tx.rows(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND model = ? AND "
                "(created_at < ? OR (created_at = ? AND id < ?))",
                (job.model, job.created_at, job.created_at, job.id),
            )[0]
        return int(ahead) + 1

    def counts(self) -> dict[JobState, int]:
        with self._transaction(write=False) as tx:
            rows = tx.rows("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        found = {JobState(s): int(n) for s, n in rows}
        return {state: found.get(state, 0) for state in JobState}

    def cancel(
        self, job_id: str, owner: str | None, *, now: float, expires_at: float
    ) -> Job | None:
        sql = (
            "UPDATE jobs SET status = 'cancelled', finished_at = ?, expires_at = ? "
            "WHERE id = ? AND status IN ('queued', 'running')"
        )
        params: list[Any] = [now, expires_at, job_id]
        select, keys = f"{_SELECT} WHERE id = ?", [job_id]
        if owner is not None:
            sql, params = sql + " AND owner = ?", [*params, owner]
            select, keys = select + " AND owner = ?", [*keys, owner]
        with self._transaction() as tx:
            tx.run(sql, params)
            rows = tx.rows(select, keys)
        return _job(rows[0]) if rows else None

    # -- workers --------------------------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        model: str,
        *,
        max_members: int,
        limit: int,
        now: float,
        timeout: float,
        max_attempts: int,
    ) -> list[Job]:
        if limit < 1 or max_members < 1:
            return []
        with self._transaction() as tx:
            candidates = [
                _job(r)
                for r in tx.rows(
                    f"{_SELECT} WHERE model = ? AND (status = 'queued' OR "
                    "(status = 'running' AND heartbeat_at < ?)) "
                    f"ORDER BY created_at, id LIMIT ?{self.lock_rows}",
                    (model, now - timeout, limit),
                )
            ]
            taken: list[str] = []
            used = 0
            for job in candidates:
                if job.status == JobState.RUNNING and job.attempts >= max_attempts:
                    tx.run(
                        "UPDATE jobs SET status = 'failed', finished_at = ?, expires_at = ?, "
                        "error = ? WHERE id = ?",
                        (
                            now,
                            now,
                            f"its worker stopped {job.attempts} times while running it",
                            job.id,
                        ),
                    )
                    continue
                if used + job.members > max_members:
                    break
                tx.run(
                    "UPDATE jobs SET status = 'running', worker_id = ?, attempts = attempts + 1, "
                    "started_at = COALESCE(started_at, ?), heartbeat_at = ?, claimed_at = ?, "
                    "claimed_steps = steps_done, progress_at = NULL WHERE id = ?",
                    (worker_id, now, now, now, job.id),
                )
                used += job.members
                taken.append(job.id)
            jobs = [_job(tx.rows(f"{_SELECT} WHERE id = ?", (i,))[0]) for i in taken]
        return jobs

    def heartbeat(self, worker_id: str, model: str, host: str, *, ready: bool, now: float) -> None:
        with self._transaction() as tx:
            tx.run(
                "INSERT INTO workers (id, model, host, ready, started_at, heartbeat_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "ready = excluded.ready, heartbeat_at = excluded.heartbeat_at",
                (worker_id, model, host, int(ready), now, now),
            )
            tx.run(
                "UPDATE jobs SET heartbeat_at = ? WHERE worker_id = ? AND status = 'running'",
                (now, worker_id),
            )

    def remove_worker(self, worker_id: str) -> None:
        with self._transaction() as tx:
            # A clean stop hands its jobs straight back (the attempt does not count): they resume
            # from their last written lead on the next worker.
            tx.run(
                "UPDATE jobs SET status = 'queued', worker_id = NULL, "
                "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
                "WHERE worker_id = ? AND status = 'running'",
                (worker_id,),
            )
            tx.run("DELETE FROM workers WHERE id = ?", (worker_id,))

    def prune_workers(self, *, now: float, grace: float) -> list[str]:
        with self._transaction() as tx:
            gone = [
                str(r[0])
                for r in tx.rows("SELECT id FROM workers WHERE heartbeat_at < ?", (now - grace,))
            ]
            for worker_id in gone:
                tx.run("DELETE FROM workers WHERE id = ?", (worker_id,))
        return gone

    def live_workers(self, *, now: float, timeout: float) -> list[WorkerInfo]:
        with self._transaction(write=False) as tx:
            rows = tx.rows(
                "SELECT id, model, host, ready, started_at, heartbeat_at FROM workers "
                "WHERE heartbeat_at >= ? ORDER BY started_at",
                (now - timeout,),
            )
        return [
            WorkerInfo(id=i, model=m, host=h, ready=bool(r), started_at=s, heartbeat_at=b)
            for i, m, h, r, s, b in rows
        ]

    def progress(self, job_id: str, worker_id: str, steps_done: int, *, now: float) -> bool:
        with self._transaction() as tx:
            cursor = tx.run(
                "UPDATE jobs SET steps_done = ?, progress_at = ?, heartbeat_at = ? "
                "WHERE id = ? AND worker_id = ? AND status = 'running'",
                (steps_done, now, now, job_id, worker_id),
            )
            return bool(cursor.rowcount == 1)

    def finish(
        self,
        job_id: str,
        worker_id: str,
        status: JobState,
        *,
        now: float,
        expires_at: float,
        error: str | None = None,
    ) -> bool:
        if status not in (JobState.SUCCEEDED, JobState.FAILED):
            raise ValueError(f"status: a worker ends a job as succeeded or failed, not {status}")
        with self._transaction() as tx:
            cursor = tx.run(
                "UPDATE jobs SET status = ?, finished_at = ?, expires_at = ?, error = ?, "
                "steps_done = CASE WHEN ? = 'succeeded' THEN steps_total ELSE steps_done END "
                "WHERE id = ? AND worker_id = ? AND status = 'running'",
                (status.value, now, expires_at, error, status.value, job_id, worker_id),
            )
            return bool(cursor.rowcount == 1)

    def expire(self, now: float) -> list[str]:
        with self._transaction() as tx:
            ids = [
                i
                for (i,) in tx.rows(
                    "SELECT id FROM jobs WHERE expired = 0 AND expires_at IS NOT NULL "
                    f"AND expires_at < ?{self.lock_rows}",
                    (now,),
                )
            ]
            for job_id in ids:
                tx.run("UPDATE jobs SET expired = 1 WHERE id = ?", (job_id,))
        return ids


class SQLiteJobStore(SQLJobStore):
    """Jobs in one SQLite file (WAL): zero set-up, shared by the threads and processes of a host.

    Args:
      path: the database file (its directory is created).
      checkpoint_on_commit: SQLite's default, the commit that grows the WAL past 1000 pages
        copies it back into the database (with an fsync) before it returns, so now and then one
        request waits tens of milliseconds for it. False leaves that to `maintain`, which the
        owner calls from a background thread.
    """

    def __init__(self, path: str | Path, *, checkpoint_on_commit: bool = True) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreUnavailableError(
                f"database_url sqlite:///{self.path}: cannot create its folder {self.path.parent} "
                f"({error.strerror or error})"
            ) from None
        self.checkpoint_on_commit = checkpoint_on_commit
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # The threads of this process take SQLite's write lock one at a time, in turn. Without
        # this, a thread that finds it taken sleeps in SQLite's busy handler (1, 2, 5, ... up to
        # 100 ms between retries) and can lose to later arrivals again and again: with 40
        # threads submitting, p50 0.5 ms but p99 0.4-0.7 s; with the mutex p99 0.15-0.19 s at
        # the same rate (and far less below saturation). Other processes still meet the busy
        # handler (``timeout``), but only one thread of this one at a time.
        self._write_lock = threading.Lock()
        try:
            with self._transaction() as tx:
                self._create_schema(tx)
        except sqlite3.Error as error:
            self.close()
            raise StoreUnavailableError(
                f"database_url sqlite:///{self.path}: cannot open it as a database ({error})"
            ) from None

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if conn is None:
            # One connection per thread; autocommit mode, transactions are explicit.
            conn = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            if not self.checkpoint_on_commit:
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._local.connection = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[_Tx]:
        conn = self._connection()
        if not write:
            # Every read is one statement, and in autocommit mode a statement is its own read
            # transaction (a consistent snapshot under WAL, never waiting for writers): no
            # BEGIN and COMMIT round trips, a third of a small read's cost.
            yield _Tx(conn.cursor(), "?")
            return
        with self._write_lock:
            # IMMEDIATE takes the write lock up front, so read-then-write sequences cannot
            # interleave.
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Tx(conn.cursor(), "?")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def maintain(self) -> None:
        """Copy the WAL back into the database as far as readers allow (PASSIVE: it takes no
        lock that a request waits for)."""
        if not self.checkpoint_on_commit:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


class PostgresJobStore(SQLJobStore):
    """Jobs in PostgreSQL, for API servers and workers on several hosts.

    Args:
      url: a libpq URL, e.g. ``postgresql://postgres@127.0.0.1:5432/test``.
      schema: the schema holding the tables (created if absent), so several deployments (or
        test runs) share one database without clashing.
      connect_timeout: seconds to wait for the first connection before giving up.
    """

    placeholder = "%s"
    lock_rows = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, *, schema: str = "weather", connect_timeout: float = 10.0) -> None:
        import psycopg
        import psycopg_pool

        # One direct connection first: its error names the cause (no such database, refused,
        # authentication failed), where the pool would only time out.
        try:
            psycopg.connect(url, connect_timeout=max(1, round(connect_timeout))).close()
        except psycopg.Error as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise StoreUnavailableError(f"database_url {_redacted(url)}: {reason}") from None
        self.schema = schema
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=8,
            open=False,
            kwargs={"options": f"-c search_path={schema}"},
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except psycopg_pool.PoolTimeout:
            self._pool.close()
            raise StoreUnavailableError(
                f"database_url: no PostgreSQL connection to {_redacted(url)} within "
                f"{connect_timeout:g} s"
            ) from None
        with self._transaction() as tx:
            # Concurrent first starts would race on the catalogue; one at a time.
            tx.run("SELECT pg_advisory_xact_lock(hashtext(?))", (f"schema:{schema}",))
            tx.run(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            self._create_schema(tx)

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[_Tx]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            yield _Tx(cursor, "%s")

    def _serialize_submissions(self, tx: _Tx) -> None:
        tx.run("SELECT pg_advisory_xact_lock(hashtext(?))", (f"submit:{self.schema}",))

    def maintain(self) -> None:
        """Nothing: the PostgreSQL server checkpoints and vacuums by itself."""

    def drop_schema(self) -> None:
        """Delete the schema and every table in it (tests and teardown)."""
        with self._transaction() as tx:
            tx.run(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    def close(self) -> None:
        self._pool.close()


def _redacted(url: str) -> str:
    """The URL without a password."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"


def open_store(url: str, *, schema: str = "weather", maintained: bool = False) -> JobStore:
    """A job store from a URL: ``sqlite:///path/jobs.sqlite`` or ``postgresql://...``.

    Args:
      maintained: the caller runs `JobStore.maintain` periodically (the API server does).

    Raises:
      ValueError: naming the URL's scheme when it is neither.
      StoreUnavailableError: the database cannot be opened (the reason in one line).
    """
    if url.startswith("sqlite:///"):
        return SQLiteJobStore(url.removeprefix("sqlite:///"), checkpoint_on_commit=not maintained)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresJobStore(url, schema=schema)
    scheme = url.split(":", 1)[0]
    raise ValueError(f"database_url: scheme {scheme!r} is neither sqlite:/// nor postgresql://")
