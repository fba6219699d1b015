"""Ensemble spread against error per band of spatial scales; prints one JSON object, draws a figure.

Usage (on the forecasts of an evaluation, e.g. the validation screen of the README)::

    python benchmarks/spread_by_scale.py data/val-ship-s0 [data/val-other ...] \\
        --archive data/era5sim/val.zarr --figure docs/spread_by_scale.png

The global spread/skill ratio of a target mixes every scale: a 15-day ensemble can be
calibrated on average while its planetary waves (degrees 0-3 of the spherical harmonics, half
wavelengths of 5000 km and more) are under-dispersed and its synoptic eddies over-dispersed.
For each `weather evaluate` out-dir given (the ``model`` forecaster's finished stores), each
headline target and each lead, every member's deviation from the ensemble mean and the ensemble
mean's error are analysed into spherical harmonics (`weather.scoring.spectra`); summed over
init times and over the degrees of each ``--bands`` entry they give

- ``spread_skill``: ``sqrt((M + 1) / M * variance / squared error)``, 1 where the ensemble is
  calibrated at those scales;
- ``spread`` and ``error``: the band's RMS ensemble spread and ensemble-mean error (field units,
  the band's share of the global RMS);
- ``power_ratio``: the members' mean power over the truth's in the band (1: the forecast fields
  carry the truth's variance at those scales; below 1: smoother, above: rougher).

The sums over degrees of every band reproduce the global spread and RMSE up to the grid's
quadrature (the ``all`` band). Nothing is sampled here: the forecasts are read as they are.

``--all-channels`` scores every level of every variable instead of the headline targets, and
``--suggest`` adds ``degree_scales_text``: for each channel and band, the factor that would
calibrate the first lead's spread there (``1 / spread_skill``, the out-dirs averaged, clipped
to [0.5, 2]) as `weather evaluate --sampler` text (``degree_scale.CHANNEL.FIRST=F``, entries
within 5 % of 1 left out). The deviation that the sampler shapes is what makes the first
step's spread, so at the first lead the factors act one to one, as tau does per channel.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_BANDS = "0-3,4-7,8-15,16-31"


def parse_bands(text: str) -> list[tuple[int, int]]:
    """``"0-3,4-7"`` -> ``[(0, 3), (4, 7)]`` (inclusive degree ranges)."""
    bands = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        if not sep or not first.isdigit() or not last.isdigit() or int(first) > int(last):
            raise SystemExit(f"--bands: {part!r} is not FIRST-LAST with FIRST <= LAST")
        bands.append((int(first), int(last)))
    return bands


def target_label(name: str, level: int | None) -> str:
    short = {
        "geopotential": "z",
        "temperature": "t",
        "u_component_of_wind": "u",
        "v_component_of_wind": "v",
        "surface_pressure": "sp",
    }.get(name, name)
    return short if level is None else f"{short}{level}"


def scale_scores(
    forecast: Any,
    truth: Any,
    targets: list[tuple[str, int | None]],
    leads_hours: list[int],
    bands: list[tuple[int, int]],
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{target: {lead_hours: {band: scores}}}`` for one forecaster's joined stores."""
    from weather.data.harmonics import SphericalTransform
    from weather.scoring.metrics import align_truth
    from weather.scoring.spectra import spread_skill_by_degree

    lat, lon = forecast["latitude"].values, forecast["longitude"].values
    if not (
        np.array_equal(lat, truth["latitude"].values)
        and np.array_equal(lon, truth["longitude"].values)
    ):
        raise SystemExit("--archive: its latitude/longitude differ from the forecasts' grid")
    transform = SphericalTransform.build(lat, lon)
    wanted = [*bands, (0, transform.max_degree)]
    names = [f"{a}-{b}" for a, b in bands] + ["all"]
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for name, level in targets:
        if name not in forecast:
            continue
        per_lead: dict[str, dict[str, dict[str, float]]] = {}
        for hours in leads_hours:
            lead = np.timedelta64(hours, "h")
            if lead not in forecast["lead_time"].values:
                continue
            field = forecast[name].sel(lead_time=lead)
            if level is not None:
                field = field.sel(level=level)
            field = field.transpose("member", "init_time", "latitude", "longitude").load()
            true = align_truth(field, truth[name], missing="raise")
            if level is not None:
                true = true.sel(level=level)
            true = true.transpose("init_time", "latitude", "longitude").values
            members = field.sizes["member"]
            spread2, error2, _ = spread_skill_by_degree(transform, field.values, true, wanted)
            spread2, error2 = spread2.sum(axis=0), error2.sum(axis=0)  # over inits
            forecast_power = transform.power(field.values).mean(axis=0).sum(axis=0)
            truth_power = transform.power(true).sum(axis=0)
            per_band = {}
            for i, (band, (a, b)) in enumerate(zip(names, wanted, strict=True)):
                n = true.shape[0]
                per_band[band] = {
                    "spread_skill": float(
                        np.sqrt((members + 1) / members * spread2[i] / error2[i])
                    ),
                    "spread": float(np.sqrt(spread2[i] / n)),
                    "error": float(np.sqrt(error2[i] / n)),
                    "power_ratio": float(
                        forecast_power[a : b + 1].sum() / truth_power[a : b + 1].sum()
                    ),
                }
            per_lead[str(hours)] = per_band
        out[target_label(name, level)] = per_lead
    return out


