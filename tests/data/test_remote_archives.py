"""Archives read through fsspec URLs, without network: a Zarr store served over HTTP by a server
this test starts on 127.0.0.1 (counting the bytes it sends), and fsspec's memory filesystem.

A remote archive opens lazily and reads only the chunks a computation touches: a one-init
forecast reads its two analysis times (and the metadata), not the archive. Unreachable URLs,
missing stores, filesystems whose package is absent and archives without the model's variables
get an `ArchiveError` that names them.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from service_support import service_files

from weather.data.errors import ArchiveError
from weather.data.reader import open_archive

INIT = "2001-01-05T00"


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    counter: dict[str, int]

    def log_message(self, *args: object) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        data = source.read()
        self.counter["bytes"] += len(data)
        self.counter["requests"] += 1
        outputfile.write(data)


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """Serve ``root`` over HTTP on a free loopback port; yields (base URL, byte counter)."""
    counter = {"bytes": 0, "requests": 0}
    handler = type("Handler", (_CountingHandler,), {"counter": counter})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counter
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def served(tmp_path_factory, archive):  # type: ignore[no-untyped-def]
    """The test archive as consolidated Zarr v3, one time per chunk (as ERA5 stores chunk)."""
    root = tmp_path_factory.mktemp("served")
    chunked = archive.chunk({"time": 1})
    for name in chunked.variables:
        chunked[name].encoding = {}
    chunked.to_zarr(root / "archive.zarr", zarr_format=3, consolidated=True)
    chunked.drop_vars("temperature").to_zarr(
        root / "no-temperature.zarr", zarr_format=3, consolidated=True
    )
    with http_server(root) as (url, counter):
        yield root, url, counter


def test_an_http_archive_reads_as_the_local_one(served):
    root, url, _ = served
    remote = open_archive(f"{url}/archive.zarr")
    local = open_archive(root / "archive.zarr")
    assert set(remote.data_vars) == set(local.data_vars)
    xr.testing.assert_identical(remote.load(), local.load())


def test_a_one_init_forecast_reads_only_its_two_analysis_times(
    served, tmp_path_factory, archive, statistics
):
    from weather.forecast import forecast, load_forecaster

    root, url, counter = served
    files = service_files(tmp_path_factory, archive, statistics)
    model = load_forecaster(files.checkpoint)
    before = counter["bytes"]
    remote = open_archive(f"{url}/archive.zarr")
    opened = counter["bytes"] - before
    ens = forecast(model, remote, init_time=INIT, lead=24, members=2, seed=0)
    read = counter["bytes"] - before
    total = store_bytes(root / "archive.zarr")
    times = remote.sizes["time"]
    # The chunks of two times (every time-dependent variable), the static field and the
    # metadata and coordinates read at opening: 2 of the archive's times, plus what opening costs.
    per_time = (total - opened) / times
    assert read <= opened + 3 * per_time + store_bytes(
        root / "archive.zarr" / "geopotential_at_surface"
    )
    assert read < 0.25 * total, (read, total)
    local = forecast(
        model, open_archive(root / "archive.zarr"), init_time=INIT, lead=24, members=2, seed=0
    )
    xr.testing.assert_identical(ens, local)


def test_the_memory_filesystem_is_a_source_too(archive):
    url = "memory://weather-test/archive.zarr"
    archive.to_zarr(url, zarr_format=3, consolidated=True, mode="w")
    remote = open_archive(url, variables=["temperature"], levels=[850])
    np.testing.assert_array_equal(
        remote["temperature"].values, archive["temperature"].sel(level=[850]).values
    )


def test_unreachable_missing_and_uninstalled_sources_are_named(served):
    _, url, _ = served
    with pytest.raises(ArchiveError, match=r"http://127\.0\.0\.1:1/x\.zarr.*cannot reach it"):
        open_archive("http://127.0.0.1:1/x.zarr")
    with pytest.raises(ArchiveError, match=r"nope\.zarr'.*no Zarr store or file there"):
        open_archive(f"{url}/nope.zarr")
    with pytest.raises(ArchiveError, match=r"gs://.*pip install -e \"\.\[cloud\]\""):
        open_archive("gs://weatherbench2/datasets/era5/1959-2023_01_10-6h-64x32.zarr")


def test_an_archive_without_the_models_variables_is_refused_naming_them(
    served, tmp_path_factory, archive, statistics
):
    from service.catalog import Catalog, model_info
    from service.settings import Settings
    from weather.forecast import forecast, load_forecaster

    _, url, _ = served
    files = service_files(tmp_path_factory, archive, statistics)
    partial = open_archive(f"{url}/no-temperature.zarr")
    with pytest.raises(
        ArchiveError, match=r"lacks the model's variables \['temperature'\] \(it holds"
    ):
        forecast(load_forecaster(files.checkpoint), partial, init_time=INIT, lead=12, members=1)
    settings = Settings(checkpoint=files.checkpoint, archive=f"{url}/no-temperature.zarr")
    assert settings.archive == f"{url}/no-temperature.zarr"  # a URL stays text
    with pytest.raises(ArchiveError, match=r"no-temperature\.zarr.*\['temperature'\]"):
        Catalog(model_info(settings), settings.archive)


def test_forecast_and_score_commands_take_urls(
    served, tmp_path, tmp_path_factory, archive, statistics
):
    from weather.cli import main

    _, url, _ = served
    files = service_files(tmp_path_factory, archive, statistics)
    out = tmp_path / "f.zarr"
    source = f"{url}/archive.zarr"
    assert (
        main(
            [
                "forecast",
                "--checkpoint",
                str(files.checkpoint),
                "--archive",
                source,
                "--init",
                INIT,
                "--lead",
                "24",
                "--members",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    scores = tmp_path / "scores.nc"
    assert (
        main(["score", "--forecast", str(out), "--truth", source, "--out", str(scores), "--quiet"])
        == 0
    )
    crps = xr.open_dataset(scores)["temperature"].sel(metric="crps")
    assert np.isfinite(crps.values).all() and (crps.values > 0).all()
    assert (
        main(
            [
                "forecast",
                "--archive",
                source,
                "--init",
                INIT,
                "--out",
                str(tmp_path / "g.zarr"),
                "--storage-options",
                "[1]",
            ]
        )
        == 2
    )
