"""The job store: the same tests on SQLite and on PostgreSQL.

The PostgreSQL variant runs when ``WEATHER_TEST_POSTGRES_URL`` names a database (e.g.
``postgresql://postgres@127.0.0.1:5432/test``) and fails, not skips, when that database cannot
be reached. Each test works in a schema of its own (dropped afterwards), so parallel runs do not
clash.
"""

import contextlib
import os
import shutil
import sqlite3
import threading
import uuid

import pytest

from service.sql_store import PostgresJobStore, SQLiteJobStore, open_store
from service.store import (
    IdempotencyConflictError,
    JobState,
    JobStore,
    NewJob,
    QueueFullError,
)

POSTGRES_URL = os.environ.get("WEATHER_TEST_POSTGRES_URL")
T0 = 1_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        s: JobStore = SQLiteJobStore(tmp_path / "jobs.sqlite")
        yield s
        s.close()
        return
    if not POSTGRES_URL:
        pytest.skip("WEATHER_TEST_POSTGRES_URL is not set")
    # A connection failure raises here: the test fails, as it must when the database was named.
    pg = PostgresJobStore(POSTGRES_URL, schema=f"weather_test_{os.getpid()}_{uuid.uuid4().hex[:8]}")
    try:
        yield pg
    finally:
        pg.drop_schema()
        pg.close()


def new_job(owner="alice", members=2, model="m1", key=None, digest="h1", steps=4):  # type: ignore[no-untyped-def]
    return NewJob(
        id=uuid.uuid4().hex,
        owner=owner,
        model=model,
        request={"members": members, "note": "x"},
        request_hash=digest,
        members=members,
        steps_total=steps,
        idempotency_key=key,
    )


def submit(store, t=T0, **kw):  # type: ignore[no-untyped-def]
    job, created = store.submit(new_job(**kw), max_queued=100, now=t)
    assert created
    return job


def claim(store, worker="w1", t=T0, members=8, model="m1", **kw):  # type: ignore[no-untyped-def]
    return store.claim(
        worker,
        model,
        max_members=members,
        limit=kw.pop("limit", 10),
        now=t,
        timeout=kw.pop("timeout", 30.0),
        max_attempts=kw.pop("max_attempts", 3),
    )


def test_submit_get_list_and_owner_isolation(store):
    a = submit(store, owner="alice", t=T0)
    b = submit(store, owner="alice", t=T0 + 1)
    c = submit(store, owner="bob", t=T0 + 2)
    got = store.get(a.id, "alice")
    assert got == a and got.status == JobState.QUEUED and got.request == {"members": 2, "note": "x"}
    assert store.get(a.id, "bob") is None  # another key never sees it
    assert store.get(a.id) == a
    assert [j.id for j in store.list_jobs("alice")] == [b.id, a.id]  # newest first
    assert [j.id for j in store.list_jobs("bob")] == [c.id]
    assert store.list_jobs("alice", [JobState.RUNNING]) == []
    assert [store.queue_position(j) for j in (a, b, c)] == [1, 2, 3]
    assert store.counts()[JobState.QUEUED] == 3 and store.counts()[JobState.FAILED] == 0


def test_idempotency_keys_and_the_queue_limit(store):
    first, created = store.submit(new_job(key="k1"), max_queued=10, now=T0)
    again, created_again = store.submit(new_job(key="k1"), max_queued=10, now=T0 + 1)
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflictError, match="k1"):
        store.submit(new_job(key="k1", digest="other"), max_queued=10, now=T0)
    other_owner, created = store.submit(new_job(key="k1", owner="bob"), max_queued=10, now=T0)
    assert created and other_owner.id != first.id  # keys are per owner
    store.submit(new_job(), max_queued=3, now=T0)
    with pytest.raises(QueueFullError, match="3 jobs are queued"):
        store.submit(new_job(), max_queued=3, now=T0)
    # A replay is answered even when the queue is full: it queues nothing.
    assert store.submit(new_job(key="k1"), max_queued=3, now=T0)[0].id == first.id


def test_claim_takes_compatible_jobs_first_come_first_served_within_capacity(store):
    jobs = [submit(store, t=T0 + i, members=3) for i in range(3)]
    submit(store, t=T0 - 1, model="other")
    taken = claim(store, members=8)
    # 3 + 3 fit in 8, the third does not; the other model's job is not this worker's.
    assert [j.id for j in taken] == [jobs[0].id, jobs[1].id]
    assert all(j.status == JobState.RUNNING and j.worker_id == "w1" for j in taken)
    assert taken[0].attempts == 1 and taken[0].started_at == T0
    assert claim(store, "w2", members=2) == []  # head of the queue needs 3
    assert [j.id for j in claim(store, "w2", members=3)] == [jobs[2].id]


def test_concurrent_claims_never_share_a_job(store):
    ids = {submit(store, t=T0 + i, members=1).id for i in range(24)}
    got: dict[str, list[str]] = {}

    def work(name: str) -> None:
        mine = got.setdefault(name, [])
        while True:
            taken = claim(store, name, members=2)
            if not taken:
                return
            mine.extend(j.id for j in taken)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [i for mine in got.values() for i in mine]
    assert sorted(claimed) == sorted(ids)  # each job exactly once


