"""Checkpoints: parameters bundled with every config needed to rebuild the model.

A checkpoint is one msgpack file (flax.serialization) holding

- ``configs``: JSON text of the task, backbone, EDM, sampler and grid configs;
- ``normalization``: the per-channel statistics (`weather.model.task.Normalization`);
- ``params``: the (EMA) parameters used for inference;
- ``train`` (optional): what resuming a training run needs: raw parameters, optimiser state,
  step counter, data-order position and the random key;
- ``metadata``: JSON text (provenance: data, period, wall time, loss history, ...).

Files are written to a temporary name and renamed, so a crash never leaves a torn checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization

from weather.data.atomic import write_bytes

FORMAT = "weather-checkpoint"
VERSION = 1


def _to_numpy(tree: Any) -> Any:
    """Nested dicts/lists of arrays -> the same with numpy arrays (msgpack-friendly)."""
    if isinstance(tree, dict):
        return {str(k): _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return {str(i): _to_numpy(v) for i, v in enumerate(tree)}
    if isinstance(tree, str | int | float | bool) or tree is None:
        return tree
    return np.asarray(tree)


def save_checkpoint(
    path: str | Path,
    *,
    configs: dict[str, Any],
    normalization: dict[str, np.ndarray],
    params: Any,
    metadata: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically. Returns its path."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "configs": json.dumps(configs, sort_keys=True),
        "normalization": _to_numpy(normalization),
        "params": serialization.to_state_dict(_to_numpy(params)),
        "metadata": json.dumps(metadata or {}, sort_keys=True, default=str),
    }
    if train is not None:
        payload["train"] = _to_numpy(train)
    data = serialization.msgpack_serialize(payload)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes(out, data, sync=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint: ``configs`` and ``metadata`` parsed from JSON, arrays as numpy.

    Raises:
      ValueError: naming the file when it is not a checkpoint of a version we can read.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"checkpoint {p}: no such file")
    try:
        payload = serialization.msgpack_restore(p.read_bytes())
    except Exception as error:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"checkpoint {p}: not a readable checkpoint ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"checkpoint {p}: not a {FORMAT} file")
    if payload.get("version") != VERSION:
        raise ValueError(f"checkpoint {p}: version {payload.get('version')}, expected {VERSION}")
    payload["configs"] = json.loads(payload["configs"])
    payload["metadata"] = json.loads(payload["metadata"])
    return payload


def export_checkpoint(
    source: str | Path,
    target: str | Path,
    *,
    metadata: dict[str, Any] | None = None,
    sampler: dict[str, Any] | None = None,
    conserve: list[str] | None = None,
    degree_power: np.ndarray | None = None,
) -> Path:
    """Write an inference-only copy of a training checkpoint (EMA parameters, configs,
    normalisation, metadata; no optimiser state or raw parameters, about a third of the size).

    Args:
      source: a checkpoint written by training (or an exported one, to change its sampler).
      target: the file to write (atomically).
      metadata: entries added to (or replacing) the source's metadata, e.g. provenance.
      sampler: a replacement for the model config's ``sampler`` entry (the fields of
        `weather.model.sampler.SamplerConfig`): the sampler that inference uses by default.
      conserve: a replacement for the model config's ``conserve`` (`ModelConfig.conserve`).
      degree_power: ``[degree, channel]`` the truth's climatological power per degree
        (`weather.model.spectral.mean_degree_power`), added to (or replacing) the
        normalisation's: the sampler's ``power_cap`` needs it.
    """
    saved = load_checkpoint(source)
    meta = dict(saved["metadata"])
    meta.update(metadata or {})
    if "train" in saved:
        meta["exported_from_step"] = int(saved["train"]["step"])
    configs = saved["configs"]
    if sampler is not None:
        configs = {**configs, "model": {**configs["model"], "sampler": dict(sampler)}}
    if conserve is not None:
        model = {k: v for k, v in configs["model"].items() if k != "conserve"}
        configs = {**configs, "model": {**model, **({"conserve": conserve} if conserve else {})}}
    normalization = dict(saved["normalization"])
    if degree_power is not None:
        normalization["degree_power"] = np.asarray(degree_power, np.float32)
    return save_checkpoint(
        target,
        configs=configs,
        normalization=normalization,
        params=saved["params"],
        metadata=meta,
    )
