"""Climate drift of free-running rollouts against the truth; prints one JSON object, draws a figure.

Usage (the README's numbers; resumable: finished inits are kept in ``--out-dir``)::

    python benchmarks/climate_drift.py --checkpoint weather/assets/checkpoint.msgpack \\
        --archive data/era5sim/val.zarr --inits 3 --days 60 --members 4

From each of ``--inits`` analyses of the validation year the model runs free (no 15-day cap) for
``--days``; at every 12 h lead the global statistics of each target field (area-weighted mean,
spatial standard deviation, minimum and maximum; `weather.scoring.climate.field_statistics`) of
every member are compared with the truth's at the same valid time:

- ``mean_bias``: model mean minus truth mean (members and inits averaged), per lead; for z500 also
  in metres of geopotential height (divided by standard gravity);
- ``std_ratio``: model spatial std over truth spatial std, per lead;
- ``min_bias`` / ``max_bias``: the extremes' drift.

It also measures the per-step bias that accumulates, on ``--tendency-inits`` analyses spread over
the archive: one 12 h step from the true states, the model's mean tendency ``x(t+12h) - x(t)``
against the truth's, as a global mean (``tendency_bias``, field units per 12 h) and as the RMS
over latitude of the zonal-mean tendency difference (``zonal_tendency_bias_rms``), with the
growth per step of the spatial std (``std_growth_per_step``, model minus truth, relative).

``goals`` checks issue 13's stability goals: the z500 global mean within 20 m of the truth's and
the spatial stds of z500 and t850 within 5 % at every lead.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from weather.data.constants import GRAVITY
from weather.data.times import STEP

TARGETS: tuple[tuple[str, int | None], ...] = (
    ("geopotential", 500),
    ("temperature", 850),
    ("u_component_of_wind", 850),
    ("surface_pressure", None),
)
LABELS = {
    "geopotential": "z",
    "temperature": "t",
    "u_component_of_wind": "u",
    "v_component_of_wind": "v",
    "surface_pressure": "sp",
}
STATS = ("mean", "std", "min", "max")


def with_conserved(model: Any, spec: str) -> Any:
    """The loaded model with `ModelConfig.conserve` replaced (``"none"``: nothing conserved)."""
    import dataclasses

    from weather.forecast import LoadedModel
    from weather.model.denoiser import Forecaster

    fc = model.forecaster
    names = () if spec.strip().lower() == "none" else tuple(v.strip() for v in spec.split(","))
    config = dataclasses.replace(fc.config, conserve=names)
    rebuilt = Forecaster(config, fc.normalization, fc.latitude, fc.longitude)
    return LoadedModel(rebuilt, model.params, model.metadata, model.path)


def label(name: str, level: int | None) -> str:
    return LABELS.get(name, name) + ("" if level is None else str(level))


def channel_index(task: Any, name: str, level: int | None) -> int:
    """Index of a (variable, level) in the model's state channels."""
    return int(task.channel_names().index(name if level is None else f"{name}@{level}"))


def truth_fields(archive: Any, times: np.ndarray, name: str, level: int | None) -> np.ndarray:
    """The truth's ``[time, lat, lon]`` field at `times` (physical units)."""
    field = archive[name]
    if level is not None:
        field = field.sel(level=level)
    return np.asarray(field.sel(time=times).values, np.float64)