def suggest(
    runs: dict[str, dict[str, Any]], channels: dict[str, str], lead: str, bands: list[str]
) -> str:
    """``degree_scale.CHANNEL.FIRST=F`` entries calibrating ``lead``'s spread per band.

    A factor holds from its entry's degree up to the next entry, so an entry is written
    wherever a channel's factor changes from the band below (1 below the first band).
    """
    entries = []
    for label, channel in channels.items():
        previous = 1.0
        for band in bands:
            ratios = [r[label][lead][band]["spread_skill"] for r in runs.values() if label in r]
            factor = round(float(np.clip(1.0 / np.mean(ratios), 0.5, 2.0)), 2)
            factor = 1.0 if abs(factor - 1.0) < 0.05 else factor
            if factor != previous:
                entries.append(f"degree_scale.{channel}.{band.partition('-')[0]}={factor:g}")
            previous = factor
    return ",".join(entries)


def draw(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    targets = list(next(iter(runs.values())).keys())
    fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3.2), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, target in zip(axes[0], targets, strict=True):
        for r, scores in enumerate(runs.values()):
            per_lead = scores[target]
            leads = [int(h) for h in per_lead]
            for b, band in enumerate(result["bands"]):
                ys = [per_lead[str(h)][band]["spread_skill"] for h in leads]
                label = band if r == 0 else None
                color = "black" if band == "all" else f"C{b}"  # one colour per band, all runs
                ax.plot(np.array(leads) / 24, ys, styles[r % 4], label=label, color=color)
        ax.axhspan(0.8, 1.2, color="0.9")
        ax.axhline(1.0, color="0.5", lw=0.5)
        ax.set_title(target)
        ax.set_xlabel("lead (days)")
    axes[0, 0].set_ylabel("spread/skill")
    axes[0, 0].legend(title="degrees", fontsize=7)
    fig.suptitle(
        " vs ".join(f"{Path(r).name} ({styles[i % 4]})" for i, r in enumerate(runs)), fontsize=8
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from weather.data.reader import open_archive
    from weather.evaluation.report import HEADLINE, TABLE_LEADS_HOURS
    from weather.evaluation.run import finished_forecasts

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "out_dirs", nargs="+", help="`weather evaluate` out-dirs (their model forecasts)"
    )
    parser.add_argument("--archive", required=True, help="the truth (the evaluation's archive)")
    parser.add_argument(
        "--leads", default=",".join(str(h) for h in TABLE_LEADS_HOURS), help="hours"
    )
    parser.add_argument("--bands", default=DEFAULT_BANDS, help="degree ranges, FIRST-LAST,...")
    parser.add_argument("--forecaster", default="model")
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--all-channels", action="store_true", help="every level of every variable")
    parser.add_argument(
        "--suggest", action="store_true", help="degree_scale text calibrating the first lead"
    )
    args = parser.parse_args(argv)
    bands = parse_bands(args.bands)
    leads = [int(h) for h in args.leads.split(",")]
    start = time.perf_counter()
    truth = open_archive(args.archive)
    runs = {}
    targets: list[tuple[str, int | None]] = list(HEADLINE)
    for out_dir in args.out_dirs:
        forecast = finished_forecasts(out_dir, args.forecaster)
        if args.all_channels:
            targets = [
                (str(name), None if "level" not in forecast[name].dims else int(level))
                for name in forecast.data_vars
                for level in (forecast["level"].values if "level" in forecast[name].dims else [0])
            ]
        runs[out_dir] = scale_scores(forecast, truth, targets, leads, bands)
    result: dict[str, Any] = {
        "benchmark": "spread_by_scale",
        "archive": args.archive,
        "bands": [f"{a}-{b}" for a, b in bands] + ["all"],
        "runs": runs,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if args.suggest:
        channels = {target_label(n, lv): n if lv is None else f"{n}@{lv}" for n, lv in targets}
        result["degree_scales_text"] = suggest(
            runs, channels, str(leads[0]), [f"{a}-{b}" for a, b in bands]
        )
    if args.figure is not None:
        draw(result, args.figure)
        result["figure"] = str(args.figure)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
