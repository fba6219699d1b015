"""The evaluation's figures: scores by lead, scorecard, ranks and maps, the demo's forecast maps
and an archive's overview. (One forecast's map and meteogram for the service are
`weather.evaluation.maps`, which shares this module's display units.)

Each function draws one PNG (matplotlib, Agg: no display needed) and returns its path. Scores
come from ``scores.nc`` (dims ``model, metric, lead_time[, level]``); forecasts from
`weather.evaluation.run.finished_forecasts` (dims ``member, init_time, lead_time, [level,] latitude,
longitude``); the truth is a canonical analysis archive (``time, [level,] latitude,
longitude``). Leads are drawn in days.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from weather.data.constants import GRAVITY
from weather.evaluation.report import HEADLINE, target_label

Target = tuple[str, int | None]
DAY = np.timedelta64(1, "D")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _days(leads: np.ndarray) -> np.ndarray:
    return np.asarray(leads).astype("timedelta64[ns]") / DAY


def _day(lead: np.timedelta64) -> str:
    return f"day {float(_days(np.asarray(lead))):g}"


def _select(field: xr.DataArray, level: int | None) -> xr.DataArray:
    return field if level is None else field.sel(level=level)


def _present(data: xr.Dataset, targets: Sequence[Target]) -> list[Target]:
    return [
        (name, level)
        for name, level in targets
        if name in data and (level is None or level in data[name]["level"].values)
    ]


def _panels(plt: Any, count: int, width: float = 4.2, height: float = 3.0) -> tuple[Any, Any]:
    cols = min(3, max(count, 1))
    rows = -(-max(count, 1) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows), squeeze=False, constrained_layout=True
    )
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes.flat


def _save(plt: Any, fig: Any, out: str | Path) -> Path:
    path = Path(out)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def metric_vs_lead(
    scores: xr.Dataset,
    out: str | Path,
    *,
    metric: str = "crps",
    targets: Sequence[Target] = HEADLINE,
) -> Path:
    """One panel per target: ``metric`` against lead (days), a line per model with any value.

    Args:
      scores: dims ``(model, metric, lead_time[, level])``.
      out: PNG path.
      metric: a ``metric`` coordinate value (``crps``, ``rmse``, ``spread_skill``).
      targets: (variable, level or None) pairs; those absent from the scores are left out.
    """
    plt = _pyplot()
    present = _present(scores, targets)
    fig, axes = _panels(plt, len(present))
    days = _days(scores["lead_time"].values)
    for ax, (name, level) in zip(axes, present, strict=False):
        field = _select(scores[name].sel(metric=metric), level)
        for model in scores["model"].values:
            values = field.sel(model=model).values
            if np.isfinite(values).any():  # persistence has no spread/skill
                ax.plot(days, values, marker=".", label=str(model))
        if metric == "spread_skill":
            ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
            units = "1"
        else:
            units = scores[name].attrs.get("variable_units", "")
        ax.set_title(target_label(name, level))
        ax.set_xlabel("lead (days)")
        ax.set_ylabel(f"{metric} ({units})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{metric} against lead time")
    return _save(plt, fig, out)


def scorecard_figure(card: xr.Dataset, out: str | Path, *, limit: float = 20.0) -> Path:
    """GenCast-style scorecard: one panel per variable, levels x leads, coloured by percent.

    Args:
      card: `weather.evaluation.scorecard` (percent, dims ``lead_time[, level]``; attrs ``model``
        and ``reference``).
      out: PNG path.
      limit: percent at which the diverging colours saturate (blue: ``model`` better, red:
        the reference better, white: equal).
    """
    from matplotlib.colors import Normalize

    plt = _pyplot()
    names = [str(n) for n in card.data_vars]
    heights = [card[n].sizes.get("level", 1) + 1.5 for n in names]
    fig, axes = plt.subplots(
        len(names),
        1,
        figsize=(9, 0.32 * sum(heights) + 1.2),
        squeeze=False,
        constrained_layout=True,
        gridspec_kw={"height_ratios": heights},
    )
    days = _days(card["lead_time"].values)
    edges = np.concatenate([[days[0] - 0.25], (days[1:] + days[:-1]) / 2, [days[-1] + 0.25]])
    norm = Normalize(vmin=-limit, vmax=limit)
    mesh = None
    for ax, name in zip(axes[:, 0], names, strict=True):
        field = card[name]
        if "level" in field.dims:
            values = field.transpose("level", "lead_time").values
            rows = [str(int(p)) for p in field["level"].values]
        else:
            values = field.values[None, :]
            rows = ["surface"]
        mesh = ax.pcolormesh(
            edges, np.arange(len(rows) + 1), values, cmap="RdBu_r", norm=norm, shading="flat"
        )
        ax.set_yticks(np.arange(len(rows)) + 0.5, rows, fontsize=7)
        ax.invert_yaxis()  # low pressure (high up) at the top
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel("lead (days)")
    if mesh is not None:
        bar = fig.colorbar(mesh, ax=axes[:, 0].tolist(), extend="both", shrink=0.6)
        bar.set_label("% difference (blue: model better)")
    model, reference = card.attrs.get("model", "model"), card.attrs.get("reference", "reference")
    metric = card.attrs.get("metric", "crps")
    fig.suptitle(f"{metric}: {model} against {reference}, 100 (model - ref) / ref")
    return _save(plt, fig, out)


def available_leads(leads: np.ndarray, days: Sequence[float] = (1, 5, 10)) -> list[np.timedelta64]:
    """The leads among ``days`` that ``leads`` holds, else its first, middle and last leads."""
    have = np.asarray(leads).astype("timedelta64[ns]")
    wanted = [np.timedelta64(round(d * 24), "h").astype("timedelta64[ns]") for d in days]
    chosen = [w for w in wanted if w in have]
    if chosen:
        return chosen
    picks = sorted({0, have.size // 2, have.size - 1})
    return [have[i] for i in picks]


def rank_histograms(
    forecasts: Mapping[str, xr.Dataset],
    truth: xr.Dataset,
    out: str | Path,
    *,
    targets: Sequence[Target] = HEADLINE,
    lead_days: Sequence[float] = (1, 5, 10),
) -> Path:
    """Rank histograms (`weather.scoring.rank_histogram`) per target (rows) and lead (columns).

    One step line per ensemble forecaster (two members or more); frequencies are normalised so
    that a calibrated ensemble is flat at 1 and ranks are drawn on [0, 1] so ensembles of any
    size share an axis. Counts are over every point and init time (not area weighted).

    Args:
      forecasts: name -> forecast Dataset; one-member forecasters are left out.
      truth: the analysis archive holding every valid time.
      out: PNG path.
      targets: (variable, level or None) pairs; those absent are left out.
      lead_days: leads to show (`available_leads` when none of them is forecast).
    """
    from weather.scoring import align_truth, rank_histogram

    plt = _pyplot()
    ensembles = {n: f for n, f in forecasts.items() if f.sizes["member"] > 1}
    if not ensembles:
        raise ValueError("rank_histograms: no forecaster has two members or more")
    first = next(iter(ensembles.values()))
    leads = available_leads(first["lead_time"].values, lead_days)
    present = _present(first, targets)
    fig, axes = plt.subplots(
        len(present),
        len(leads),
        figsize=(3.2 * len(leads), 2.2 * len(present)),
        squeeze=False,
        constrained_layout=True,
    )
    for row, (name, level) in enumerate(present):
        for name_model, forecast in ensembles.items():
            field = _select(forecast[name], level).sel(lead_time=leads)
            if field.chunks is not None:
                field = field.chunk({"member": -1})  # the rank kernel needs every member at once
            target = align_truth(field, _select(truth[name], level)).drop_vars("valid_time")
            counts = rank_histogram(field, target).values  # [rank, lead]
            m = forecast.sizes["member"]
            edges = np.linspace(0.0, 1.0, m + 2)
            for col in range(len(leads)):
                frequency = counts[:, col] / np.nanmean(counts[:, col])
                axes[row, col].stairs(frequency, edges, label=name_model)
        for col, lead in enumerate(leads):
            ax = axes[row, col]
            ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
            ax.set_title(f"{target_label(name, level)}, {_day(lead)}", fontsize=9)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("rank of the truth / members")
    fig.suptitle("rank histograms (flat at 1: calibrated)")
    return _save(plt, fig, out)


def _display(name: str, field: xr.DataArray) -> tuple[np.ndarray, str]:
    """Values and units as mapped: geopotential as height (m), surface pressure in hPa."""
    values = np.asarray(field.values, dtype=np.float64)
    if name == "geopotential":
        return values / GRAVITY, "m"
    if name == "surface_pressure":
        return values / 100.0, "hPa"
    return values, str(field.attrs.get("units", ""))


def member_maps(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    out: str | Path,
    *,
    variable: str = "geopotential",
    level: int | None = 500,
    lead_days: Sequence[float] = (1, 5, 10),
    members: int = 4,
    init_index: int = 0,
) -> Path:
    """Maps of the truth next to the first ``members`` members, a row per lead.

    Args:
      forecast: one forecaster's forecasts; its ``init_index``-th init time is drawn.
      truth: the analysis archive (valid times ``init + lead``).
      out: PNG path.
      variable, level: the field (level None for surface fields).
      lead_days: leads to show (`available_leads` when none of them is forecast).
      members: how many members (at most the ensemble size).
      init_index: which init time.
    """
    plt = _pyplot()
    init = forecast["init_time"].values[init_index]
    leads = available_leads(forecast["lead_time"].values, lead_days)
    chosen = forecast["member"].values[:members]
    fig, axes = plt.subplots(
        len(leads),
        1 + len(chosen),
        figsize=(3.2 * (1 + len(chosen)), 2.2 * len(leads)),
        squeeze=False,
        constrained_layout=True,
    )
    lon, lat = forecast["longitude"].values, forecast["latitude"].values
    units = ""
    for row, lead in enumerate(leads):
        day = _day(lead)
        ref, units = _display(variable, _select(truth[variable], level).sel(time=init + lead))
        field = _select(forecast[variable], level).isel(init_time=init_index).sel(lead_time=lead)
        panels = [("truth", ref)] + [
            (f"member {int(m)}", _display(variable, field.sel(member=m))[0]) for m in chosen
        ]
        lo, hi = float(np.nanmin(ref)), float(np.nanmax(ref))
        mesh = None
        for col, (title, values) in enumerate(panels):
            ax = axes[row, col]
            mesh = ax.pcolormesh(lon, lat, values, vmin=lo, vmax=hi, cmap="viridis", shading="auto")
            ax.set_title(f"{title}, {day}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(mesh, ax=axes[row, -1], label=units)
    label = target_label(variable, level)
    when = np.datetime_as_string(init, unit="h")
    fig.suptitle(f"{label} ({units}): truth and members from {when}")
    return _save(plt, fig, out)


def forecast_figure(ens: xr.Dataset, truth: xr.Dataset, out: Path) -> Path:
    """z500 maps: the truth next to three members and the ensemble spread at days 1, 5 and 10."""
    plt = _pyplot()
    init = ens["init_time"].values[0]
    leads = [d for d in (1, 5, 10) if np.timedelta64(d, "D") <= ens["lead_time"].values[-1]]
    members = [int(m) for m in ens["member"].values[:3]]
    fig, axes = plt.subplots(
        len(leads),
        2 + len(members),
        figsize=(3.2 * (2 + len(members)), 2.2 * len(leads)),
        squeeze=False,
        constrained_layout=True,
    )
    lon, lat = ens["longitude"].values, ens["latitude"].values
    for row, day in enumerate(leads):
        lead = np.timedelta64(day, "D")
        z = ens["geopotential"].sel(level=500, lead_time=lead).isel(init_time=0).load() / GRAVITY
        ref = truth["geopotential"].sel(level=500, time=init + lead).load() / GRAVITY
        lo, hi = float(ref.min()), float(ref.max())
        panels = [("truth", ref.values)] + [
            (f"member {m}", z.sel(member=m).values) for m in members
        ]
        for col, (title, field) in enumerate(panels):
            ax = axes[row, col]
            ax.pcolormesh(lon, lat, field, vmin=lo, vmax=hi, cmap="viridis", shading="auto")
            ax.set_title(f"{title}, day {day}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        ax = axes[row, -1]
        mesh = ax.pcolormesh(lon, lat, z.std("member").values, cmap="magma", shading="auto")
        fig.colorbar(mesh, ax=ax)
        ax.set_title(f"spread (m), day {day}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"z500 (m) from {np.datetime_as_string(init, unit='h')}")
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def archive_overview(ds: xr.Dataset, time_index: int, out: str | Path) -> Path:
    """A four-panel PNG: z500 and t850 maps, zonal-mean u (level x latitude), surface pressure.

    Args:
      ds: canonical archive (time, level, latitude, longitude).
      time_index: which time to map.
      out: PNG path.
    """
    plt = _pyplot()
    snap = ds.isel(time=time_index).load()
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), constrained_layout=True)
    lon, lat = snap["longitude"].values, snap["latitude"].values
    panels = [
        (axes[0, 0], snap["geopotential"].sel(level=500) / GRAVITY, "z500 (m)", "viridis"),
        (axes[0, 1], snap["temperature"].sel(level=850, method="nearest"), "t850 (K)", "RdBu_r"),
        (axes[1, 1], snap["surface_pressure"] / 100, "surface pressure (hPa)", "cividis"),
    ]
    for ax, field, title, cmap in panels:
        mesh = ax.pcolormesh(lon, lat, np.asarray(field), cmap=cmap, shading="auto")
        fig.colorbar(mesh, ax=ax)
        ax.set_title(title)
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
    u = ds["u_component_of_wind"].mean(("time", "longitude")).load()
    ax = axes[1, 0]
    mesh = ax.contourf(lat, u["level"].values, np.asarray(u), levels=21, cmap="RdBu_r")
    fig.colorbar(mesh, ax=ax)
    ax.invert_yaxis()
    ax.set_title("zonal-mean u, time mean (m/s)")
    ax.set_xlabel("latitude")
    ax.set_ylabel("pressure (hPa)")
    fig.suptitle(f"{np.datetime_as_string(snap['time'].values, unit='h')}")
    path = Path(out)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


__all__ = [
    "archive_overview",
    "available_leads",
    "forecast_figure",
    "member_maps",
    "metric_vs_lead",
    "rank_histograms",
    "scorecard_figure",
]
