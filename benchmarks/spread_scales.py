"""Per-channel spread scales re-fitted to a validation evaluation's spread/skill: one JSON object.

Usage (issue 13: the spread scales re-chosen with the power cap on; README, "Long-lead skill")::

    python benchmarks/spread_scales.py data/val-base+data/val-base-seed1 \
        --checkpoint weather/assets/checkpoint.msgpack --window 2,7

The first argument is a ``weather evaluate --models model`` out-dir (several seeds of one
sampler joined by ``+``, averaged as in `compare_evaluations.py`), made with the checkpoint's
own sampler; ``--checkpoint`` gives that sampler's spread scale per channel (tau_c:
`weather.model.denoiser.channel_spread_scales`). For every state channel the evaluation scored:

- ``spread_skill``: the geometric mean of its spread/skill over the leads in ``--window``
  (days, both ends included), where the change is aimed;
- ``spread_skill_range``: its lowest and highest spread/skill from ``--from-day`` (1: the
  calibration goal's leads) to the last lead;
- ``tau`` / ``new_tau``: its spread scale now and re-fitted, ``tau * f`` with
  ``f = spread_skill ** -power`` (a channel's 12 h spread is proportional to its own tau,
  `tests/model/test_inference_reference.py`; later leads follow less than proportionally, as
  the channels exchange spread, hence ``--power`` below 1 to move part of the way), bounded
  by ``1 +- --max-change`` and so that no lead in ``spread_skill_range`` leaves [0.8, 1.2]
  that was inside it (scaled by ``f``, the same proportionality); channels whose
  ``spread_skill`` lies within ``--keep`` are left alone.

``sampler`` is the ``--sampler`` text of the changed channels alone (``spread_scale.NAME=TAU``,
merged into the checkpoint's own per-channel scales where a model is loaded), to screen with
``weather evaluate --sampler`` against the base and `compare_evaluations.py`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import xarray as xr
from compare_evaluations import CALIBRATED, _fields, mean_of_runs, open_runs


def _pair(text: str, name: str) -> tuple[float, float]:
    low, sep, high = text.partition(",")
    try:
        values = (float(low), float(high))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{name}: {text!r} is not LOW,HIGH (two numbers)"
        ) from None
    if not sep or not values[0] <= values[1]:
        raise argparse.ArgumentTypeError(f"{name}: {text!r} is not LOW,HIGH with LOW <= HIGH")
    return values


def channel_spread_skill(scores: xr.Dataset) -> dict[str, np.ndarray]:
    """``{channel: spread/skill[lead]}`` of the ``model`` forecaster, channels named as the
    sampler names them (``temperature@850``, ``surface_pressure``)."""
    return {
        name if level is None else f"{name}@{level}": values
        for (name, level), values in _fields(scores, "spread_skill").items()
    }


def refit(
    spread_skill: dict[str, np.ndarray],
    taus: dict[str, float],
    days: np.ndarray,
    window: tuple[float, float],
    from_day: float,
    keep: tuple[float, float],
    power: float,
    max_change: float,
) -> dict[str, dict[str, Any]]:
    """The per-channel answer (see the module docstring); channels without a finite
    spread/skill in the window are left out.

    Args:
      spread_skill: ``{channel: values[lead]}``.
      taus: ``{channel: tau}`` of the sampler that made them.
      days: ``[lead]`` lead times in days.
    """
    in_window = (days >= window[0]) & (days <= window[1])
    later = days >= from_day
    out = {}
    for channel, values in spread_skill.items():
        if channel not in taus:
            continue
        aimed = values[in_window]
        aimed = aimed[np.isfinite(aimed) & (aimed > 0)]
        rest = values[later]
        rest = rest[np.isfinite(rest)]
        if not aimed.size or not rest.size:
            continue
        mean = float(np.exp(np.log(aimed).mean()))
        factor = 1.0
        if not keep[0] <= mean <= keep[1]:
            factor = float(np.clip(mean**-power, 1 - max_change, 1 + max_change))
            inside = rest[(rest >= CALIBRATED[0]) & (rest <= CALIBRATED[1])]
            if inside.size and factor > 1:
                factor = max(1.0, min(factor, CALIBRATED[1] / inside.max()))
            elif inside.size and factor < 1:
                factor = min(1.0, max(factor, CALIBRATED[0] / inside.min()))
        tau = taus[channel]
        out[channel] = {
            "spread_skill": mean,
            "spread_skill_range": [float(rest.min()), float(rest.max())],
            "tau": tau,
            "new_tau": round(tau * factor, 2),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="the evaluate out-dir (several seeds: A+B)")
    parser.add_argument("--checkpoint", required=True, help="the checkpoint whose sampler ran")
    parser.add_argument(
        "--window",
        type=lambda t: _pair(t, "--window"),
        default=(2.0, 7.0),
        help="FIRST,LAST lead days the spread/skill is aimed at (default 2,7)",
    )
    parser.add_argument("--from-day", type=float, default=1.0, help="calibration from (days)")
    parser.add_argument(
        "--keep",
        type=lambda t: _pair(t, "--keep"),
        default=(0.9, 1.1),
        help="LOW,HIGH: channels whose window spread/skill lies within are left alone",
    )
    parser.add_argument("--power", type=float, default=1.0, help="f = spread_skill ** -power")
    parser.add_argument("--max-change", type=float, default=0.3, help="|f - 1| at most")
    args = parser.parse_args(argv)
    if not 0 < args.power <= 2:
        parser.error(f"--power: {args.power} is not in (0, 2]")
    if not 0 <= args.max_change < 1:
        parser.error(f"--max-change: {args.max_change} is not in [0, 1)")
    # Imported once the options are known good: jax takes seconds to import.
    from weather.model.checkpoint import load_checkpoint
    from weather.model.denoiser import ModelConfig, channel_spread_scales

    scores = mean_of_runs(open_runs(args.runs))
    config = ModelConfig.from_dict(load_checkpoint(args.checkpoint)["configs"]["model"])
    channels = config.task.channel_names()
    scales = channel_spread_scales(config.task, config.sampler)
    if scales is None:
        scales = np.full(len(channels), config.sampler.spread_scale)
    taus = dict(zip(channels, map(float, scales), strict=True))
    days = scores["lead_time"].values / np.timedelta64(1, "D")
    answer = refit(
        channel_spread_skill(scores),
        taus,
        days,
        args.window,
        args.from_day,
        args.keep,
        args.power,
        args.max_change,
    )
    changed = {k: v["new_tau"] for k, v in answer.items() if v["new_tau"] != round(v["tau"], 2)}
    report = {
        "runs": args.runs,
        "checkpoint": args.checkpoint,
        "window_days": list(args.window),
        "power": args.power,
        "channels": answer,
        "changed": len(changed),
        "sampler": ",".join(f"spread_scale.{k}={v:.2f}" for k, v in changed.items()),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
