"""Shared set-up of the service tests: a tiny checkpoint and archive on disk, live servers.

The files are made once per test session (cached by pytest's base temporary directory), so
every `test_service_*` module and the server and worker processes they start use the same
checkpoint, archive and JAX compilation cache (a process that starts after the first one loads
the compiled sampling call instead of compiling it again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import xarray as xr
from support import tiny_model_config

REPO = Path(__file__).resolve().parents[1]
KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key"}
INIT = "2001-01-03T00:00Z"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class ServiceFiles:
    checkpoint: Path
    archive: Path
    jax_cache: Path


_FILES: dict[Path, ServiceFiles] = {}


def service_files(
    factory: pytest.TempPathFactory, archive: xr.Dataset, statistics: xr.Dataset
) -> ServiceFiles:
    """The tiny checkpoint and the synthetic archive as files (made once per session)."""
    base = factory.getbasetemp()
    if base not in _FILES:
        _FILES[base] = write_service_files(factory.mktemp("service-files"), archive, statistics)
    return _FILES[base]


def write_service_files(root: Path, archive: xr.Dataset, statistics: xr.Dataset) -> ServiceFiles:
    """Write the tiny checkpoint and ``archive`` under ``root`` (also used by
    ``benchmarks/forecast_service.py --tiny``, outside pytest)."""
    from support import perturbed_params

    from weather.model.checkpoint import save_checkpoint
    from weather.model.denoiser import Forecaster
    from weather.model.task import Normalization

    # Pixel noise: the service does not care which noise the model draws, and the sampling
    # call then compiles several times faster than with spherical-harmonic noise.
    config = dataclasses.replace(tiny_model_config(), noise="iid")
    norm = Normalization.from_statistics(config.task, statistics)
    lat, lon = archive.latitude.values, archive.longitude.values
    forecaster = Forecaster(config, norm, lat, lon)
    checkpoint = save_checkpoint(
        root / "tiny.msgpack",
        configs={
            "model": config.to_dict(),
            "grid": {"latitude": lat.tolist(), "longitude": lon.tolist()},
        },
        normalization=norm.to_dict(),
        params=perturbed_params(forecaster),
        metadata={"note": "tiny test model"},
    )
    store = root / "archive.zarr"
    archive.to_zarr(store, zarr_format=3, consolidated=False)
    return ServiceFiles(checkpoint, store, root / "jax-cache")


def environment(files: ServiceFiles, data_dir: Path, **settings: Any) -> dict[str, str]:
    """The environment of a server or worker process (``WEATHER_*`` settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEATHER_")}
    env.update(
        WEATHER_CHECKPOINT=str(files.checkpoint),
        WEATHER_ARCHIVE=str(files.archive),
        WEATHER_DATA_DIR=str(data_dir),
        WEATHER_COMPILATION_CACHE_DIR=str(files.jax_cache),
        WEATHER_BATCH_SIZES="8",
        WEATHER_MAX_MEMBERS="8",
        JAX_PLATFORMS="cpu",
    )
    env.update({f"WEATHER_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(url: str, process: subprocess.Popen[bytes] | None, timeout: float = 240) -> None:
    """Poll ``/readyz`` until it answers 200 (the model is loaded and compiled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            out = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"the server exited with {process.returncode}:\n{out[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"{url} was not ready within {timeout} s")


@contextlib.contextmanager
def server_process(env: dict[str, str], log: Path) -> Iterator[str]:
    """`weather serve` in a subprocess on a free loopback port; yields its base URL."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "weather.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, None)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def server_thread(settings: Any) -> Iterator[str]:
    """uvicorn serving `create_app(settings)` in a thread of this process; yields its URL."""
    import uvicorn

    from service.app import create_app

    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=free_port(), log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the in-thread server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def wait_for(
    client: httpx.Client, job_id: str, states: set[str], timeout: float = 120
) -> dict[str, Any]:
    """Poll a job until its status is one of ``states``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/forecast/{job_id}").json()
        if body["status"] in states:
            return body
        time.sleep(0.1)
    pytest.fail(f"job {job_id} did not reach {states} within {timeout} s: {body}")


_REFERENCE: dict[Path, Any] = {}


def reference_forecast(
    files: ServiceFiles, archive: xr.Dataset, init: str, hours: int, members: int, seed: int
) -> xr.Dataset:
    """The same forecast from `weather.forecast.forecast`, alone (chunks of one step).

    The model and its compiled chunk are kept for the session: one compilation per ensemble
    size, so the tests compare forecasts of one size (3 members).
    """
    from weather.forecast import forecast, load_forecaster
    from weather.model.rollout import Roller, RolloutConfig

    if files.checkpoint not in _REFERENCE:
        model = load_forecaster(files.checkpoint)
        _REFERENCE[files.checkpoint] = (
            model,
            Roller(model.forecaster, RolloutConfig(chunk_steps=1)),
        )
    model, roller = _REFERENCE[files.checkpoint]
    return forecast(
        model, archive, init_time=init, lead=hours, members=members, seed=seed, roller=roller
    )


def assert_same_forecast(got: xr.Dataset, want: xr.Dataset) -> None:
    """Equal up to float32 rounding of a different batch size (1e-6 relative)."""
    for name in got.data_vars:
        # Select by the dims' labels (not every coordinate: valid_time is 2-D).
        labels = {d: got[name][d].values for d in got[name].dims if d in got[name].indexes}
        a, b = got[name].values, want[name].sel(labels).values
        scale = float(np.abs(b).max())
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * scale, err_msg=str(name))


def tiny_settings(files: ServiceFiles, data_dir: Path, **overrides: Any) -> Any:
    """`service.settings.Settings` of a test server on `files`, its data under `data_dir`: at
    most 8 members, padded to one batch size of 8 (one compiled shape); `overrides` set the
    rest (``worker=False``, timings, keys...)."""
    from service.settings import Settings

    return Settings(
        checkpoint=files.checkpoint,
        archive=files.archive,
        data_dir=data_dir,
        max_members=8,
        batch_sizes=[8],
        **overrides,
    )


def hold_before_call(
    monkeypatch: pytest.MonkeyPatch, n: int, timeout_s: float = 120.0
) -> tuple[threading.Event, threading.Event]:
    """``(held, release)``: the in-process worker's ``n``-th sampling call from now
    (`BatchRoller.advance`) sets ``held`` and waits for ``release`` (at most `timeout_s`), so a
    test sees a job in a known state however fast the machine samples."""
    from weather.model.rollout import BatchRoller

    held, release = threading.Event(), threading.Event()
    calls = 0
    advance = BatchRoller.advance

    def gated(self: BatchRoller, *args: Any, **kwargs: Any) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == n:
            held.set()
            assert release.wait(timeout_s), "the test never released the worker"
        return advance(self, *args, **kwargs)

    monkeypatch.setattr(BatchRoller, "advance", gated)
    return held, release
