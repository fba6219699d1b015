"""`weather serve` and `weather worker`: parse arguments, build settings, run.

Every option can also come from the environment (``WEATHER_`` + the setting's name, see
`service.settings.Settings`); a command-line option wins.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from weather.data.location import as_source, is_url


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, help="model checkpoint (WEATHER_CHECKPOINT)")
    p.add_argument(
        "--archive",
        type=as_source,
        help="analysis archive, a path or an fsspec URL (WEATHER_ARCHIVE)",
    )
    p.add_argument("--data-dir", type=Path, help="job results and SQLite (WEATHER_DATA_DIR)")
    p.add_argument(
        "--database-url", help="sqlite:///PATH or postgresql://... (WEATHER_DATABASE_URL)"
    )
    p.add_argument("--log-level", default="info", help="debug, info, warning (default info)")


def add_service_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``serve`` and ``worker`` on the ``weather`` command's subparsers."""
    serve = commands.add_parser(
        "serve",
        help="run the HTTP forecast service (uvicorn; a batching worker in a child process by "
        "default)",
        description="Serve POST /forecast and friends (OpenAPI at /docs). Without API keys "
        "(WEATHER_API_KEYS) it binds to loopback only.",
    )
    _common(serve)
    serve.add_argument("--host", help="bind address (default 127.0.0.1; WEATHER_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000; WEATHER_PORT)")
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="API only: jobs run on `weather worker` processes sharing the database",
    )
    serve.set_defaults(handler=serve_command)
    worker = commands.add_parser(
        "worker",
        help="run a forecast worker on a shared job database",
        description="Claim queued jobs from the database (WEATHER_DATABASE_URL) and sample them "
        "in batches; stop with SIGTERM/Ctrl-C (its unfinished jobs go back to the queue).",
    )
    _common(worker)
    worker.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on this port (default: none)"
    )
    worker.set_defaults(handler=worker_command)


class StartupError(Exception):
    """What stops `weather serve` or `weather worker` before it starts, in one line each."""


def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    from pydantic import ValidationError

    from service.settings import Settings

    given = {
        "checkpoint": args.checkpoint,
        "archive": args.archive,
        "data_dir": args.data_dir,
        "database_url": args.database_url,
        **extra,
    }
    try:
        return Settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as error:
        # The settings hide their inputs (hide_input_in_errors): a key is never echoed.
        lines = []
        for e in error.errors():
            where = ".".join(str(part) for part in e["loc"]) or "settings"
            lines.append(f"setting {where} (WEATHER_{where.upper()}): {e['msg']}")
        raise StartupError("\n".join(lines)) from None


def _check_database(settings: Any) -> None:
    """Open and close the job store once, so that a wrong URL or path ends here, in one line,
    rather than in a traceback from inside the server's start-up."""
    from service.sql_store import open_store
    from service.store import StoreUnavailableError

    try:
        open_store(settings.database, schema=settings.database_schema).close()
    except (StoreUnavailableError, ValueError) as error:
        raise StartupError(str(error)) from None


def _check_model_and_archive(settings: Any) -> None:
    """Read the checkpoint's configs and the archive's times once, so that a missing file, an
    unreachable URL or an archive without the model's variables ends here, in one line."""
    from service.catalog import Catalog, model_info
    from weather.data.errors import ArchiveError

    try:
        Catalog(model_info(settings), settings.archive, storage_options=settings.storage_options)
    except (ArchiveError, ValueError) as error:
        raise StartupError(str(error)) from None


def _fail(error: StartupError) -> int:
    for line in str(error).splitlines():
        print(f"weather: error: {line}", file=sys.stderr)
    return 2


def with_embedded_archive(
    settings: Any, *, days: float | None = None, progress: bool = True
) -> Any:
    """The settings, with the embedded analysis archive when the default one is absent.

    A fresh clone has no ``data/era5sim/test.zarr`` (an hour of simulation); the service then
    serves the test run's first 17 days, simulated from the spun-up state that ships with the
    package into ``data/demo/archive.zarr`` (about a minute, once), so the README's main command
    works on a machine with nothing but Python. An archive named explicitly is never replaced.
    """
    from service.settings import Settings
    from weather.defaults import DEFAULT_DATA_DIR
    from weather.evaluation.demo import EMBEDDED_ARCHIVE_DAYS, embedded_archive

    default = Settings.model_fields["archive"].default
    if (
        is_url(settings.archive)
        or Path(settings.archive) != Path(default)
        or Path(settings.archive).exists()
    ):
        return settings
    logging.getLogger("service").info(
        "%s does not exist: serving the embedded archive (the test run's first days)",
        settings.archive,
    )
    days = EMBEDDED_ARCHIVE_DAYS if days is None else days
    store = embedded_archive(DEFAULT_DATA_DIR / "demo", days, progress=progress)
    return settings.model_copy(update={"archive": store})


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import is_loopback

    _logging(args.log_level)
    try:
        settings = _settings(
            args, host=args.host, port=args.port, worker=False if args.no_worker else None
        )
        _check_database(settings)
    except StartupError as error:
        return _fail(error)
    if not settings.api_keys and not is_loopback(settings.host):
        print(
            f"weather: error: --host {settings.host}: without API keys (WEATHER_API_KEYS) the "
            "service binds to loopback only; configure keys or use 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    settings = with_embedded_archive(settings)
    try:
        _check_model_and_archive(settings)
    except StartupError as error:
        return _fail(error)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level
    )
    return 0


def worker_command(args: argparse.Namespace) -> int:
    from service.metrics import ServiceMetrics
    from service.sql_store import open_store
    from service.worker import Worker

    _logging(args.log_level)
    try:
        settings = _settings(args, worker=True)
        _check_database(settings)
    except StartupError as error:
        return _fail(error)
    settings = with_embedded_archive(settings)
    try:
        _check_model_and_archive(settings)
    except StartupError as error:
        return _fail(error)
    metrics = ServiceMetrics()
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, registry=metrics.registry)
    store = open_store(settings.database, schema=settings.database_schema)
    worker = Worker(settings, store, metrics)

    def stop(signum: int, frame: Any) -> None:
        worker.stop(timeout=0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        worker.run()
    finally:
        store.close()
    return 1 if worker.failure else 0
