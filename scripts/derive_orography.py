"""Derive the committed 1-degree orography asset from ETOPO20 (public domain, NOAA/NGDC).

Provenance: Debian's `ferret-datasets` package (version 7.6.0-5) ships ETOPO20 as
`usr/share/ferret-vis/data/etopo20.cdf` (20 arc-minute relief, variable ROSE, metres).
Reproduce with:

    apt-get download ferret-datasets && dpkg -x ferret-datasets_*.deb /tmp/ferret
    python scripts/derive_orography.py /tmp/ferret/usr/share/ferret-vis/data/etopo20.cdf \
        weather/assets/orography_1deg.nc

Each 1-degree cell is the area-weighted (cos latitude) mean of its 3 x 3 ETOPO20 cells; the
surface height is the relief clipped at 0 m (oceans are flat at sea level) and the land fraction
is the area fraction of cells with relief above 0 m.
"""

from __future__ import annotations

import sys

import numpy as np
import xarray as xr


def derive(source: str, target: str) -> None:
    raw = xr.open_dataset(source, decode_times=False)["ROSE"]
    lat = raw["ETOPO20Y"].values
    lon = raw["ETOPO20X1_1081"].values
    relief = raw.values.astype(np.float64)
    # The source repeats its first longitude after 360 degrees; drop it and rotate to start at 0.
    lon, relief = lon[:-1] % 360.0, relief[:, :-1]
    order = np.argsort(lon)
    lon, relief = lon[order], relief[:, order]
    if relief.shape != (540, 1080):
        raise ValueError(f"unexpected ETOPO20 shape {relief.shape}")
    height = np.maximum(relief, 0.0)
    land = (relief > 0.0).astype(np.float64)
    weight = np.cos(np.deg2rad(lat))[:, None] * np.ones_like(relief)

    def block_mean(field: np.ndarray) -> np.ndarray:
        num = (field * weight).reshape(180, 3, 360, 3).sum(axis=(1, 3))
        den = weight.reshape(180, 3, 360, 3).sum(axis=(1, 3))
        return num / den

    out = xr.Dataset(
        {
            "surface_height": (("latitude", "longitude"), block_mean(height).astype(np.float32)),
            "land_fraction": (("latitude", "longitude"), block_mean(land).astype(np.float32)),
        },
        coords={
            "latitude": np.arange(-89.5, 90.0, 1.0),
            "longitude": np.arange(0.5, 360.0, 1.0),
        },
    )
    out["surface_height"].attrs = {"units": "m", "long_name": "surface height above sea level"}
    out["land_fraction"].attrs = {"units": "1", "long_name": "fraction of land in the cell"}
    out["latitude"].attrs = {"units": "degrees_north"}
    out["longitude"].attrs = {"units": "degrees_east"}
    out.attrs = {
        "source": "ETOPO20 (NOAA/NGDC, public domain) from Debian ferret-datasets 7.6.0-5",
        "method": "cos(latitude)-weighted 3x3 block mean of max(relief, 0); land = relief > 0",
        "script": "scripts/derive_orography.py",
    }
    encoding = {k: {"zlib": True, "complevel": 9} for k in out.data_vars}
    out.to_netcdf(target, encoding=encoding, engine="netcdf4")


if __name__ == "__main__":
    derive(sys.argv[1], sys.argv[2])