def drift_of_init(
    model: Any,
    roller: Any,
    archive: Any,
    init: np.datetime64,
    steps: int,
    members: int,
    seed: int,
    targets: list[tuple[str, int | None]],
) -> dict[str, Any]:
    """Per target and statistic: model ``[lead, member]`` and truth ``[lead]`` (NaN past the
    archive's end), for one free run."""
    from weather.forecast import initial_states
    from weather.scoring.climate import field_statistics

    fc = model.forecaster
    previous, current, static = initial_states(archive, fc, init)
    lat = fc.latitude
    index = {t: channel_index(fc.task, *t) for t in targets}
    model_stats: dict[str, dict[str, list[np.ndarray]]] = {
        label(*t): {s: [] for s in STATS} for t in targets
    }
    for _lo, states in roller.run(
        model.params,
        previous=previous,
        current=current,
        static=static,
        init_time=init,
        steps=steps,
        members=members,
        seed=seed,
    ):
        for target, c in index.items():
            stats = field_statistics(states[..., c], lat)  # [k, M]
            for s in STATS:
                model_stats[label(*target)][s].append(stats[s])
    times = init + STEP * np.arange(1, steps + 1)
    have = np.isin(times, archive["time"].values)
    out: dict[str, Any] = {"init": str(np.datetime_as_string(init, unit="h"))}
    for target in targets:
        name = label(*target)
        truth = np.full((steps,), np.nan)
        truth_stats = {s: truth.copy() for s in STATS}
        if have.any():
            stats = field_statistics(truth_fields(archive, times[have], *target), lat)
            for s in STATS:
                truth_stats[s][have] = stats[s]
        out[name] = {
            s: {
                "model": np.concatenate(model_stats[name][s]).tolist(),
                "truth": truth_stats[s].tolist(),
            }
            for s in STATS
        }
    return out


def tendency_bias(
    model: Any,
    roller: Any,
    archive: Any,
    inits: np.ndarray,
    members: int,
    seed: int,
    targets: list[tuple[str, int | None]],
) -> dict[str, Any]:
    """One 12 h step from the true states at each init: the model's mean tendency against the
    truth's (global mean, zonal mean, spatial std growth)."""
    from weather.forecast import initial_states
    from weather.scoring.climate import field_statistics, global_mean, zonal_mean

    fc = model.forecaster
    lat = fc.latitude
    acc: dict[str, dict[str, list[Any]]] = {
        label(*t): {"model": [], "truth": [], "zonal": [], "std_model": [], "std_truth": []}
        for t in targets
    }
    for init in inits:
        previous, current, static = initial_states(archive, fc, init)
        (_, states), *_ = roller.run(
            model.params,
            previous=previous,
            current=current,
            static=static,
            init_time=init,
            steps=1,
            members=members,
            seed=seed,
        )
        after = np.asarray(states[0], np.float64)  # [M, H, W, C]
        valid = init + STEP
        for target in targets:
            c = channel_index(fc.task, *target)
            now = np.asarray(current[..., c], np.float64)
            true_next = truth_fields(archive, np.asarray([valid]), *target)[0]
            model_tend = after[..., c] - now  # [M, H, W]
            true_tend = true_next - now
            name = label(*target)
            acc[name]["model"].append(global_mean(model_tend, lat).mean())
            acc[name]["truth"].append(float(global_mean(true_tend, lat)))
            acc[name]["zonal"].append(zonal_mean(model_tend).mean(axis=0) - zonal_mean(true_tend))
            std_now = field_statistics(now, lat)["std"]
            acc[name]["std_model"].append(
                field_statistics(after[..., c], lat)["std"].mean() / std_now - 1
            )
            acc[name]["std_truth"].append(field_statistics(true_next, lat)["std"] / std_now - 1)
    weights = _latitude_weights(lat)
    out: dict[str, Any] = {}
    for name, a in acc.items():
        zonal = np.mean(a["zonal"], axis=0)
        out[name] = {
            "model_mean_tendency": float(np.mean(a["model"])),
            "truth_mean_tendency": float(np.mean(a["truth"])),
            "tendency_bias": float(np.mean(a["model"]) - np.mean(a["truth"])),
            "zonal_tendency_bias_rms": float(np.sqrt(np.sum(weights * zonal**2))),
            "std_growth_per_step": float(np.mean(a["std_model"]) - np.mean(a["std_truth"])),
        }
    return out


def _latitude_weights(lat: np.ndarray) -> np.ndarray:
    from weather.data.grid import cell_area_weights

    w = cell_area_weights(np.sort(lat))
    return w / w.sum()


