"""Members sharded over several devices (4 forced host devices on the CPU, in a subprocess: the
flag must be set before JAX starts): `weather forecast --devices`, and the service worker's
`devices` setting with per-device batch sizes, give the members of one device to float32
rounding (each device's smaller batch sums in another order)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from service_support import service_files

SCRIPT = """
import sys
import numpy as np
import jax
import xarray as xr
sys.path.insert(0, {tests!r})
from weather.cli import main
from weather.model.rollout import select_devices
assert len(jax.devices()) == 4, jax.devices()
out = {out!r}
common = ["forecast", "--checkpoint", {checkpoint!r}, "--archive", {archive!r}, "--init",
          "2001-01-05T00", "--lead", "24", "--members", "6", "--quiet", "--chunk-steps", "2"]
from weather.model import rollout
used = []
original = rollout.Roller.__init__
def recording(self, forecaster, config=None, mesh=None):
    used.append(1 if mesh is None else mesh.devices.size)
    original(self, forecaster, config, mesh)
rollout.Roller.__init__ = recording
assert main(common + ["--devices", "1", "--out", out + "/one.zarr"]) == 0
assert main(common + ["--devices", "4", "--out", out + "/four.zarr"]) == 0
assert main(common + ["--devices", "5", "--out", out + "/five.zarr"]) == 2
assert used == [1, 4], used  # the forecasts really ran on one and on four devices
rollout.Roller.__init__ = original
one, four = xr.open_zarr(out + "/one.zarr"), xr.open_zarr(out + "/four.zarr")
for name in one.data_vars:
    a, b = one[name].values, four[name].values
    # Two 12 h steps of float32 arithmetic in another summation order: 1e-4 of the field's
    # magnitude (the tiny model's one-step differences measured ~1e-6 relative).
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max(), err_msg=name)
    assert not np.isnan(b).any(), name
print("forecast OK")

from service.settings import Settings
from service.sql_store import open_store
from service.worker import Worker
from weather.model.rollout import member_keys
settings = Settings(checkpoint={checkpoint!r}, archive={archive!r}, data_dir=out + "/svc",
                    devices="4", batch_sizes=[2], max_members=2, warmup=False)
worker = Worker(settings, open_store(settings.database))
worker._setup()
assert worker.roller.batch_sizes == (8,), worker.roller.batch_sizes
assert worker.roller.mesh is not None and worker.roller.mesh.devices.size == 4
fc = worker.model.forecaster
prev, cur = worker._analysis(np.datetime64("2001-01-05T00", "ns"))
n = 5
kw = dict(keys=np.asarray(member_keys(3, np.arange(n))),
          previous=np.broadcast_to(prev, (n, *fc.shape)),
          current=np.broadcast_to(cur, (n, *fc.shape)),
          steps=np.zeros(n, np.int64), init_times=np.full(n, np.datetime64("2001-01-05T00", "ns")),
          static=worker.static)
sharded = worker.roller.advance(worker.model.params, **kw)
from weather.model.rollout import BatchRoller
plain = BatchRoller(fc, worker.roller.config, batch_sizes=(8,)).advance(worker.model.params, **kw)
np.testing.assert_allclose(sharded, plain, rtol=0, atol=1e-4 * np.abs(plain).max())
print("worker OK")
"""


def test_four_devices_give_the_members_of_one(tmp_path, tmp_path_factory, archive, statistics):
    files = service_files(tmp_path_factory, archive, statistics)
    script = SCRIPT.format(
        tests=str(Path(__file__).parents[1]),
        out=str(tmp_path),
        checkpoint=str(files.checkpoint),
        archive=str(files.archive),
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WEATHER_")},
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "forecast OK" in done.stdout and "worker OK" in done.stdout
