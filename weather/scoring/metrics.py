"""Scores of xarray ensemble forecasts against a truth: per-point jax kernels, area-weighted means.

Forecasts have dims ``member, [init_time,] lead_time, [level,] latitude, longitude`` (the layout of
`weather.forecast`); the truth has the same dims without ``member`` (`align_truth` builds it from
an archive with a ``time`` axis). Dimensions are found by name; coordinates of the forecast and
truth must match exactly (no silent subsetting). Each score is computed per point by a kernel of
`weather.scoring.kernels`, then averaged over latitude and longitude with exact cell-area weights
(`weather.data.grid.cell_area_weights`), and over ``init_time`` when ``over_init_time``. What
remains (e.g. ``lead_time``, ``level``) labels the result. A `Dataset` is scored variable by
variable and gives a `Dataset`.

Regions (`weather.scoring.regions`): every averaged score but the energy score takes ``region``,
one `Region` (its average, no new dim) or several (a leading ``region`` dim labelled by their
names); the average then runs over the region's points with the whole grid's cell-area weights
on its rows, as WeatherBench2's ``_spatial_average`` does. A region covering the grid gives
exactly the global average. Per-point scores are computed once whatever the number of regions.

NaN policy: a point where the truth or any member is NaN scores NaN (see the kernels). Averages
then propagate it (``skipna=False``, the default) or leave such points out and renormalise the
weights over the valid ones (``skipna=True``); an average with no valid point is NaN.

Inputs may be Dask-backed: per-point kernels run chunk by chunk (``member`` and any feature dims
of the energy score must each lie in one chunk) and results stay lazy until computed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import jax
import numpy as np
import xarray as xr

from weather.data.errors import ArchiveError
from weather.data.grid import cell_area_weights
from weather.data.times import format_times
from weather.scoring import kernels
from weather.scoring.regions import Region

MEMBER = "member"
INIT_TIME = "init_time"
LEAD_TIME = "lead_time"
LATITUDE = "latitude"
LONGITUDE = "longitude"

Data = TypeVar("Data", xr.Dataset, xr.DataArray)
Threshold = float | xr.DataArray
Truth = xr.Dataset | xr.DataArray
# One region (the average over it, no new dim), several (a ``region`` dim labelled by their
# names, in the order given), or None (the whole grid).
Regions = Region | Sequence[Region] | None


def area_weights(latitude: xr.DataArray) -> xr.DataArray:
    """Relative cell areas [latitude], mean 1, for ascending or descending latitudes (degrees)."""
    lat = np.asarray(latitude.values, dtype=np.float64)
    order = np.argsort(lat)
    weights = np.empty_like(lat)
    weights[order] = cell_area_weights(lat[order])
    return xr.DataArray(weights, dims=latitude.dims, coords={latitude.dims[0]: latitude.values})


def area_weighted_mean(
    field: Data,
    dims: Sequence[str] = (LATITUDE, LONGITUDE),
    *,
    skipna: bool = False,
    region: Regions = None,
) -> Data:
    """Mean over ``dims``, weighting ``latitude`` (when among them) by cell area.

    Args:
      field: a DataArray or Dataset holding all of ``dims``.
      dims: the dims to average over; other dims than latitude get equal weights.
      skipna: leave NaN points out and renormalise the weights over the valid points (an average
        with no valid point is NaN); by default any NaN makes the average NaN.
      region: average over the points of a `Region` only (``dims`` must hold latitude and
        longitude), with the cell-area weights of the whole grid restricted to the region's
        rows; several regions give a ``region`` dim (first), labelled by their names; None:
        the whole grid. Points outside the region never count, NaN or not.

    Raises:
      ValueError: a dim absent from the data, a region without latitude and longitude among
        ``dims``, or a region that holds no point of the grid (naming it).
    """
    absent = [d for d in dims if d not in field.dims]
    if absent:
        raise ValueError(f"cannot average over {absent}: not dims of the data {tuple(field.dims)}")
    if region is not None and not isinstance(region, Region):
        return _by_region(
            lambda r: area_weighted_mean(field, dims, skipna=skipna, region=r), region
        )
    weights = area_weights(field[LATITUDE]) if LATITUDE in dims else xr.DataArray(1.0)
    if region is not None:
        field, weights = _restrict(field, weights, dims, region)
    if not skipna:
        # cell_area_weights has mean 1 over the rows, so a plain mean of w * x is the weighted mean.
        return (field * weights).mean(dims, skipna=False)
    total = (field.fillna(0.0) * weights).sum(dims)
    norm = (field.notnull() * weights).sum(dims)
    return total / norm.where(norm > 0)


def select_region(field: Data, region: Region) -> Data:
    """The points of ``field`` (dims ``latitude`` and ``longitude``) inside ``region``.

    Raises:
      ValueError: the region holds no grid point (naming it).
    """
    rows, columns = region.indices(field[LATITUDE].values, field[LONGITUDE].values)
    return field.isel({LATITUDE: rows, LONGITUDE: columns})


def _restrict(
    field: Data, weights: xr.DataArray, dims: Sequence[str], region: Region
) -> tuple[Data, xr.DataArray]:
    """``field`` and its latitude ``weights`` [lat] restricted to ``region``'s points, the weights
    rescaled to mean 1 over the region's rows (unchanged when the region covers the grid, so a
    global average is bit for bit the one without a region)."""
    if LATITUDE not in dims or LONGITUDE not in dims:
        raise ValueError(
            f"region {region.name!r}: averages over a region need {LATITUDE!r} and "
            f"{LONGITUDE!r} among the dims, got {tuple(dims)}"
        )
    if region.covers(field[LATITUDE].values, field[LONGITUDE].values):
        return field, weights
    rows, columns = region.indices(field[LATITUDE].values, field[LONGITUDE].values)
    # The whole grid's cell areas on the region's rows; mean 1 there, as the plain mean below
    # divides by the number of points.
    weights = weights.isel({LATITUDE: rows})
    weights = weights / float(weights.mean())
    return field.isel({LATITUDE: rows, LONGITUDE: columns}), weights


def _by_region(average: Callable[[Region], Data], regions: Sequence[Region]) -> Data:
    """``average(region)`` of each region along a new leading ``region`` dim."""
    regions = list(regions)
    if not regions:
        raise ValueError("regions: need at least one region")
    names = [r.name for r in regions]
    if len(set(names)) != len(names):
        raise ValueError(f"regions: names must be distinct, got {names}")
    parts = [average(r) for r in regions]
    options: dict[str, Any] = {"coords": "minimal", "compat": "override", "join": "exact"}
    if isinstance(parts[0], xr.Dataset):
        options["data_vars"] = "all"
    joined = xr.concat(parts, dim="region", **options)
    # Variable-length strings (Zarr 3 has no stable fixed-length unicode type).
    return joined.assign_coords(region=np.array(names, dtype=object)).transpose("region", ...)


def align_truth(
    forecast: xr.Dataset | xr.DataArray,
    truth_archive: Data,
    *,
    time_dim: str = "time",
    missing: Literal["nan", "raise"] = "nan",
) -> Data:
    """The truth at each forecast's valid times, with dims ``(init_time, lead_time, ...)``.

    Valid time = ``init_time + lead_time`` from the forecast's coordinates; the truth is picked
    from ``truth_archive`` along ``time_dim`` at those times (exact matches only) and gets a
    ``valid_time`` coordinate [init_time, lead_time]. Variables of the archive without
    ``time_dim`` are returned unchanged.

    Args:
      forecast: anything with ``init_time`` and ``lead_time`` coordinates (dims or scalars).
      truth_archive: a DataArray or Dataset with a ``time_dim`` dimension of unique times.
      time_dim: the archive's time dimension.
      missing: ``"nan"`` fills valid times absent from the archive with NaN (scores there are
        NaN); ``"raise"`` raises `ArchiveError` listing them.
    """
    if missing not in ("nan", "raise"):
        raise ValueError(f"missing must be 'nan' or 'raise', got {missing!r}")
    for name in (INIT_TIME, LEAD_TIME):
        if name not in forecast.coords:
            raise ValueError(f"forecast has no {name} coordinate")
    if time_dim not in truth_archive.dims:
        raise ArchiveError(f"truth archive has no {time_dim!r} dimension")
    times = truth_archive.indexes[time_dim]
    if not times.is_unique:
        raise ArchiveError(f"truth archive's {time_dim!r} has repeated times")
    valid = (forecast[INIT_TIME] + forecast[LEAD_TIME]).reset_coords(drop=True)
    wanted = np.unique(valid.values)
    absent = wanted[~np.isin(wanted, times.values)]
    if absent.size and missing == "raise":
        raise ArchiveError(
            f"truth archive lacks {absent.size} valid time(s) {format_times(absent)}"
        )
    picked = truth_archive.reindex({time_dim: wanted}).sel({time_dim: valid})
    return picked.rename({time_dim: "valid_time"})


def crps(
    forecast: Data,
    truth: Truth,
    fair: bool = True,
    *,
    member_dim: str = MEMBER,
    over_init_time: bool = True,
    skipna: bool = False,
    region: Regions = None,
) -> Data:
    """Area-weighted mean CRPS: fair (unbiased in the ensemble size; NaN for one member) or
    standard (the ensemble as an empirical distribution). Units of the variable."""
    kernel = kernels.crps_fair if fair else kernels.crps_standard
    return _map_variables(
        lambda f, t: _spatial_mean(
            _pointwise(kernel, f, t, member_dim), over_init_time, skipna=skipna, region=region
        ),
        forecast,
        truth,
        member_dim,
    )


def ensemble_mean_rmse(
    forecast: Data,
    truth: Truth,
    *,
    member_dim: str = MEMBER,
    over_init_time: bool = True,
    skipna: bool = False,
    region: Regions = None,
) -> Data:
    """Root of the area- (and init-time-) averaged squared error of the ensemble mean."""

    def score(f: xr.DataArray, t: xr.DataArray) -> xr.DataArray:
        squared_error, _ = _spread_skill_pieces(f, t, member_dim)
        return _spatial_mean(squared_error, over_init_time, skipna=skipna, region=region) ** 0.5

    return _map_variables(score, forecast, truth, member_dim)


def spread_skill_ratio(
    forecast: Data,
    truth: Truth,
    *,
    member_dim: str = MEMBER,
    over_init_time: bool = True,
    skipna: bool = False,
    region: Regions = None,
) -> Data:
    """sqrt((M + 1) / M) * sqrt(mean ensemble variance) / RMSE of the ensemble mean.

    Variance and squared error are averaged (area, and init time when ``over_init_time``) first,
    then the ratio is taken (`kernels.spread_skill_ratio`); about 1 for a calibrated ensemble.
    """

    def score(f: xr.DataArray, t: xr.DataArray) -> xr.DataArray:
        squared_error, variance = _spread_skill_pieces(f, t, member_dim)
        mse = _spatial_mean(squared_error, over_init_time, skipna=skipna, region=region)
        mean_variance = _spatial_mean(variance, over_init_time, skipna=skipna, region=region)
        m = f.sizes[member_dim]
        return xr.apply_ufunc(
            lambda v, e: np.asarray(kernels.spread_skill_ratio(v, e, m), dtype=np.float64),
            mean_variance,
            mse,
            dask="parallelized",
            output_dtypes=[np.float64],
        )

    return _map_variables(score, forecast, truth, member_dim)


def anomaly_correlation(
    forecast: Data,
    truth: Truth,
    climatology: Truth,
    *,
    member_dim: str = MEMBER,
    over_init_time: bool = True,
    skipna: bool = False,
    region: Regions = None,
) -> Data:
    """Anomaly correlation coefficient (ACC) of the ensemble mean, as WeatherBench2 defines it.

    With anomalies against the climatology ``c`` at the valid time, ``f' = mean_i X_i - c`` (the
    ensemble mean's) and ``o' = y - c`` (the truth's), for each init time, lead (and level):

        ACC = <f' o'> / sqrt(<f'^2> <o'^2>),

    ``<.>`` the area-weighted mean over latitude and longitude (or ``region``). Uncentred, as
    WeatherBench2's ``ACC``: the anomalies' own area means are not removed. Then averaged over
    init times (equal weights) when ``over_init_time``, as WeatherBench2 averages every metric
    over times after the spatial mean. Dimensionless, in [-1, 1]; 1 for a forecast equal to the
    truth; NaN where either anomaly is zero at every point.

    Args:
      forecast: ``[member, init_time, lead_time, (level,) latitude, longitude]``.
      truth: the truth at the valid times, the forecast's dims without ``member``
        (`align_truth`).
      climatology: the climatological mean at the same valid times, laid out as ``truth``
        (`align_truth` of `weather.scoring.climatology.climatological_mean`); for a Dataset
        forecast, a Dataset with the same variables.
      skipna: leave out points where either anomaly is NaN (from all three means alike).
      region: as for `area_weighted_mean`.

    Raises:
      ValueError: coordinates of the truth and the climatology differ, or a variable is absent.
    """

    def score(f: xr.DataArray, t: xr.DataArray, c: xr.DataArray) -> xr.DataArray:
        f, t = _aligned(f, t, member_dim)
        try:
            t, c = xr.align(t, c, join="exact")
        except ValueError as error:
            raise ValueError(
                f"{f.name}: truth and climatology coordinates differ ({error}); select the "
                "climatology at the valid times with align_truth first"
            ) from None
        dtype = _dtype(f, t)
        mean = xr.apply_ufunc(
            _as_numpy(lambda e: kernels.ensemble_mean(e, axis=-1), dtype),
            f,
            input_core_dims=[[member_dim]],
            dask="parallelized",
            output_dtypes=[dtype],
        )
        forecast_anomaly, truth_anomaly = mean - c, t - c
        valid = forecast_anomaly.notnull() & truth_anomaly.notnull()
        forecast_anomaly = forecast_anomaly.where(valid)
        truth_anomaly = truth_anomaly.where(valid)

        def spatial(x: xr.DataArray) -> xr.DataArray:
            return area_weighted_mean(x, (LATITUDE, LONGITUDE), skipna=skipna, region=region)

        product = spatial(forecast_anomaly**2) * spatial(truth_anomaly**2)
        acc = spatial(forecast_anomaly * truth_anomaly) / np.sqrt(product.where(product > 0))
        if over_init_time and INIT_TIME in acc.dims:
            return area_weighted_mean(acc, (INIT_TIME,), skipna=skipna)
        return acc

    if isinstance(forecast, xr.DataArray):
        if not isinstance(truth, xr.DataArray) or not isinstance(climatology, xr.DataArray):
            raise TypeError("a DataArray forecast needs a DataArray truth and climatology")
        return score(forecast, truth, climatology)
    scores = {}
    for name, field in forecast.data_vars.items():
        picked = []
        for role, data in (("truth", truth), ("climatology", climatology)):
            if isinstance(data, xr.Dataset):
                if name not in data.data_vars:
                    raise ValueError(f"{name}: not in the {role} dataset")
                picked.append(data[name])
            else:
                picked.append(data)
        scores[name] = score(field, picked[0], picked[1])
    return xr.Dataset(scores)


def rank_histogram(
    forecast: Data,
    truth: Truth,
    *,
    seed: int = 0,
    member_dim: str = MEMBER,
    over_init_time: bool = True,
    skipna: bool = False,
    region: Regions = None,
) -> Data:
    """Counts of the truth's rank among the members (0..M), summed over latitude, longitude and
    (when ``over_init_time``) init time: dims ``(rank, lead_time, ...)``, float.

    Counts are of points, not area weighted. Ties are broken at random (`kernels.truth_rank`)
    with draws from ``seed`` (with Dask, every chunk reuses the same draws). Points where the
    truth or any member is NaN make the counts of their (lead, level) NaN, unless ``skipna``.
    With ``region``, only the region's points count (several regions: dims ``(rank, region,
    lead_time, ...)``).
    """

    def score(f: xr.DataArray, t: xr.DataArray) -> xr.DataArray:
        key = jax.random.key(seed)
        ranks = _pointwise(
            lambda e, y, axis: kernels.truth_rank(e, y, key, axis=axis), f, t, member_dim
        )
        m = f.sizes[member_dim]
        bins = xr.DataArray(np.arange(m + 1), dims="rank", coords={"rank": np.arange(m + 1)})
        dims = _reduce_dims(ranks, over_init_time)

        def count(points: xr.DataArray) -> xr.DataArray:
            counts = (points == bins).sum(dims).astype(np.float64)
            if not skipna:
                counts = counts.where(~points.isnull().any(dims))
            return counts

        if region is None:
            return count(ranks).transpose("rank", ...)
        if isinstance(region, Region):
            return count(select_region(ranks, region)).transpose("rank", ...)
        return _by_region(lambda r: count(select_region(ranks, r)), region).transpose("rank", ...)

    return _map_variables(score, forecast, truth, member_dim)


def brier(
    forecast: Data,
    truth: Truth,
    threshold: Threshold | Mapping[Hashable, Threshold],
    fair: bool = True,
    *,
    member_dim: str = MEMBER,
    over_init_time: bool = True,
    skipna: bool = False,
    region: Regions = None,
) -> Data:
    """Area-weighted mean Brier score of the event x > ``threshold`` (fair or standard).

    ``threshold`` is a number or a DataArray broadcastable against the truth (e.g. a per-point
    climatological quantile); for a Dataset, also a mapping from variable name to either.
    """

    def score(f: xr.DataArray, t: xr.DataArray) -> xr.DataArray:
        name = f.name
        value = threshold[name] if isinstance(threshold, Mapping) else threshold
        kernel = kernels.brier_fair if fair else kernels.brier_standard
        per_point = _pointwise(
            lambda e, y, q, axis: kernel(e, y, q, axis=axis),
            f,
            t,
            member_dim,
            xr.DataArray(value) if not isinstance(value, xr.DataArray) else value,
        )
        return _spatial_mean(per_point, over_init_time, skipna=skipna, region=region)

    return _map_variables(score, forecast, truth, member_dim)


def energy_score(
    forecast: Data,
    truth: Truth,
    fair: bool = True,
    *,
    feature_dims: Sequence[str] = (LATITUDE, LONGITUDE),
    member_dim: str = MEMBER,
    over_init_time: bool = True,
    skipna: bool = False,
) -> Data:
    """Energy score of each forecast field as one vector over ``feature_dims``.

    The norm is the area-weighted root mean square over the features (cell-area weights when
    ``latitude`` is a feature dim), ||v|| = sqrt(sum_f w_f v_f^2) with sum_f w_f = 1, so that the
    score does not grow with resolution and, for a single feature, equals the CRPS. To score
    several variables jointly, stack them (normalised) into a DataArray with a ``variable`` dim
    and include it in ``feature_dims``. The per-field scores are averaged over init time when
    ``over_init_time``; NaN anywhere in a field makes its score NaN.
    """
    features: tuple[str, ...] = tuple(feature_dims)

    def score(f: xr.DataArray, t: xr.DataArray) -> xr.DataArray:
        absent = [d for d in features if d not in f.dims]
        if absent:
            raise ValueError(f"{f.name}: feature dims {absent} are not dims of the forecast")
        weights = _feature_weights(f, features)

        def kernel(e: np.ndarray, y: np.ndarray) -> jax.Array:
            nf = len(features)
            return kernels.energy_score(
                e,
                y,
                axis=-nf - 1,
                feature_axes=tuple(range(-nf, 0)),
                weights=weights,
                fair=fair,
            )

        f, t = _aligned(f, t, member_dim)
        per_field = xr.apply_ufunc(
            _as_numpy(kernel, _dtype(f, t)),
            f,
            t,
            input_core_dims=[[member_dim, *features], list(features)],
            dask="parallelized",
            output_dtypes=[_dtype(f, t)],
        )
        if over_init_time and INIT_TIME in per_field.dims:
            return area_weighted_mean(per_field, (INIT_TIME,), skipna=skipna)
        return per_field

    return _map_variables(score, forecast, truth, member_dim)


def _feature_weights(field: xr.DataArray, features: tuple[str, ...]) -> np.ndarray:
    """Weights over the feature dims (in order) summing to 1; cell-area weighted in latitude."""
    weights = np.ones([field.sizes[d] for d in features])
    if LATITUDE in features:
        i = features.index(LATITUDE)
        shape = [1] * len(features)
        shape[i] = field.sizes[LATITUDE]
        weights = weights * area_weights(field[LATITUDE]).values.reshape(shape)
    return weights / weights.size


def _dtype(forecast: xr.DataArray, truth: xr.DataArray) -> np.dtype:
    return np.result_type(forecast.dtype, truth.dtype, np.float32)


def _as_numpy(kernel: Callable[..., Any], dtype: np.dtype) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        out = kernel(*args)
        if isinstance(out, tuple):
            return tuple(np.asarray(o, dtype=dtype) for o in out)
        return np.asarray(out, dtype=dtype)

    return call


def _aligned(
    forecast: xr.DataArray, truth: xr.DataArray, member_dim: str
) -> tuple[xr.DataArray, xr.DataArray]:
    if member_dim not in forecast.dims:
        raise ValueError(f"{forecast.name}: forecast has no {member_dim!r} dimension")
    if member_dim in truth.dims:
        raise ValueError(f"{forecast.name}: truth must not have a {member_dim!r} dimension")
    try:
        return xr.align(forecast, truth, join="exact")
    except ValueError as error:
        raise ValueError(
            f"{forecast.name}: forecast and truth coordinates differ ({error}); select the truth "
            "with align_truth or .sel first"
        ) from None


def _pointwise(
    kernel: Callable[..., Any],
    forecast: xr.DataArray,
    truth: xr.DataArray,
    member_dim: str,
    *extra: xr.DataArray,
) -> xr.DataArray:
    """``kernel(ensemble, truth, *extra, axis=-1)`` per point, the member dim consumed."""
    forecast, truth = _aligned(forecast, truth, member_dim)
    dtype = _dtype(forecast, truth)
    return xr.apply_ufunc(
        _as_numpy(lambda e, y, *x: kernel(e, y, *x, axis=-1), dtype),
        forecast,
        truth,
        *extra,
        input_core_dims=[[member_dim], [], *([] for _ in extra)],
        dask="parallelized",
        output_dtypes=[dtype],
    )


def _spread_skill_pieces(
    forecast: xr.DataArray, truth: xr.DataArray, member_dim: str
) -> tuple[xr.DataArray, xr.DataArray]:
    forecast, truth = _aligned(forecast, truth, member_dim)
    dtype = _dtype(forecast, truth)
    squared_error, variance = xr.apply_ufunc(
        _as_numpy(lambda e, y: kernels.spread_skill_components(e, y, axis=-1), dtype),
        forecast,
        truth,
        input_core_dims=[[member_dim], []],
        output_core_dims=[[], []],
        dask="parallelized",
        output_dtypes=[dtype, dtype],
    )
    return squared_error, variance


def _reduce_dims(field: xr.DataArray, over_init_time: bool) -> list[str]:
    dims = [LATITUDE, LONGITUDE]
    if over_init_time and INIT_TIME in field.dims:
        dims.insert(0, INIT_TIME)
    return dims


def _spatial_mean(
    field: xr.DataArray, over_init_time: bool, *, skipna: bool, region: Regions = None
) -> xr.DataArray:
    return area_weighted_mean(
        field, _reduce_dims(field, over_init_time), skipna=skipna, region=region
    )


def _map_variables(
    score: Callable[[xr.DataArray, xr.DataArray], xr.DataArray],
    forecast: Data,
    truth: Truth,
    member_dim: str,
) -> Data:
    """``score`` of a DataArray, or of each data variable of a Dataset (truth by name)."""
    if isinstance(forecast, xr.DataArray):
        if not isinstance(truth, xr.DataArray):
            raise TypeError("a DataArray forecast needs a DataArray truth")
        return score(forecast, truth)
    scores = {}
    for name, field in forecast.data_vars.items():
        if isinstance(truth, xr.Dataset):
            if name not in truth.data_vars:
                raise ValueError(f"{name}: not in the truth dataset")
            target = truth[name]
        else:
            target = truth
        scores[name] = score(field, target)
    return xr.Dataset(scores)


__all__ = [
    "align_truth",
    "anomaly_correlation",
    "area_weighted_mean",
    "area_weights",
    "brier",
    "crps",
    "energy_score",
    "ensemble_mean_rmse",
    "rank_histogram",
    "select_region",
    "spread_skill_ratio",
]