def summarise(rows: list[dict[str, Any]], targets: list[tuple[str, int | None]]) -> dict[str, Any]:
    """Averages over inits and members of each statistic's bias or ratio, per lead."""
    out: dict[str, Any] = {}
    for target in targets:
        name = label(*target)
        entry: dict[str, Any] = {}
        for s in STATS:
            model = np.asarray([r[name][s]["model"] for r in rows])  # [init, lead, member]
            truth = np.asarray([r[name][s]["truth"] for r in rows])  # [init, lead]
            if s == "std":
                ratio = model.mean(axis=2) / truth
                entry["std_ratio"] = _rounded(np.nanmean(ratio, axis=0))
                entry["std_ratio_worst_member"] = _rounded(
                    np.nanmax(np.abs(model / truth[..., None] - 1), axis=(0, 2))
                )
            else:
                entry[f"{s}_bias"] = _rounded(np.nanmean(model.mean(axis=2) - truth, axis=0))
        if target[0] == "geopotential":
            entry["mean_bias_m"] = _rounded(np.asarray(entry["mean_bias"]) / GRAVITY)
        out[name] = entry
    return out


def _rounded(x: np.ndarray, digits: int = 4) -> list[float | None]:
    return [None if not np.isfinite(v) else float(f"{v:.{digits}g}") for v in np.asarray(x)]


def goals(summary: dict[str, Any], days_checked: float) -> dict[str, Any]:
    """Issue 13's stability goals over the leads where the truth exists."""

    def worst(values: list[float | None], reference: float) -> float:
        v = np.asarray([np.nan if x is None else x for x in values], np.float64)
        return float(np.nanmax(np.abs(v - reference)))

    z = summary.get("z500", {})
    t = summary.get("t850", {})
    out: dict[str, Any] = {"days": days_checked}
    if z:
        out["z500_mean_within_20m"] = {
            "worst_m": round(worst(z["mean_bias_m"], 0.0), 1),
            "met": worst(z["mean_bias_m"], 0.0) <= 20.0,
        }
        out["z500_std_within_5pct"] = {
            "worst_pct": round(100 * worst(z["std_ratio"], 1.0), 1),
            "met": worst(z["std_ratio"], 1.0) <= 0.05,
        }
    if t:
        out["t850_std_within_5pct"] = {
            "worst_pct": round(100 * worst(t["std_ratio"], 1.0), 1),
            "met": worst(t["std_ratio"], 1.0) <= 0.05,
        }
    return out


