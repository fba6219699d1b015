"""Quick-look figures (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from weather.data.constants import GRAVITY


def archive_overview(ds: xr.Dataset, time_index: int, out: str | Path) -> Path:
    """A four-panel PNG: z500 and t850 maps, zonal-mean u (level x latitude), surface pressure.

    Args:
      ds: canonical archive (time, level, latitude, longitude).
      time_index: which time to map.
      out: PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
