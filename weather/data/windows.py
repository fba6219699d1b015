"""Training windows: (x[t-12h], x[t], x[t+12h]) with forcings, shuffled, batched and prefetched.

GenCast's task conditions on the two states 12 h apart ending at the anchor time ``t`` and
predicts the state 12 h after it. An archive with any time step that divides 12 h (typically 6 h)
gives one window per anchor ``t`` for which all three times exist; a window belongs to a split
``[start, end]`` only if all three times lie inside it, so no window ever straddles two splits.

Three layers, each usable alone:

- ``archive_step``, ``lead_pairs``, ``window_indices``, ``window_anchors``: pure numpy over a
  ``datetime64`` time axis;
- ``Windows``: a (possibly lazy, zarr- or dask-backed) canonical dataset plus a ``WindowConfig``;
  per epoch it shuffles the windows with ``numpy.random.default_rng([seed, epoch])`` and loads each
  batch with one sorted, vectorised ``isel`` per variable;
- ``Prefetcher``: runs any iterator in a background thread behind a bounded queue
  (``Windows.iterate`` wires the two together).

The batch layout (a plain dict pytree of numpy arrays; ``B`` = batch size, ``L`` = levels,
``Y`` = latitudes, ``X`` = longitudes; values in the archive's units) is ``Batch``:

- ``"inputs"``: ``{var: [B, 2, L, Y, X]}`` for level fields, ``{var: [B, 2, Y, X]}`` for surface
  fields, float32; index 0 along the second axis is ``t - 12h``, index 1 is ``t`` (with
  ``WindowConfig.input_steps = 3``, ``[B, 3, ...]`` from ``t - 24h``);
- ``"targets"``: ``{var: [B, L, Y, X]}`` / ``{var: [B, Y, X]}``, float32, the state at ``t + 12h``;
- ``"forcings"``: ``{"year_progress_sin"|"year_progress_cos": [B, 3],
  "day_progress_sin"|"day_progress_cos": [B, 3, X]}``, float32, at ``(t - 12h, t, t + 12h)``
  (one more column in front per further input step)
  (see ``weather.data.forcings``);
- ``"static"``: ``{var: [Y, X]}``, float32, read once and shared (read-only) by all batches;
- ``"time"``: ``[B]`` datetime64[ns], the anchor times ``t``.

Latitude, longitude and level keep the archive's (canonical, ascending) order.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, TypedDict, TypeVar

import numpy as np
import numpy.typing as npt
import xarray as xr

from weather.data import forcings as forcings_lib
from weather.data.errors import ArchiveError
from weather.data.times import STEP, TimeLike, to_datetime64
from weather.data.times import time_step as archive_step
from weather.data.variables import (
    SIMULATED_LEVEL_VARIABLES,
    SIMULATED_STATIC_VARIABLES,
    SIMULATED_SURFACE_VARIABLES,
)

LEVEL_DIMS = ("time", "level", "latitude", "longitude")
SURFACE_DIMS = ("time", "latitude", "longitude")
STATIC_DIMS = ("latitude", "longitude")


def _time_axis(time: npt.ArrayLike) -> npt.NDArray[np.datetime64]:
    t = np.asarray(time)
    if t.ndim != 1 or not np.issubdtype(t.dtype, np.datetime64):
        raise ArchiveError(
            f"coordinate 'time' must be 1-d datetime64; it has dtype {t.dtype}, shape {t.shape}"
        )
    t = t.astype("datetime64[ns]")
    if np.isnat(t).any():
        raise ArchiveError("coordinate 'time' contains NaT")
    if (np.diff(t) <= np.timedelta64(0, "ns")).any():
        raise ArchiveError("coordinate 'time' must be strictly increasing (sorted, no duplicates)")
    return t


def _positions(t: npt.NDArray[np.datetime64], wanted: npt.NDArray[np.datetime64]) -> np.ndarray:
    """Index of each ``wanted`` time in the sorted axis ``t``, or -1 where it is absent."""
    pos = np.searchsorted(t, wanted)
    clipped = np.minimum(pos, t.size - 1)
    return np.where((pos < t.size) & (t[clipped] == wanted), clipped, -1)


def _in_split(t: npt.NDArray[np.datetime64], start: TimeLike, end: TimeLike) -> np.ndarray:
    lo, hi = to_datetime64(start, "start"), to_datetime64(end, "end")
    if lo > hi:
        raise ArchiveError(f"split start {lo} is after its end {hi}")
    return np.flatnonzero((t >= lo) & (t <= hi))


def lead_pairs(time: npt.ArrayLike, *, start: TimeLike, end: TimeLike) -> np.ndarray:
    """Index pairs ``(i, j)`` with ``time[j] = time[i] + 12h``, both times inside ``[start, end]``.

    Args:
      time: ``[time]`` datetime64 axis of the archive (step must divide 12 h).
      start, end: the split's first and last allowed time (inclusive).

    Returns:
      int64 ``[pair, 2]``, sorted by ``i``.
    """
    t = _time_axis(time)
    archive_step(t)
    inside = _in_split(t, start, end)
    later = _positions(t, t[inside] + STEP)
    ok = later >= 0
    ok[ok] = t[later[ok]] <= to_datetime64(end, "end")
    return np.stack([inside[ok], later[ok]], axis=1).astype(np.int64)


def window_indices(
    time: npt.ArrayLike, *, start: TimeLike, end: TimeLike, input_steps: int = 2
) -> np.ndarray:
    """Time indices of every valid window ``(t - 12h, t, t + 12h)`` inside ``[start, end]``.

    A window is valid when all its times exist in ``time`` and lie in the split (inclusive).

    Args:
      time: ``[time]`` datetime64 axis of the archive (step must divide 12 h).
      start, end: the split's first and last allowed time.
      input_steps: states before the target, 12 h apart (>= 1); 2 is the task's
        ``(t - 12h, t)``, 3 adds ``t - 24h`` (what training on the model's own one-step
        forecasts needs to make ``x(t)`` from ``(t - 24h, t - 12h)``).

    Returns:
      int64 ``[window, input_steps + 1]``: columns are the indices of ``t - 12h (input_steps - 1)``
      ... ``t`` and ``t + 12h``, rows sorted by anchor time.
    """
    if input_steps < 1:
        raise ValueError(f"input_steps: must be >= 1, got {input_steps}")
    t = _time_axis(time)
    pairs = lead_pairs(t, start=start, end=end)
    # Each index has at most one successor 12 h later: chain the successors input_steps times.
    successor = np.full(t.size, -1, np.int64)
    successor[pairs[:, 0]] = pairs[:, 1]
    columns = [pairs[:, 0]]
    for _ in range(input_steps):
        previous = columns[-1]
        columns.append(np.where(previous >= 0, successor[np.maximum(previous, 0)], -1))
    idx = np.stack(columns, axis=1)
    return idx[(idx >= 0).all(axis=1)].astype(np.int64)


def window_anchors(time: npt.ArrayLike, *, start: TimeLike, end: TimeLike) -> np.ndarray:
    """The anchor times ``t`` of ``window_indices``: ``[window]`` datetime64[ns], ascending."""
    t = _time_axis(time)
    return t[window_indices(t, start=start, end=end)[:, -2]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class WindowConfig:
    """What to read and how to batch it.

    Attributes:
      start, end: the split, inclusive; every time of every window lies in ``[start, end]``.
        Anything ``numpy.datetime64`` accepts; stored as ``datetime64[ns]`` scalars.
      variables: time-varying fields (inputs and targets), level or surface.
      static_variables: time-invariant fields ``[latitude, longitude]``.
      levels: pressure levels (hPa) to read, in the archive's order; None reads all.
      batch_size: windows per batch (``B``).
      seed: shuffling seed (>= 0); epoch ``e`` uses ``numpy.random.default_rng([seed, e])``.
      drop_remainder: drop the last, short batch of an epoch (keeps jit shapes fixed).
      prefetch: batches loaded ahead by a background thread; 0 loads in the caller's thread.
      input_steps: input states per window, 12 h apart, ending at the anchor ``t`` (see
        ``window_indices``); 3 adds ``t - 24h`` in front.
    """

    start: TimeLike
    end: TimeLike
    variables: tuple[str, ...] = SIMULATED_LEVEL_VARIABLES + SIMULATED_SURFACE_VARIABLES
    static_variables: tuple[str, ...] = SIMULATED_STATIC_VARIABLES
    levels: tuple[int, ...] | None = None
    batch_size: int = 1
    seed: int = 0
    drop_remainder: bool = True
    prefetch: int = 2
    input_steps: int = 2

    def __post_init__(self) -> None:
        # Normalise here so that equal configs compare equal whatever spelling built them.
        object.__setattr__(self, "start", to_datetime64(self.start, "start"))
        object.__setattr__(self, "end", to_datetime64(self.end, "end"))
        object.__setattr__(self, "variables", tuple(self.variables))
        object.__setattr__(self, "static_variables", tuple(self.static_variables))
        if self.levels is not None:
            object.__setattr__(self, "levels", tuple(int(level) for level in self.levels))
        if to_datetime64(self.start) > to_datetime64(self.end):
            raise ValueError(f"split start {self.start} is after its end {self.end}")
        if not self.variables:
            raise ValueError("variables: need at least one time-varying field")
        names = self.variables + self.static_variables
        if len(set(names)) != len(names):
            raise ValueError(f"variables: names repeat in {names}")
        levels = self.levels
        if levels is not None and (not levels or len(set(levels)) < len(levels)):
            raise ValueError(f"levels: need distinct levels, got {self.levels}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.input_steps < 1:
            raise ValueError(f"input_steps must be >= 1, got {self.input_steps}")


class Batch(TypedDict):
    """One batch; see the module docstring for shapes."""

    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    forcings: dict[str, np.ndarray]
    static: dict[str, np.ndarray]
    time: np.ndarray


def canonical_field(dataset: xr.Dataset, name: str, *, static: bool | None = None) -> xr.DataArray:
    """The variable with its dims in canonical order.

    Args:
      dataset: a canonical archive.
      name: the variable.
      static: True to require ``[latitude, longitude]``, False to require a time-varying layout
        (``[time, level, latitude, longitude]`` or ``[time, latitude, longitude]``), None for any.

    Raises:
      ArchiveError: the variable is missing or its dims fit none of the allowed layouts.
    """
    if name not in dataset.data_vars:
        have = sorted(map(str, dataset.data_vars))
        raise ArchiveError(f"variable {name!r} is not in the archive; it has {have}")
    da = dataset[name]
    allowed = {
        True: (STATIC_DIMS,),
        False: (LEVEL_DIMS, SURFACE_DIMS),
        None: (LEVEL_DIMS, SURFACE_DIMS, STATIC_DIMS),
    }[static]
    for dims in allowed:
        if set(da.dims) == set(dims) and len(da.dims) == len(dims):
            return da.transpose(*dims)
    role = {True: "a static field", False: "a time-varying field", None: "a canonical field"}[
        static
    ]
    raise ArchiveError(f"variable {name!r} has dims {da.dims}, which do not fit {role}: {allowed}")


class Windows:
    """The windows of one split of a canonical dataset, with per-epoch shuffling and batch loading.

    The dataset is read lazily: construction reads only coordinates and the static fields; each
    ``load`` reads the union of a batch's times with one sorted ``isel`` per variable. For a zarr
    archive, ``xr.open_zarr(path, chunks=None)`` (zarr's own orthogonal reads) measured 2-2.7x
    the samples/s of dask arrays over the same store (``benchmarks/data_windows.py``).

    Args:
      dataset: canonical archive (see ``weather.data``): level fields ``[time, level, latitude,
        longitude]``, surface fields ``[time, latitude, longitude]``, static fields ``[latitude,
        longitude]``; numpy-, dask- or lazily zarr-backed.
      config: what to read and how to batch it.

    Raises:
      ArchiveError: missing variables or levels, wrong dims, a bad time axis or step, or a split
        with no window (or, with ``drop_remainder``, fewer windows than one batch).
    """

    def __init__(self, dataset: xr.Dataset, config: WindowConfig) -> None:
        self.config = config
        for coord in ("time", "latitude", "longitude"):
            if coord not in dataset.coords:
                raise ArchiveError(f"coordinate {coord!r} is missing from the archive")
        dynamic = xr.Dataset(
            {name: canonical_field(dataset, name, static=False) for name in config.variables}
        )
        if config.levels is not None:
            if "level" not in dynamic.dims:
                raise ArchiveError(
                    "coordinate 'level' is missing: levels were requested, but no variable has any"
                )
            missing = sorted(set(config.levels) - set(dynamic["level"].values.tolist()))
            if missing:
                raise ArchiveError(f"coordinate 'level' lacks {missing} hPa")
            if list(dynamic["level"].values) != list(config.levels):
                # Selecting copies in-memory data: skip it when it would change nothing.
                dynamic = dynamic.sel(level=list(config.levels))
        self._dynamic = dynamic
        self.time: npt.NDArray[np.datetime64] = _time_axis(dataset["time"].values)
        self.longitude: np.ndarray = np.asarray(dataset["longitude"].values, dtype=np.float64)
        self.indices = window_indices(
            self.time, start=config.start, end=config.end, input_steps=config.input_steps
        )
        if len(self.indices) == 0:
            raise ArchiveError(
                f"coordinate 'time' has no complete 12 h window inside the split "
                f"[{config.start}, {config.end}]"
            )
        if config.drop_remainder and len(self.indices) < config.batch_size:
            raise ArchiveError(
                f"coordinate 'time' has {len(self.indices)} windows in the split, fewer than "
                f"one batch of {config.batch_size} (drop_remainder=True would yield nothing)"
            )
        self.static: dict[str, np.ndarray] = {}
        for name in config.static_variables:
            values = np.array(canonical_field(dataset, name, static=True).values, dtype=np.float32)
            values.flags.writeable = False  # shared by every batch: nobody may edit it in place
            self.static[name] = values

    @property
    def anchors(self) -> npt.NDArray[np.datetime64]:
        """``[window]`` datetime64[ns]: every anchor time ``t`` of the split, ascending."""
        return self.time[self.indices[:, -2]]

    def __len__(self) -> int:
        """The number of windows in the split."""
        return len(self.indices)

    @property
    def batches_per_epoch(self) -> int:
        n, b = len(self.indices), self.config.batch_size
        return n // b if self.config.drop_remainder else math.ceil(n / b)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """``[window]`` int: a permutation of the windows, a pure function of (seed, epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        rng = np.random.default_rng([self.config.seed, epoch])
        return rng.permutation(len(self.indices))

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The window numbers (rows of ``indices``) of each batch of ``epoch``, in order."""
        order = self.epoch_order(epoch)
        b = self.config.batch_size
        return [order[i : i + b] for i in range(0, self.batches_per_epoch * b, b)]

    def load(self, windows: Sequence[int] | np.ndarray) -> Batch:
        """Read the batch made of the given windows (rows of ``indices``), in the given order.

        Each time is read once even when windows overlap, with one vectorised ``isel`` per
        variable over the sorted union of the batch's times (sorted reads stay chunk-contiguous in
        zarr and dask); the batch order is restored in memory afterwards.
        """
        rows = np.asarray(windows, dtype=np.int64)
        idx = self.indices[rows]  # [B, input_steps + 1]
        needed, inverse = np.unique(idx, return_inverse=True)
        inverse = inverse.reshape(idx.shape)
        # One compute for all variables: dask reads them in parallel; lazy zarr reads each once.
        block = self._dynamic.isel(time=needed).compute()
        inputs, targets = {}, {}
        for name in self.config.variables:
            values = np.asarray(block[name].values, dtype=np.float32)  # [T, ...]
            inputs[name] = values[inverse[:, :-1]]
            targets[name] = values[inverse[:, -1]]
        times = self.time[idx]  # [B, input_steps + 1]
        flat = forcings_lib.forcings(times.reshape(-1), self.longitude)
        forcing_batch = {
            key: value.reshape(idx.shape + value.shape[1:]) for key, value in flat.items()
        }
        return Batch(
            inputs=inputs,
            targets=targets,
            forcings=forcing_batch,
            static=dict(self.static),
            time=times[:, -2],
        )

    def batches(self, *, epochs: int | None = 1, first_epoch: int = 0) -> Iterator[Batch]:
        """Load the batches of ``epochs`` epochs (None: forever) from ``first_epoch``, in order.

        Batches never span two epochs; this generator loads in the caller's thread.
        """
        if epochs is not None and epochs < 0:
            raise ValueError(f"epochs must be >= 0 or None, got {epochs}")
        epoch = first_epoch
        while epochs is None or epoch < first_epoch + epochs:
            for rows in self.epoch_batches(epoch):
                yield self.load(rows)
            epoch += 1

    def iterate(self, *, epochs: int | None = 1, first_epoch: int = 0) -> Prefetcher[Batch]:
        """``batches`` loaded ``config.prefetch`` ahead by a background thread.

        Use as a context manager (or call ``close``) so the thread stops with the consumer::

            with Windows(ds, config).iterate(epochs=1) as batches:
                for batch in batches:
                    ...
        """
        return Prefetcher(
            self.batches(epochs=epochs, first_epoch=first_epoch), depth=self.config.prefetch
        )


T = TypeVar("T")


class _End:
    """The producer's last item: the source is exhausted."""


@dataclasses.dataclass(frozen=True)
class _Failure:
    """The producer's last item when the source raised: re-raised in the consumer."""

    error: BaseException


class Prefetcher(Generic[T]):
    """Iterate ``source`` in a background thread, ``depth`` items ahead, behind a bounded queue.

    The producer thread owns ``source`` (it is only ever advanced there). An exception raised by
    ``source`` is re-raised by the consumer's ``next``; ``close`` (also called on exhaustion, on
    that error and by the context manager) stops the thread and joins it. ``depth=0`` runs the
    source in the caller's thread with no thread at all.

    The thread holds no reference to the prefetcher, so an abandoned prefetcher is collected and
    its thread told to stop; closing explicitly is still the rule.
    """

    # How often a producer blocked on a full queue checks whether it was told to stop (s).
    _POLL_S = 0.05

    def __init__(self, source: Iterable[T], *, depth: int = 2) -> None:
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self._source = iter(source)
        self._depth = depth
        self._queue: queue.Queue[T | _End | _Failure] = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = False

    @staticmethod
    def _produce(
        source: Iterator[T], out: queue.Queue[T | _End | _Failure], stop: threading.Event
    ) -> None:
        def put(item: T | _End | _Failure) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=Prefetcher._POLL_S)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for item in source:
                if not put(item):
                    break
            else:
                put(_End())
        except BaseException as error:  # re-raised by the consumer, whatever it was
            put(_Failure(error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=Prefetcher._produce,
            args=(self._source, self._queue, self._stop),
            name="weather-prefetch",
            daemon=True,  # a safety net only: close() is what ends the thread
        )
        self._thread.start()

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        if self._depth == 0:
            try:
                return next(self._source)
            except BaseException:
                self.close()
                raise
        if self._thread is None:
            self._start()
        while True:
            try:
                item = self._queue.get(timeout=self._POLL_S)
                break
            except queue.Empty:
                # Polling rather than blocking: a close() from another thread must not leave
                # this consumer waiting forever on a queue that nobody fills any more.
                if self._done:
                    raise StopIteration from None
        if isinstance(item, _End):
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop and join the producer thread and drop prefetched items; idempotent."""
        self._done = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()  # the thread closes the source on its way out
            self._thread = None
        else:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Only signal: joining inside garbage collection could block an unrelated thread.
        stop = getattr(self, "_stop", None)  # absent if __init__ raised
        if stop is not None:
            stop.set()
