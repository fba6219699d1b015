"""Filter and report cosmic-ray sessions (used by scripts/mutation.sh).

    python scripts/mutation_session.py filter SESSION MODULE [--sample FRACTION] [--seed N]
    python scripts/mutation_session.py report NAME=SESSION...
    python scripts/mutation_session.py reset-survivors SESSION

``filter`` marks the mutants that need no test run as skipped. Two kinds of mutant are skipped,
each with its reason in the session's output column:

- **annotations**: a mutant inside a type annotation (``float | None`` -> ``float & None``). Every
  module of the core starts with ``from __future__ import annotations``, so annotations are never
  evaluated and these mutants are equivalent by construction.
- **bitwise**: an arithmetic operator replaced by a bitwise or shift operator (``*`` -> ``^``,
  ``<<``...) where the original is not bitwise itself. The core's arithmetic is on float arrays
  and scalars, where these raise TypeError at the first call: each would cost a test run only
  to be killed. (A bitwise operator in the source is still mutated into everything else.)

``--sample FRACTION`` additionally keeps a seeded random share of the remaining mutants and skips
the rest ("not sampled"): a mutation score estimated from a uniform sample, for a module too large
to run whole in the time at hand. The report states the sample size, so the estimate's binomial
error is known.

``report`` prints one JSON line per session: mutants run, killed (a test failed, or the run timed
out), survived, incompetent (the mutant could not be applied), skipped by reason, pending, and the
score killed / (killed + survived) with its binomial standard error.

``reset-survivors`` forgets the results of the surviving mutants, so that the next ``cosmic-ray
exec`` runs them (and only them) against the tests as they are now: the "after" score once tests
were added (tests only grow, so a killed mutant stays killed).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import random
import re
import sqlite3
from pathlib import Path

BITWISE = ("BitAnd", "BitOr", "BitXor", "LShift", "RShift")
_REPLACE = re.compile(r"ReplaceBinaryOperator_(\w+?)_(\w+)$")


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``((row, col), (end_row, end_col))`` of every annotation in ``source`` (1-based rows)."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        annotations: list[ast.expr | None] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations.append(node.returns)
        elif isinstance(node, (ast.arg, ast.AnnAssign)):
            annotations.append(node.annotation)
        for annotation in annotations:
            if annotation is not None and annotation.end_lineno is not None:
                spans.append(
                    (
                        (annotation.lineno, annotation.col_offset),
                        (annotation.end_lineno, annotation.end_col_offset or 0),
                    )
                )
    return spans


def skip_reason(operator: str, start: tuple[int, int], spans) -> str | None:
    """Why the mutant at ``start`` made by ``operator`` needs no test run, or None."""
    if any(lo <= start < hi for lo, hi in spans):
        return "annotation (never evaluated: equivalent)"
    match = _REPLACE.search(operator)
    if match and match.group(2) in BITWISE and match.group(1) not in BITWISE:
        return "bitwise replacement of float arithmetic (TypeError)"
    return None


def filter_session(args: argparse.Namespace) -> None:
    """Mark the mutants that need no test run (and those not sampled) as skipped."""
    # Imported here: only the filter needs cosmic-ray (reports read the session's SQLite).
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = annotation_spans(Path(args.module).read_text())
    rng = random.Random(args.seed)
    counts: dict[str, int] = {}
    with use_db(args.session) as db:
        # Sorted so that the sample is the same whatever order the database returns.
        for item in sorted(db.pending_work_items, key=lambda item: item.job_id):
            mutation = item.mutations[0]
            reason = skip_reason(mutation.operator_name, tuple(mutation.start_pos), spans)
            if reason is None and rng.random() >= args.sample:
                reason = "not sampled"
            if reason is not None:
                counts[reason] = counts.get(reason, 0) + 1
                db.set_result(
                    item.job_id,
                    WorkResult(output=f"skipped: {reason}", worker_outcome=WorkerOutcome.SKIPPED),
                )
    for reason, count in sorted(counts.items()):
        print(f"{args.module}: skipped {count} ({reason})")


def summarise(session: str) -> dict[str, object]:
    """Counts and score of one session (see the module docstring)."""
    if not Path(session).is_file():
        raise SystemExit(f"{session}: no such session")
    # Read-only: a report must never create or change a session.
    db = sqlite3.connect(f"file:{session}?mode=ro", uri=True)
    total = db.execute("select count(*) from work_items").fetchone()[0]
    rows = db.execute("select worker_outcome, test_outcome, output from work_results").fetchall()
    counts = {"killed": 0, "survived": 0, "incompetent": 0}
    skipped: dict[str, int] = {}
    for worker, test, output in rows:
        # The database holds the enums' names (SKIPPED, KILLED...).
        worker, test = (worker or "").lower(), (test or "").lower()
        if worker == "skipped":
            reason = (output or "").removeprefix("skipped: ")
            skipped[reason] = skipped.get(reason, 0) + 1
        elif test in counts:
            counts[test] += 1
    decided = counts["killed"] + counts["survived"]
    score = counts["killed"] / decided if decided else float("nan")
    return {
        "mutants": total,
        **counts,
        "skipped": skipped,
        "pending": total - len(rows),
        "score": round(score, 4),
        # Binomial standard error of the score as an estimate (a sampled or unfinished run).
        "score_se": round(math.sqrt(score * (1 - score) / decided), 4) if decided else None,
    }


def reset_survivors(session: str) -> int:
    """Delete the results of the surviving mutants; returns how many."""
    db = sqlite3.connect(session)
    with db:
        count = db.execute(
            "delete from work_results where lower(test_outcome) = 'survived'"
        ).rowcount
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    filter_parser = commands.add_parser("filter")
    filter_parser.add_argument("session")
    filter_parser.add_argument("module")
    filter_parser.add_argument("--sample", type=float, default=1.0)
    filter_parser.add_argument("--seed", type=int, default=0)
    report_parser = commands.add_parser("report")
    report_parser.add_argument("sessions", nargs="+", metavar="NAME=SESSION")
    reset_parser = commands.add_parser("reset-survivors")
    reset_parser.add_argument("session")
    args = parser.parse_args()
    if args.command == "reset-survivors":
        print(f"{args.session}: {reset_survivors(args.session)} survivors to run again")
        return
    if args.command == "filter":
        if not 0 < args.sample <= 1:
            parser.error(f"--sample must be in (0, 1], got {args.sample}")
        filter_session(args)
        return
    for entry in args.sessions:
        name, _, session = entry.partition("=")
        print(json.dumps({"module": name, **summarise(session)}))


if __name__ == "__main__":
    main()
