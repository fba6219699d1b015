"""A training run from archives: what `weather train` does, as one library call.

`train` (weather.model.train) is the loop: it takes arrays already in memory, configs already
built and statistics already computed. A run from archives needs the steps around it, and they
live here so that the command line only parses its options:

1. join the hosts of a multi-host run (`join_hosts`) and place the batch on a device mesh;
2. open the training archives (in memory, or streamed from disk) and the validation archive;
3. choose the task and the architecture (`Architecture`), or take both from a warm-start
   checkpoint, whose normalisation and parameters then come along too;
4. read the run's cached statistics, or compute them over the training period and cache them
   (so that a resumed run normalises exactly as it began);
5. call `train`, with the run's provenance in the checkpoint's metadata.

Every refusal is a ValueError naming the option (as `weather train` spells it) and the reason,
raised before any archive is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from weather.data.location import exists
from weather.data.reader import Source, StorageOptions, load_in_place, open_archive, open_archives
from weather.model.backbone import SphereTransformerConfig, SphereUNetConfig, check_grid
from weather.model.denoiser import ModelConfig
from weather.model.edm import TrainingNoise
from weather.model.layers import ComputeDtype
from weather.model.task import Normalization, check_archive, choose_task
from weather.model.train import TrainConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class Architecture:
    """The model a new run trains; None fields take the defaults named below.

    A warm start takes its source's architecture, task and normalisation: there, only
    `training_noise` may be given (the rest must stay None, `given` lists what was).

    Attributes:
      arch: ``"transformer"`` (default) or ``"unet"``.
      d_model, layers, heads, patch: the transformer's width (256), blocks (8), heads (8) and
        patch size (2).
      unet_channels: the U-Net's widths per level, finest first (64, 128, 256).
      variables: the fields modelled, canonical names (default: every catalogue variable of
        the training archive; see `weather.model.task.choose_task`).
      levels: pressure levels modelled, hPa (default: every level of the training archive).
      forcings: computed forcings (default: `weather.model.task.choose_task`'s).
      noise: ``"spherical"`` (default) or ``"iid"`` diffusion noise.
      training_noise: ``"rho"`` or ``"lognormal"`` noise-level distribution (default GenCast's
        rho, or the warm-start source's).
      compute_dtype: ``"float32"`` or ``"bfloat16"`` matmuls.
    """

    arch: str | None = None
    d_model: int | None = None
    layers: int | None = None
    heads: int | None = None
    patch: int | None = None
    unet_channels: tuple[int, ...] | None = None
    variables: tuple[str, ...] | None = None
    levels: tuple[int, ...] | None = None
    forcings: tuple[str, ...] | None = None
    noise: str = "spherical"
    training_noise: TrainingNoise | None = None
    compute_dtype: ComputeDtype = "float32"

    # The fields that fix the network (and so come from the source of a warm start).
    SHAPE_FIELDS = (
        "arch",
        "d_model",
        "layers",
        "heads",
        "patch",
        "unet_channels",
        "variables",
        "levels",
        "forcings",
    )

    def given(self) -> list[str]:
        """The network-shaping fields set, as `weather train` options (``--d-model``...)."""
        return [
            f"--{name.replace('_', '-')}"
            for name in self.SHAPE_FIELDS
            if getattr(self, name) is not None
        ]

    def model_config(self, archive: xr.Dataset, source: str = "the archive") -> ModelConfig:
        """The model of a new run on ``archive`` (canonical layout; named ``source`` in errors).

        Raises:
          ValueError, ArchiveError: see `weather.model.task.choose_task`.
        """
        task = choose_task(
            archive,
            variables=self.variables,
            levels=self.levels,
            forcings=self.forcings,
            source=source,
        )
        backbone: SphereTransformerConfig | SphereUNetConfig
        if (self.arch or "transformer") == "transformer":
            backbone = SphereTransformerConfig(
                patch_size=self.patch or 2,
                d_model=self.d_model or 256,
                num_layers=self.layers or 8,
                num_heads=self.heads or 8,
                compute_dtype=self.compute_dtype,
            )
        elif self.arch == "unet":
            backbone = SphereUNetConfig(
                channels=self.unet_channels or (64, 128, 256), compute_dtype=self.compute_dtype
            )
        else:
            raise ValueError(f"--arch: {self.arch!r} is not one of transformer, unet")
        return self.with_training_noise(ModelConfig(task=task, backbone=backbone, noise=self.noise))

    def with_training_noise(self, model: ModelConfig) -> ModelConfig:
        """`model` with this architecture's training-noise distribution, where one is given."""
        if not self.training_noise:
            return model
        edm = dataclasses.replace(model.edm, training_noise=self.training_noise)
        return dataclasses.replace(model, edm=edm)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingRun:
    """Everything `run_training` needs.

    Attributes:
      run_dir: checkpoint, history, statistics and loss curve; rerunning resumes from it.
      train_config: the optimisation (`weather.model.train.TrainConfig`).
      train_archives: one or more archives, joined along time.
      train_period, validation_period: (start, end), inclusive; None for the whole archive.
      validation_archive: scored every ``validate_every`` steps; skipped if it does not exist.
      architecture: the model of a new run (ignored fields must stay None on a warm start).
      init_from: warm start from this checkpoint's EMA parameters, task and normalisation.
      statistics: normalisation statistics file (default: ``run_dir/statistics.nc``, computed
        over the training period on the first call).
      stream: read windows from disk through Dask instead of loading the fields first.
      storage_options: for fsspec URLs.
      devices: data parallel over this many devices, or ``"all"``; None for one.
      max_minutes: stop after this many minutes of this call (checkpointed).
      progress: show a progress bar.
    """

    run_dir: Path
    train_config: TrainConfig
    train_archives: Sequence[Source]
    train_period: tuple[str, str] | None = None
    validation_archive: str | Path | None = None
    validation_period: tuple[str, str] | None = None
    architecture: Architecture = Architecture()
    init_from: Path | None = None
    statistics: Path | None = None
    stream: bool = False
    storage_options: StorageOptions = None
    devices: int | str | None = None
    max_minutes: float | None = None
    progress: bool = True


def join_hosts(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Join a multi-host run through `jax.distributed` when a coordinator is given.

    Raises:
      ValueError: naming the option, when the three are not given together or the id is out of
        range.
    """
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            raise ValueError("--num-processes and --process-id need --coordinator")
        return
    if num_processes is None or process_id is None:
        raise ValueError("--coordinator needs --num-processes and --process-id")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id: {process_id} is not in [0, {num_processes})")
    import jax

    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


def parse_period(text: str | None, option: str) -> tuple[str, str] | None:
    """``"START,END"`` (ISO 8601 times, spaces allowed) as a pair; None stays None.

    Raises:
      ValueError: naming `option` (e.g. ``--train-period``) when the text is not two times.
    """
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{option}: {text!r} is not START,END")
    return parts[0], parts[1]


def warm_start_metadata(path: Path, source: dict[str, Any]) -> dict[str, Any]:
    """Where a warm start began: its source, and the steps and seconds the source had trained
    (its own warm start's included, so the total is known however many starts a model had)."""
    meta = source["metadata"]
    step = meta.get("exported_from_step", meta.get("step", 0))
    if "train" in source:
        step = int(source["train"]["step"])
    return {
        "warm_start": str(path),
        "warm_start_step": int(step) + int(meta.get("warm_start_step", 0)),
        "warm_start_seconds": float(meta.get("train_seconds", 0.0))
        + float(meta.get("warm_start_seconds", 0.0)),
    }


def _whole(period: tuple[str, str] | None, ds: xr.Dataset) -> tuple[Any, Any]:
    return period if period is not None else (ds["time"].values[0], ds["time"].values[-1])


def run_training(run: TrainingRun) -> Path:
    """Train (or resume) the run; returns its checkpoint's path.

    Raises:
      ValueError: naming the option, for a batch that does not split over the devices, a warm
        start given architecture options or an unreadable source checkpoint, or bad storage
        options; archive errors (`weather.data.errors.ArchiveError`) name the archive.
    """
    # Looked up at call time (not imported by name): tests replace them to interrupt a run.
    from weather.data import statistics as stats_module
    from weather.model import train as train_module
    from weather.model.checkpoint import load_checkpoint

    config = run.train_config
    mesh = train_module.data_mesh(run.devices)
    if mesh is not None and config.batch_size % mesh.devices.size:
        raise ValueError(
            f"--batch-size: {config.batch_size} does not split evenly over "
            f"{mesh.devices.size} devices"
        )
    source = None
    if run.init_from is not None:
        given = run.architecture.given()
        if given:
            raise ValueError(
                f"--init-from takes the architecture of {run.init_from}; leave out "
                f"{', '.join(given)}"
            )
        try:
            source = load_checkpoint(run.init_from)
        except ValueError as error:
            raise ValueError(f"--init-from: {error}") from None

    # Streaming reads random windows: dask chunks must be the store's own (one time each), as
    # "auto" chunks of ~1260 times make every batch of 8 windows read most of the archive
    # (measured on test.zarr: 4.9-6.6 s per batch against 0.23 s; benchmarks/data_windows.py).
    train_ds = open_archives(
        run.train_archives,
        chunks={} if run.stream else "auto",
        storage_options=run.storage_options,
    )
    train_period = _whole(run.train_period, train_ds)
    sources = ",".join(str(p) for p in run.train_archives)
    val_ds = None
    if run.validation_archive is not None and exists(run.validation_archive):
        val_ds = open_archive(run.validation_archive, storage_options=run.storage_options)
    val_period = _whole(run.validation_period, val_ds) if val_ds is not None else None
    if source is not None:
        model_config = run.architecture.with_training_noise(
            ModelConfig.from_dict(source["configs"]["model"])
        )
    else:
        model_config = run.architecture.model_config(train_ds, source=sources)
    task = model_config.task
    # A grid the backbone cannot run on, and every field an archive lacks: one message each,
    # before anything is loaded or any statistics are computed.
    check_grid(model_config.backbone, train_ds["latitude"].values, train_ds["longitude"].values)
    check_archive(task, train_ds, sources)
    if val_ds is not None:
        check_archive(task, val_ds, str(run.validation_archive))
    names = [*task.level_variables, *task.surface_variables, *task.static_variables]
    if not run.stream:
        subset = train_ds[names].sel(level=list(task.levels))
        if run.progress:
            print(f"loading the training fields ({subset.nbytes / 1e9:.1f} GB) into memory")
        train_ds = load_in_place(subset)
    stats_path = run.statistics or run.run_dir / "statistics.nc"
    if stats_path.exists():
        stats = stats_module.load_statistics(stats_path)
    else:
        stats = stats_module.compute_statistics(
            # In chunks of time (views, no copies): one pass over ten years in memory would
            # otherwise allocate full-size temporaries.
            train_ds.chunk({"time": 240}),
            names,
            start=train_period[0],
            end=train_period[1],
            source=sources,
        )
        stats_module.save_statistics(stats, stats_path)
    return train_module.train(
        run_dir=run.run_dir,
        model_config=model_config,
        train_config=config,
        train_data=train_ds,
        train_period=train_period,
        statistics=stats,
        validation_data=val_ds,
        validation_period=val_period,
        progress=run.progress,
        stop_after_seconds=run.max_minutes * 60 if run.max_minutes else None,
        init_params=None if source is None else source["params"],
        normalization=None if source is None else Normalization.from_dict(source["normalization"]),
        mesh=mesh,
        metadata={
            "train_archive": sources,
            "train_period": [str(x) for x in train_period],
            "val_archive": str(run.validation_archive),
            **(warm_start_metadata(run.init_from, source) if run.init_from and source else {}),
        },
    )
