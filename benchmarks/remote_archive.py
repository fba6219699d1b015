"""Bytes a one-init forecast reads from an archive served over HTTP; prints one JSON object.

Usage (the README's number)::

    python benchmarks/remote_archive.py \
        --archives data/era5sim/train-1.zarr data/era5sim/train-2.zarr

Serves the archives' folder over HTTP on 127.0.0.1 (a server in this process that counts the
bytes it sends), opens them by URL as one archive (`open_archives`, ten years for the standard
training runs), runs a one-init 12 h forecast of the shipped checkpoint from its first usable
init, and reports the bytes read (opening, then the forecast) against the archives' size on disk.
Issue 16's goal: under 2 % of a ten-year archive.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import threading
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archives", type=Path, nargs="+", required=True)
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped one")
    p.add_argument("--members", type=int, default=2)
    args = p.parse_args()

    from weather.data.reader import open_archives
    from weather.defaults import DEFAULT_CHECKPOINT
    from weather.forecast import forecast, load_forecaster

    root = args.archives[0].parent
    counter = {"bytes": 0, "requests": 0}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
            data = source.read()
            counter["bytes"] += len(data)
            counter["requests"] += 1
            outputfile.write(data)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [f"{base}/{a.name}" for a in args.archives]
    total = sum(f.stat().st_size for a in args.archives for f in a.rglob("*") if f.is_file())
    model = load_forecaster(args.checkpoint or DEFAULT_CHECKPOINT)
    t0 = time.perf_counter()
    archive = open_archives(urls)
    opened = dict(counter)
    init = archive["time"].values[2]
    forecast(model, archive, init_time=init, lead=12, members=args.members, seed=0)
    wall = time.perf_counter() - t0
    server.shutdown()
    print(
        json.dumps(
            {
                "archives": [str(a) for a in args.archives],
                "archive_bytes": total,
                "archive_years": round(
                    float(
                        (archive["time"].values[-1] - archive["time"].values[0])
                        / np.timedelta64(365, "D")
                    ),
                    2,
                ),
                "init": str(np.datetime_as_string(init, unit="h")),
                "bytes_opening": opened["bytes"],
                "bytes_total": counter["bytes"],
                "requests": counter["requests"],
                "fraction_of_archive_pct": round(100 * counter["bytes"] / total, 4),
                "wall_s": round(wall, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
