"""The learning curve of a training run: losses and ensemble skill against steps and CPU hours.

Usage (the README's curve; resumable: scored snapshots are kept in ``--out-dir``)::

    python benchmarks/learning_curve.py --run-dir data/runs/long \\
        --archive data/era5sim/val.zarr --baseline weather/assets/checkpoint.msgpack

Reads the run's ``history.jsonl`` (training loss; validation loss with training's noise levels
and at each fixed level of ``TrainConfig.validation_sigmas``, the noise-level bands) and scores
every EMA snapshot the run kept (``weather train --snapshot-every N``) on fixed validation init
times:

- one 12 h step with GenCast's sampler (``--short-sampler``, default ``2s:20,spread_scale=1``):
  fair CRPS and spread/skill of ``--members`` members at ``--short-inits`` inits;
- a 15-day rollout (``--long-sampler``, default ``2s:5,spread_scale=1``: no shrinking) of
  ``--long-members`` members at ``--long-inits`` inits: fair CRPS and spread/skill at 5 and 15 days.

Steps and CPU seconds of a warm-started run count from its source (the source's steps and
training seconds are added), so runs continue the shipped model's curve. ``--baseline`` adds
a checkpoint (e.g. the shipped one) as one more point. Prints one JSON object (``points``: one per
snapshot) and draws ``--figure``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGETS: tuple[tuple[str, int | None], ...] = (
    ("geopotential", 500),
    ("temperature", 850),
    ("u_component_of_wind", 850),
    ("surface_pressure", None),
)
LONG_LEADS_HOURS = (120, 360)


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_offset(run_dir: Path) -> tuple[int, float]:
    """(steps, training seconds) of a warm start's source, else (0, 0)."""
    from weather.model.checkpoint import load_checkpoint

    ckpt = run_dir / "checkpoint.msgpack"
    if not ckpt.exists():
        return 0, 0.0
    meta = load_checkpoint(ckpt)["metadata"]
    return int(meta.get("warm_start_step", 0)), float(meta.get("warm_start_seconds", 0.0))