def test_dead_workers_jobs_are_claimed_again_and_fail_after_max_attempts(store):
    job = submit(store)
    claim(store, "w1", t=T0)
    store.heartbeat("w1", "m1", "host", ready=True, now=T0 + 20)
    assert claim(store, "w2", t=T0 + 40, timeout=30) == []  # w1 beat 20 s ago: alive
    assert store.progress(job.id, "w1", 2, now=T0 + 41)
    again = claim(store, "w2", t=T0 + 80, timeout=30)  # w1 silent for 39 s: dead
    assert [j.id for j in again] == [job.id]
    assert again[0].attempts == 2 and again[0].claimed_steps == 2 and again[0].steps_done == 2
    assert not store.progress(job.id, "w1", 3, now=T0 + 81)  # w1 lost it
    assert store.progress(job.id, "w2", 3, now=T0 + 81)
    assert claim(store, "w3", t=T0 + 200, timeout=30)[0].attempts == 3
    assert claim(store, "w4", t=T0 + 300, timeout=30, max_attempts=3) == []
    failed = store.get(job.id)
    assert failed.status == JobState.FAILED and "stopped 3 times" in failed.error


def test_progress_finish_and_eta(store):
    job = submit(store, steps=4)
    claim(store, t=T0 + 10)
    assert store.progress(job.id, "w1", 1, now=T0 + 12)
    running = store.get(job.id)
    assert running.eta_seconds(T0 + 12) == pytest.approx(6.0)  # 2 s per step, 3 to go
    assert store.finish(job.id, "w1", JobState.SUCCEEDED, now=T0 + 20, expires_at=T0 + 100)
    done = store.get(job.id)
    assert (
        done.status == JobState.SUCCEEDED and done.steps_done == 4 and done.finished_at == T0 + 20
    )
    assert not store.finish(job.id, "w1", JobState.FAILED, now=T0 + 21, expires_at=T0 + 100)
    assert store.expire(T0 + 99) == []
    assert store.expire(T0 + 101) == [job.id]
    assert store.get(job.id).expired and store.expire(T0 + 102) == []


def test_cancel_queued_and_running_jobs(store):
    queued = submit(store, t=T0, members=1)
    running = submit(store, t=T0 + 1, members=1)
    claim(store, t=T0 + 2, members=1, limit=1)  # the first one
    cancelled = store.cancel(queued.id, "alice", now=T0 + 3, expires_at=T0 + 50)
    assert cancelled.status == JobState.CANCELLED and cancelled.expires_at == T0 + 50
    assert store.cancel(queued.id, "bob", now=T0 + 3, expires_at=T0 + 50) is None
    assert [j.id for j in claim(store, "w2", t=T0 + 4)] == [running.id]
    store.cancel(running.id, None, now=T0 + 5, expires_at=T0 + 50)
    assert not store.progress(running.id, "w2", 1, now=T0 + 6)  # the worker drops it
    # Cancelling an ended job changes nothing.
    assert store.cancel(running.id, None, now=T0 + 7, expires_at=T0 + 99).expires_at == T0 + 50


def test_workers_heartbeat_and_hand_back_jobs_on_a_clean_stop(store):
    store.heartbeat("w1", "m1", "host-a", ready=False, now=T0)
    store.heartbeat("w1", "m1", "host-a", ready=True, now=T0 + 5)
    store.heartbeat("w2", "m1", "host-b", ready=True, now=T0 - 100)
    live = store.live_workers(now=T0 + 10, timeout=30)
    assert [(w.id, w.ready, w.started_at) for w in live] == [("w1", True, T0)]
    job = submit(store)
    claim(store, "w1", t=T0 + 6)
    store.progress(job.id, "w1", 2, now=T0 + 7)
    store.remove_worker("w1")
    back = store.get(job.id)
    assert back.status == JobState.QUEUED and back.attempts == 0 and back.steps_done == 2
    assert store.live_workers(now=T0 + 10, timeout=30) == []


def test_open_store_picks_the_database_from_the_url(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'a' / 'jobs.sqlite'}")
    assert isinstance(s, SQLiteJobStore) and (tmp_path / "a" / "jobs.sqlite").exists()
    s.close()
    with pytest.raises(ValueError, match="'mysql' is neither"):
        open_store("mysql://x")


def test_sqlite_store_kept_by_its_owner_checkpoints_in_maintain_not_in_commits(tmp_path):
    path = tmp_path / "jobs.sqlite"
    store = open_store(f"sqlite:///{path}", maintained=True)
    assert isinstance(store, SQLiteJobStore)

    def rows_in_the_database_file() -> int:
        """Jobs in the main file alone, without its WAL: what checkpoints have copied there."""
        copy = tmp_path / "copy.sqlite"
        shutil.copyfile(path, copy)
        with contextlib.closing(sqlite3.connect(copy)) as db:
            if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchall():
                return 0
            return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    try:
        with store._transaction(write=False) as tx:  # no commit of this store checkpoints
            assert tx.rows("PRAGMA wal_autocheckpoint") == [(0,)]
        for i in range(5):
            submit(store, t=T0 + i)
        assert rows_in_the_database_file() == 0
        store.maintain()
        assert rows_in_the_database_file() == 5
        assert len(store.list_jobs(None)) == 5
    finally:
        store.close()
