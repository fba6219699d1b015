"""Running an evaluation: every forecaster forecasts the same init times, then all are scored.

Layout under the output directory (every step resumable: rerun the same call and finished work
is kept):

- ``forecasts/<name>/<init>.zarr``: one store per forecaster and init time, in the forecast
  layout (`weather.data.layout`); ``<init>.zarr.done`` marks a finished one, so an interrupted
  forecast is redone from scratch rather than scored half-written;
- ``settings.json``: what the forecasts were made with (`check_settings`);
- ``scores.nc``: dims ``(model, metric, lead_time[, level])``, one data variable per forecast
  variable, scored with `weather.scoring.batch.score_archive` against the analysis archive:
  global means; forecasters scored by an earlier call on the same init times, members and
  leads stay in it beside the ones scored now (`score`), so forecasters run one call at a time
  end up in one table;
- ``scores_by_region.nc``: the same scores per WeatherBench2 region
  (`weather.scoring.regions.HEADLINE_REGIONS`: global, tropics, extra-tropics-north and -south),
  dims ``(model, metric, region, lead_time[, level])``.

Forecasters are `weather.baselines.EnsembleForecaster`s (the diffusion model and the
baselines alike), run by `run_forecaster`.

Conventions: ``crps`` is the fair CRPS for ensembles; a one-member forecast (persistence) has
no fair CRPS, and its ``crps`` is its standard CRPS, which for one member is the mean absolute
error (WeatherBench 2's convention for deterministic forecasts).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from weather.data.atomic import replacing, write_bytes
from weather.data.errors import ArchiveError
from weather.data.times import STEP, TimeLike, to_datetime64

if TYPE_CHECKING:
    from weather.baselines.interface import EnsembleForecaster
    from weather.model.sampler import SamplerOverride

REGIONAL_SCORES = "scores_by_region.nc"


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """What to evaluate.

    Attributes:
      out_dir: where forecasts and scores go.
      lead_hours: forecast length (hours, multiple of 12).
      members: ensemble size of the model and the ensemble baselines.
      seed: seed of every forecaster.
      sampler: changes to the checkpoint's sampler (e.g. ``SamplerOverride.parse("2s:20")``;
        None: the checkpoint's own).
    """

    out_dir: Path
    lead_hours: int = 360
    members: int = 8
    seed: int = 0
    sampler: SamplerOverride | None = None

    @property
    def leads(self) -> np.ndarray:
        """``[lead]`` timedelta64[ns]: 12 h, 24 h, ... up to the lead."""
        if self.lead_hours <= 0 or self.lead_hours % 12:
            raise ValueError(f"lead_hours: {self.lead_hours} must be a positive multiple of 12")
        return (STEP * np.arange(1, self.lead_hours // 12 + 1)).astype("timedelta64[ns]")


def spaced_inits(
    archive: xr.Dataset,
    count: int,
    spacing_days: float,
    lead_hours: int,
    first: TimeLike | None,
    *,
    history_hours: int = 12,
) -> np.ndarray:
    """``count`` init times ``spacing_days`` apart, each with its history and verification.

    Args:
      archive: the analysis archive (only its time axis is read).
      count: number of init times.
      spacing_days: days between consecutive inits (20 keeps them nearly independent: forecast
        errors decorrelate within about two weeks).
      lead_hours: the forecasts' length, so every valid time is in the archive.
      first: the first init time (default: the archive's first time + ``history_hours``).
      history_hours: hours of analyses before each init the forecasters need (12 h at least:
        the model's t-12h input; more for bred or lagged physics members, `history_hours_needed`).

    Raises:
      ArchiveError: the archive cannot hold that many (naming how many fit).
    """
    times = archive["time"].values.astype("datetime64[ns]")
    history = max(STEP, np.timedelta64(history_hours, "h"))
    start = to_datetime64(first, "first") if first is not None else times[0] + history
    spacing = np.timedelta64(round(spacing_days * 86400), "s")
    inits = start + spacing * np.arange(count)
    last_needed = inits + np.timedelta64(lead_hours, "h")
    have = set(times.tolist())
    fits = [
        (t - STEP).item() in have
        and (t - history).item() in have
        and t.item() in have
        and v.item() in have
        for t, v in zip(inits, last_needed, strict=True)
    ]
    if not all(fits):
        n = int(np.argmin(fits))
        raise ArchiveError(
            f"inits: the archive ({times[0]} .. {times[-1]}) holds only {n} init times spaced "
            f"{spacing_days:g} days with {history / np.timedelta64(1, 'h'):g} h of history and "
            f"{lead_hours} h forecasts from {start}; asked for {count}"
        )
    return inits.astype("datetime64[ns]")


def check_settings(config: EvaluationConfig, checkpoint: str | Path | None) -> None:
    """Record what the forecasts under ``out_dir`` were made with; refuse to mix settings.

    A rerun resumes by init time, so a rerun with another sampler, ensemble size, seed, lead or
    checkpoint would silently join forecasts made two ways. The first run writes
    ``out_dir/settings.json``; later runs must match it (use another ``out_dir`` otherwise).
    The checkpoint and sampler make only the model's forecasts: a run without the model
    (``checkpoint`` None) neither records nor checks them, and the first run with the model
    adds them to a record made by baselines alone.

    Raises:
      ValueError: naming each setting that differs from the recorded one.
    """
    wanted: dict[str, object] = {
        "lead_hours": config.lead_hours,
        "members": config.members,
        "seed": config.seed,
    }
    if checkpoint is not None:
        path = Path(checkpoint)
        wanted |= {
            "sampler": None if config.sampler is None else str(config.sampler),
            "checkpoint": path.name,
            "checkpoint_bytes": path.stat().st_size if path.exists() else None,
        }
    record = config.out_dir / "settings.json"
    have = json.loads(record.read_text()) if record.exists() else {}
    differ = {k: (have[k], v) for k, v in wanted.items() if k in have and have[k] != v}
    if differ:
        text = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in differ.items())
        raise ValueError(
            f"out_dir: {config.out_dir} holds forecasts made with other settings ({text}); "
            "use another out_dir or the recorded settings"
        )
    if wanted.keys() <= have.keys():
        return
    config.out_dir.mkdir(parents=True, exist_ok=True)
    write_bytes(record, (json.dumps(have | wanted, indent=1) + "\n").encode())


def _init_name(init: np.datetime64) -> str:
    return np.datetime_as_string(init, unit="h").replace(":", "")


def _store(config: EvaluationConfig, name: str, init: np.datetime64) -> Path:
    return config.out_dir / "forecasts" / name / f"{_init_name(init)}.zarr"


def _done(store: Path) -> Path:
    return store.with_name(store.name + ".done")


def run_forecaster(
    config: EvaluationConfig,
    name: str,
    forecaster: EnsembleForecaster,
    archive: xr.Dataset,
    inits: np.ndarray,
    *,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Forecast every init with one forecaster, one store per init (resumable: a finished store
    is kept, an unfinished one made again from scratch)."""
    stores = []
    for i, init in enumerate(inits):
        store = _store(config, name, init)
        if not _done(store).exists():
            if store.exists():
                shutil.rmtree(store)  # interrupted: redo it whole
            store.parent.mkdir(parents=True, exist_ok=True)
            forecaster.forecast(archive, init, config.leads, config.members, config.seed, out=store)
            _done(store).touch()
        if progress is not None:
            progress(f"{name}: {i + 1}/{len(inits)} inits")
        stores.append(store)
    return stores


def open_forecasts(config: EvaluationConfig, name: str, inits: np.ndarray) -> xr.Dataset:
    """A forecaster's finished stores for ``inits``, joined along ``init_time`` (lazy)."""
    parts = []
    for init in inits:
        store = _store(config, name, init)
        if not _done(store).exists():
            raise ArchiveError(f"forecast {store} is missing or unfinished; run the evaluation")
        parts.append(xr.open_zarr(store, consolidated=False, decode_timedelta=True))
    return _join(parts)


def finished_forecasts(out_dir: str | Path, name: str) -> xr.Dataset:
    """Every finished store of forecaster ``name`` under ``out_dir``, joined along ``init_time``.

    For reading an evaluation afterwards (`notebooks/evaluation.ipynb`) without its config:
    stores are ``out_dir/forecasts/<name>/<init>.zarr`` with a ``.done`` marker, opened lazily,
    in init-time order. Dims ``member, init_time, lead_time, [level,] latitude, longitude``.

    Raises:
      ArchiveError: no finished forecast of ``name`` is there.
    """
    folder = Path(out_dir) / "forecasts" / name
    stores = sorted(s for s in folder.glob("*.zarr") if _done(s).exists())
    if not stores:
        raise ArchiveError(f"forecasts of {name!r}: no finished store under {folder}")
    return _join([xr.open_zarr(s, consolidated=False, decode_timedelta=True) for s in stores])


def _join(parts: list[xr.Dataset]) -> xr.Dataset:
    """Stores of one forecaster (one per init) joined along ``init_time``.

    ``valid_time`` is dropped and rebuilt: stores written before it was part of the layout
    lack it, and a resumed evaluation joins old stores with new ones.
    """
    joined = xr.concat(
        [part.drop_vars("valid_time", errors="ignore") for part in parts],
        dim="init_time",
        data_vars="minimal",
        coords="minimal",
        compat="override",
        join="override",
    )
    joined.coords["valid_time"] = joined["init_time"] + joined["lead_time"]
    joined["valid_time"].attrs.update(standard_name="time", long_name="valid time")
    return joined


def score(
    config: EvaluationConfig,
    names: Sequence[str],
    truth: xr.Dataset,
    inits: np.ndarray,
    metrics: Sequence[str] = ("crps", "rmse", "spread_skill"),
    *,
    regions: Sequence[str] | None = None,
) -> xr.Dataset:
    """Scores of every forecaster, ``(model, metric, lead_time[, level])``: global means,
    written to ``scores.nc`` and returned.

    Each forecast's per-point scores are also averaged over each of ``regions`` (names of
    `weather.scoring.regions.REGIONS`; None: its `HEADLINE_REGIONS`, WeatherBench2's global,
    tropics, extra-tropics-north and -south; those holding no row of the grid are left out) and
    written to ``scores_by_region.nc``, dims ``(model, metric, region, lead_time[, level])``;
    empty ``regions``: no such file (an older one is removed, so that it never describes other
    forecasts).

    Forecasters that an earlier call scored into these files on exactly the same init times,
    members and leads (say ``--models model`` first, ``--models physics`` later) are kept
    beside the ones scored now, in their order, followed by the new ones; a forecaster scored
    again replaces its earlier scores. Scores of other init times (another half of a split
    evaluation) are replaced, never mixed in. The returned scores are the file's.
    """
    from weather.scoring.batch import score_archive
    from weather.scoring.regions import GLOBAL, HEADLINE_REGIONS, named_regions

    names_wanted = HEADLINE_REGIONS if regions is None else tuple(regions)
    chosen = (
        [r for r in named_regions(names_wanted) if r.name != GLOBAL.name] if names_wanted else []
    )
    lat, lon = truth["latitude"].values, truth["longitude"].values
    chosen = [r for r in chosen if r.latitude_mask(lat).any() and r.longitude_mask(lon).any()]
    per_model = []
    for name in names:
        forecast = open_forecasts(config, name, inits)
        wanted = list(metrics)
        single = forecast.sizes["member"] == 1
        if single and "crps" in wanted:
            wanted[wanted.index("crps")] = "crps_standard"
        # Every region in one graph: the per-point scores are computed once.
        scores = score_archive(forecast, truth, wanted, regions=[GLOBAL, *chosen]).compute()
        if single:
            scores = scores.assign_coords(
                metric=[m if m != "crps_standard" else "crps" for m in scores["metric"].values]
            )
        per_model.append(scores.expand_dims(model=[name]))
    by_region = xr.concat(per_model, dim="model", join="outer")
    by_region.attrs.update(
        inits=len(inits),
        first_init=str(inits[0]),
        last_init=str(inits[-1]),
        init_times=" ".join(np.datetime_as_string(np.asarray(inits), unit="m")),
        members=config.members,
        crps_note="fair CRPS for ensembles; for one member, its mean absolute error",
    )
    joined = by_region.sel(region=GLOBAL.name, drop=True)
    joined.attrs["description"] = "latitude-area weighted global means, averaged over init times"
    joined = _with_earlier_scores(joined, config.out_dir / "scores.nc")
    with replacing(config.out_dir / "scores.nc") as tmp:
        joined.to_netcdf(tmp)
    regional = config.out_dir / REGIONAL_SCORES
    if chosen:
        by_region = _with_earlier_scores(by_region, regional)
        with replacing(regional) as tmp:
            by_region.to_netcdf(tmp)
    else:
        regional.unlink(missing_ok=True)
    return joined


def _with_earlier_scores(scores: xr.Dataset, path: Path) -> xr.Dataset:
    """``scores`` with the forecasters of the scores file at ``path`` that it lacks, where that
    file describes the same init times, members, leads and regions (else ``scores`` alone)."""
    if not path.exists():
        return scores
    with xr.open_dataset(path) as opened:
        earlier = opened.load()
    same = all(earlier.attrs.get(k) == scores.attrs[k] for k in ("init_times", "members"))
    for dim in ("lead_time", "region"):
        if dim in scores.dims:
            same = same and dim in earlier.dims and earlier[dim].equals(scores[dim])
    kept = [m for m in earlier["model"].values if m not in scores["model"].values]
    if not same or not kept:
        return scores
    order = [m for m in earlier["model"].values if m in kept or m in scores["model"].values]
    order += [m for m in scores["model"].values if m not in order]
    merged = xr.concat([earlier.sel(model=kept), scores], dim="model", join="outer")
    merged.attrs = scores.attrs
    return merged.sel(model=order)


def evaluate(
    config: EvaluationConfig,
    forecasters: Mapping[str, EnsembleForecaster],
    archive: xr.Dataset,
    inits: np.ndarray,
    *,
    progress: Callable[[str], None] | None = None,
) -> xr.Dataset:
    """Run every forecaster from every init (resumable, `run_forecaster`), then score them all
    against ``archive`` (`score`, also written to ``scores.nc``)."""
    for name, forecaster in forecasters.items():
        run_forecaster(config, name, forecaster, archive, inits, progress=progress)
    return score(config, list(forecasters), archive, inits)


FORECASTERS = ("model", "persistence", "climatology", "physics", "perfect")


def forecasters_by_name(
    names: Sequence[str],
    *,
    checkpoint: str | Path,
    sampler: SamplerOverride | None = None,
    climatology_archives: Sequence[str | Path] = (),
    physics_method: str = "bred",
    storage_options: Mapping[str, object] | None = None,
) -> dict[str, EnsembleForecaster]:
    """The forecasters `weather evaluate --models` names, in the order given.

    Args:
      names: from `FORECASTERS`: ``model`` (the diffusion model of `checkpoint`, with `sampler`),
        ``persistence``, ``climatology`` (the whole years of `climatology_archives`), ``physics``
        (the T21 physics ensemble, perturbed by `physics_method`) and ``perfect`` (the truth's
        own simulator).

    Raises:
      ValueError: naming the unknown forecasters and the known ones; nothing is opened then.
    """
    from weather.baselines import (
        Climatology,
        DiffusionModel,
        PerfectModel,
        Persistence,
        PhysicsEnsemble,
    )
    from weather.data.reader import open_archives

    unknown = sorted(set(names) - set(FORECASTERS))
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; choose from {sorted(FORECASTERS)}")
    forecasters: dict[str, EnsembleForecaster] = {}
    for name in names:
        if name == "model":
            forecasters[name] = DiffusionModel(Path(checkpoint), sampler)
        elif name == "persistence":
            forecasters[name] = Persistence()
        elif name == "climatology":
            training = open_archives(climatology_archives, storage_options=storage_options)
            forecasters[name] = Climatology.of(training)
        elif name == "physics":
            forecasters[name] = PhysicsEnsemble(method=physics_method)
        else:
            forecasters[name] = PerfectModel()
    return forecasters


def write_report(
    scores: xr.Dataset, out_dir: str | Path, regional: xr.Dataset | None = None
) -> str:
    """The evaluation's report as Markdown text, with its figures drawn under `out_dir`.

    The fair CRPS and spread/skill tables and their figures against lead (``crps.png``,
    ``spread_skill.png``); where the model was run with other forecasters, also the scorecard
    against the reference baseline (``scorecard.png``) and the goals (`goals_report`). Then the
    fair CRPS table of each region but the globe (`region_tables`) from ``regional`` (dims
    ``(model, metric, region, lead_time[, level])``), or when None from ``out_dir``'s
    ``scores_by_region.nc`` if `score` wrote one for the same forecasters.
    """
    from weather.evaluation.plots import metric_vs_lead, scorecard_figure
    from weather.evaluation.report import (
        goals_report,
        region_tables,
        scorecard,
        scorecard_reference,
        scorecard_table,
        skill_table,
    )

    out = Path(out_dir)
    names = [str(n) for n in scores["model"].values]
    inits, members = scores.attrs.get("inits"), scores.attrs.get("members")
    lines = [f"fair CRPS (variable's units), {inits} inits, {members} members\n"]
    lines += [skill_table(scores), "\nspread/skill (1 is calibrated; - for single forecasts)\n"]
    lines.append(skill_table(scores, "spread_skill"))
    figures = [metric_vs_lead(scores, out / f"{m}.png", metric=m) for m in ("crps", "spread_skill")]
    if "model" in names and len(names) > 1:
        reference, sentence = scorecard_reference(scores)
        card = scorecard(scores, reference=reference)
        figures.append(scorecard_figure(card, out / "scorecard.png"))
        lines += [f"\n{sentence}, CRPS difference in % (negative: the model is better)\n"]
        lines += [scorecard_table(card), f"\ngoals\n\n{goals_report(scores)}"]
    if regional is None and (out / REGIONAL_SCORES).exists():
        with xr.open_dataset(out / REGIONAL_SCORES) as saved:
            same = [str(n) for n in saved["model"].values] == names
            regional = saved.load() if same else None
    if regional is not None:
        lines.append(f"\n{region_tables(regional)}")
    lines.append(f"\nfigures: {', '.join(str(f) for f in figures)}")
    lines.append(f"\nscores: {out / 'scores.nc'}")
    if regional is not None and (out / REGIONAL_SCORES).exists():
        lines.append(f"\nscores by region: {out / REGIONAL_SCORES}")
    return "\n".join(lines)


def history_hours_needed(forecasters: Mapping[str, EnsembleForecaster], members: int) -> int:
    """Hours of analyses before each init that the forecasters read (for `spaced_inits`): 12 h
    for the model's t-12h input, more for bred or lagged physics members."""
    history = max([STEP, *(f.history(members) for f in forecasters.values())])
    return int(history // np.timedelta64(1, "h"))


__all__ = [
    "FORECASTERS",
    "EvaluationConfig",
    "check_settings",
    "evaluate",
    "finished_forecasts",
    "forecasters_by_name",
    "history_hours_needed",
    "open_forecasts",
    "run_forecaster",
    "score",
    "spaced_inits",
    "write_report",
]