def score_checkpoint(
    path: Path,
    archive: Any,
    short_inits: np.ndarray,
    long_inits: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The checkpoint's 12 h and long-lead scores on the fixed inits."""
    from weather.evaluation import ensemble_scores
    from weather.forecast import forecast, load_forecaster
    from weather.model.rollout import Roller, RolloutConfig
    from weather.model.sampler import SamplerOverride

    model = load_forecaster(path)
    base = model.forecaster.config.sampler
    out: dict[str, Any] = {}
    for kind, inits, lead, members, spec in (
        ("short", short_inits, "12h", args.members, args.short_sampler),
        ("long", long_inits, "15d", args.long_members, args.long_sampler),
    ):
        steps = 1 if kind == "short" else 30
        roller = Roller(
            model.forecaster,
            RolloutConfig(
                chunk_steps=min(steps, 10), sampler=SamplerOverride.parse(spec).apply(base)
            ),
        )
        rows = []
        for init in inits:
            ens = forecast(
                model,
                archive,
                init_time=init,
                lead=lead,
                members=members,
                seed=args.seed,
                roller=roller,
            )
            rows.append(ensemble_scores(ens, archive, TARGETS))
        out[kind] = {
            name: {
                key: np.mean([r[name][key] for r in rows], axis=0).tolist()
                for key in ("crps", "mse", "variance")
            }
            for name in rows[0]
        }
    return out


def point(
    step: int, seconds: float, scores: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """One curve point: CRPS and spread/skill at 12 h, 5 d and 15 d per target."""
    out: dict[str, Any] = {"step": step, "cpu_hours": round(seconds / 3600, 3)}
    for name, s in scores["short"].items():
        m = args.members
        out.setdefault("crps_12h", {})[name] = round(s["crps"][0], 5)
        out.setdefault("spread_skill_12h", {})[name] = round(
            float(np.sqrt((m + 1) / m * s["variance"][0] / s["mse"][0])), 4
        )
    for name, s in scores["long"].items():
        m = args.long_members
        for hours in LONG_LEADS_HOURS:
            i = hours // 12 - 1
            tag = f"{hours // 24}d"
            out.setdefault(f"crps_{tag}", {})[name] = round(s["crps"][i], 5)
            out.setdefault(f"spread_skill_{tag}", {})[name] = round(
                float(np.sqrt((m + 1) / m * s["variance"][i] / s["mse"][i])), 4
            )
    return out


def plot(
    history: list[dict[str, Any]],
    offset: tuple[int, float],
    points: list[dict[str, Any]],
    out: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    steps = [h["step"] + offset[0] for h in history]
    ax = axes[0, 0]
    if history:
        ax.plot(steps, [h["loss"] for h in history], lw=0.8, alpha=0.6, label="training")
        val = [
            (h["step"] + offset[0], h["validation_loss"]) for h in history if "validation_loss" in h
        ]
        if val:
            ax.plot(*zip(*val, strict=True), "o-", ms=3, label="validation (EMA)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("EDM loss")
    ax.set_title("loss")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    bands = sorted(
        {k for h in history for k in h if k.startswith("validation_sigma_")},
        key=lambda k: float(k.rsplit("_", 1)[1]),
    )
    for band in bands:
        pts = [(h["step"] + offset[0], h[band]) for h in history if band in h]
        ax.plot(*zip(*pts, strict=True), "o-", ms=3, label="sigma " + band.rsplit("_", 1)[1])
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("validation loss per noise level")
    if bands:
        ax.legend(fontsize=8)
    ax = axes[1, 0]
    if points:
        x = [p["step"] for p in points]
        for name, style in (("z500", "o"), ("t850", "s")):
            ref = points[0]["crps_12h"][name]
            ax.plot(
                x,
                [p["crps_12h"][name] / ref for p in points],
                style + "-",
                ms=3,
                label=f"{name} CRPS 12 h",
            )
            ax.plot(
                x,
                [p["spread_skill_12h"][name] for p in points],
                style,
                ms=3,
                ls="--",
                label=f"{name} spread/skill 12 h",
            )
        ax.axhline(1, color="k", lw=0.5)
    ax.set_xlabel("step")
    ax.set_title("one step, GenCast's sampler: CRPS (relative to first) and spread/skill")
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    if points:
        x = [p["step"] for p in points]
        for name, style in (("z500", "o"), ("t850", "s")):
            for tag, ls in (("5d", "-"), ("15d", "--")):
                ref = points[0][f"crps_{tag}"][name]
                ax.plot(
                    x,
                    [p[f"crps_{tag}"][name] / ref for p in points],
                    style,
                    ms=3,
                    ls=ls,
                    label=f"{name} CRPS {tag}",
                )
        ax.axhline(1, color="k", lw=0.5)
        hours = [p["cpu_hours"] for p in points]
        top = ax.secondary_xaxis(
            "top",
            functions=(
                lambda s: np.interp(s, x, hours),
                lambda h: np.interp(h, hours, x),
            ),
        )
        top.set_xlabel("CPU hours (2 cores)")
    ax.set_xlabel("step")
    ax.set_title("rollout, spread scale 1: CRPS relative to the first point")
    ax.legend(fontsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--archive", type=Path, default=Path("data/era5sim/val.zarr"))
    p.add_argument("--baseline", type=Path, help="a checkpoint scored as one more point")
    p.add_argument("--short-inits", type=int, default=8)
    p.add_argument("--long-inits", type=int, default=4)
    p.add_argument("--members", type=int, default=8, help="members of the 12 h ensembles")
    p.add_argument("--long-members", type=int, default=4)
    p.add_argument("--short-sampler", default="2s:20,spread_scale=1")
    p.add_argument("--long-sampler", default="2s:5,spread_scale=1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=1, help="score every k-th snapshot")
    p.add_argument("--max-snapshots", type=int, help="score at most this many new snapshots")
    p.add_argument("--out-dir", type=Path, default=None, help="default: RUN/learning_curve")
    p.add_argument("--figure", type=Path, default=None, help="default: OUT_DIR/learning_curve.png")
    args = p.parse_args()

    from weather.data.reader import open_archive
    from weather.evaluation import spaced_inits
    from weather.model.checkpoint import load_checkpoint

    out_dir = args.out_dir or args.run_dir / "learning_curve"
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = open_archive(args.archive)
    span_days = float(
        (archive["time"].values[-1] - archive["time"].values[0]) / np.timedelta64(1, "D")
    )

    def spacing(usable_days: float, count: int) -> float:
        # Whole days, so that every init falls on the same time of day as the first.
        return float(np.floor(usable_days / max(count - 1, 1)))

    short_inits = spaced_inits(
        archive, args.short_inits, spacing(span_days - 1, args.short_inits), 12, None
    )
    long_inits = spaced_inits(
        archive, args.long_inits, spacing(span_days - 16, args.long_inits), 360, None
    )
    settings = {
        k: str(v)
        for k, v in vars(args).items()
        if k not in ("every", "max_snapshots", "figure", "out_dir")
    }
    done_file = out_dir / "results.jsonl"
    done: dict[str, dict[str, Any]] = {}
    if done_file.exists():
        for line in done_file.read_text().splitlines():
            row = json.loads(line)
            if row["settings"] == settings:
                done[row["name"]] = row
    offset = run_offset(args.run_dir)
    snapshots = sorted((args.run_dir / "snapshots").glob("step_*.msgpack"))[:: args.every]
    todo: list[tuple[str, Path, int, float]] = []
    if args.baseline is not None:
        meta = load_checkpoint(args.baseline)["metadata"]
        todo.append(
            (
                f"baseline:{args.baseline}",
                args.baseline,
                int(meta.get("exported_from_step", 0)),
                float(meta.get("train_seconds", 0.0)),
            )
        )
    for snap in snapshots:
        meta = load_checkpoint(snap)["metadata"]
        todo.append(
            (
                snap.name,
                snap,
                int(meta["step"]) + offset[0],
                float(meta["train_seconds"]) + offset[1],
            )
        )
    started = time.perf_counter()
    new = 0
    for name, path, step, seconds in todo:
        if name in done:
            continue
        if args.max_snapshots is not None and new >= args.max_snapshots:
            break
        t0 = time.perf_counter()
        scores = score_checkpoint(path, archive, short_inits, long_inits, args)
        row = {
            "name": name,
            "settings": settings,
            "step": step,
            "seconds": seconds,
            "scores": scores,
            "scoring_s": round(time.perf_counter() - t0, 1),
        }
        with done_file.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        done[name] = row
        new += 1
    points = sorted(
        (point(r["step"], r["seconds"], r["scores"], args) for r in done.values()),
        key=lambda q: q["step"],
    )
    history = read_history(args.run_dir)
    figure = args.figure or out_dir / "learning_curve.png"
    plot(history, offset, points, figure)
    validation = [
        {
            "step": h["step"] + offset[0],
            "cpu_hours": round((h["seconds"] + offset[1]) / 3600, 3),
            **{k: round(v, 5) for k, v in h.items() if k.startswith("validation")},
        }
        for h in history
        if "validation_loss" in h
    ]
    print(
        json.dumps(
            {
                "run_dir": str(args.run_dir),
                "archive": str(args.archive),
                "short_inits": [str(np.datetime_as_string(t, unit="h")) for t in short_inits],
                "long_inits": [str(np.datetime_as_string(t, unit="h")) for t in long_inits],
                "short_sampler": args.short_sampler,
                "long_sampler": args.long_sampler,
                "validation": validation,
                "points": points,
                "figure": str(figure),
                "wall_s": round(time.perf_counter() - started, 1),
                "load_average_1min": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