def plot(rows: list[dict[str, Any]], targets: list[tuple[str, int | None]], out: Path) -> None:
    """Global-mean bias (top) and spatial-std ratio (bottom) against lead, one line per init."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = {"z500": "m", "t850": "K", "u850": "m s-1", "sp": "Pa"}
    fig, axes = plt.subplots(
        2, len(targets), figsize=(3.4 * len(targets), 5.6), constrained_layout=True, sharex=True
    )
    days = 0.5 * np.arange(1, len(rows[0][label(*targets[0])]["mean"]["truth"]) + 1)
    for j, target in enumerate(targets):
        name = label(*target)
        scale = GRAVITY if target[0] == "geopotential" else 1.0
        for r in rows:
            model = np.asarray(r[name]["mean"]["model"])
            truth = np.asarray(r[name]["mean"]["truth"])
            axes[0, j].plot(days, (model.mean(axis=1) - truth) / scale, lw=1, label=r["init"])
            std_m = np.asarray(r[name]["std"]["model"])
            std_t = np.asarray(r[name]["std"]["truth"])
            axes[1, j].plot(days, std_m.mean(axis=1) / std_t, lw=1)
        axes[0, j].axhline(0, color="k", lw=0.5)
        axes[1, j].axhline(1, color="k", lw=0.5)
        if target[0] == "geopotential":
            for y in (-20, 20):
                axes[0, j].axhline(y, color="grey", lw=0.5, ls="--")
        if target[0] in ("geopotential", "temperature"):
            for y in (0.95, 1.05):
                axes[1, j].axhline(y, color="grey", lw=0.5, ls="--")
        axes[0, j].set_title(f"{name}: global mean, model - truth")
        axes[0, j].set_ylabel(units.get(name, ""))
        axes[1, j].set_title(f"{name}: spatial std, model / truth")
        axes[1, j].set_xlabel("lead (days)")
    axes[0, 0].legend(fontsize=7, title="init")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped one")
    p.add_argument("--archive", type=Path, default=Path("data/era5sim/val.zarr"))
    p.add_argument("--inits", type=int, default=3)
    p.add_argument("--spacing-days", type=float, default=100.0)
    p.add_argument("--first", default=None, help="first init (default: the archive's first)")
    p.add_argument("--days", type=float, default=60.0, help="free-run length (default 60)")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", help="sampler spec (default: the checkpoint's own)")
    p.add_argument(
        "--conserve",
        help="comma-separated surface variables whose global mean each step keeps (overrides "
        "the checkpoint's; 'none' for none), e.g. surface_pressure",
    )
    p.add_argument("--tendency-inits", type=int, default=24)
    p.add_argument("--chunk-steps", type=int, default=10)
    p.add_argument("--out-dir", type=Path, default=Path("data/benchmarks/climate_drift"))
    p.add_argument("--figure", type=Path, default=None, help="default: OUT_DIR/climate_drift.png")
    args = p.parse_args()

    from weather.data.reader import open_archive
    from weather.defaults import DEFAULT_CHECKPOINT
    from weather.evaluation import spaced_inits
    from weather.forecast import load_forecaster
    from weather.model.rollout import Roller, RolloutConfig
    from weather.model.sampler import SamplerOverride

    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    model = load_forecaster(checkpoint)
    if args.conserve is not None:
        model = with_conserved(model, args.conserve)
    sampler = (
        SamplerOverride.parse(args.sampler).apply(model.forecaster.config.sampler)
        if args.sampler
        else model.forecaster.config.sampler
    )
    archive = open_archive(args.archive)
    steps = round(args.days * 2)
    targets = [t for t in TARGETS if t[0] in archive]
    times = archive["time"].values
    # Inits spaced through the archive; the free run may outlast the truth (then only the
    # model's statistics exist past its end), but the first init must have a 12 h history.
    inits = spaced_inits(archive, args.inits, args.spacing_days, 12, args.first)
    roller = Roller(model.forecaster, RolloutConfig(chunk_steps=args.chunk_steps, sampler=sampler))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "conserve": list(model.forecaster.config.conserve),
        "checkpoint": str(checkpoint),
        "checkpoint_mtime": os.path.getmtime(checkpoint),
        "sampler": args.sampler,
        "members": args.members,
        "seed": args.seed,
        "steps": steps,
    }
    done_file = args.out_dir / "results.jsonl"
    rows: dict[str, dict[str, Any]] = {}
    if done_file.exists():
        for line in done_file.read_text().splitlines():
            row = json.loads(line)
            if row.get("settings") == settings:
                rows[row["init"]] = row
    started = time.perf_counter()
    for init in inits:
        name = str(np.datetime_as_string(init, unit="h"))
        if name in rows:
            continue
        t0 = time.perf_counter()
        row = drift_of_init(model, roller, archive, init, steps, args.members, args.seed, targets)
        row["settings"] = settings
        row["seconds"] = round(time.perf_counter() - t0, 1)
        with done_file.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        rows[name] = row
    ordered = [rows[str(np.datetime_as_string(i, unit="h"))] for i in inits]
    one_step = Roller(model.forecaster, RolloutConfig(chunk_steps=1, sampler=sampler))
    tendency_times = np.linspace(2, times.size - 3, args.tendency_inits).astype(int)
    tendency = tendency_bias(
        model,
        one_step,
        archive,
        times[tendency_times].astype("datetime64[ns]"),
        args.members,
        args.seed,
        targets,
    )
    summary = summarise(ordered, targets)
    truth_days = float(np.sum(np.isfinite(ordered[0][label(*targets[0])]["mean"]["truth"])) / 2)
    figure = args.figure or args.out_dir / "climate_drift.png"
    plot(ordered, targets, figure)
    print(
        json.dumps(
            {
                "checkpoint": os.path.basename(checkpoint),
                "archive": str(args.archive),
                "sampler": json.loads(json.dumps(vars(sampler), default=str)),
                "conserve": list(model.forecaster.config.conserve),
                "inits": [r["init"] for r in ordered],
                "members": args.members,
                "days": args.days,
                "lead_days_reported": [0.5 * (i + 1) for i in range(steps)],
                "summary": summary,
                "tendency": tendency,
                "goals": goals(summary, truth_days),
                "figure": str(figure),
                "wall_s": round(time.perf_counter() - started, 1),
                "load_average_1min": round(os.getloadavg()[0], 2),
            },
        )
    )


if __name__ == "__main__":
    main()
