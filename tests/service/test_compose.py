"""compose.yaml and compose.gpu.yaml agree with the code they start (no container engine runs
here; tests/service/test_service_topology.py runs the same topology as processes): every command
parses with the `weather` command line, every WEATHER_ variable is a valid setting, the database URL
names the postgres service's own user and database, results live on one shared volume, and the
health checks ask the ports the processes listen on."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.settings import Settings
from weather.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
WORKDIR = "/app"  # the Dockerfile's WORKDIR
SUBSTITUTION = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def _compose(*names: str) -> dict[str, Any]:
    """The files merged as `docker compose -f A -f B` does for what these tests read (a
    service's keys from a later file replace the earlier ones)."""
    merged: dict[str, Any] = {"services": {}, "volumes": {}}
    for name in names:
        data = yaml.safe_load((REPO / name).read_text())
        for service, body in data.get("services", {}).items():
            merged["services"].setdefault(service, {}).update(body)
        merged["volumes"].update(data.get("volumes") or {})
    return merged


def _substitute(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` against `env`."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if env.get(name):
            return env[name]
        if kind == "-":
            return rest
        raise KeyError(f"{name}: {rest}")

    return SUBSTITUTION.sub(one, value)


def _workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: body
        for name, body in compose["services"].items()
        if body.get("command", [None, None])[:2] == ["weather", "worker"]
        and body.get("deploy", {}).get("replicas", 1) > 0
    }


def _port_of(healthcheck: dict[str, Any]) -> int:
    (port,) = re.findall(r"127\.0\.0\.1:(\d+)/", " ".join(healthcheck["test"]))
    return int(port)


@pytest.mark.parametrize(
    "files", [("compose.yaml",), ("compose.yaml", "compose.gpu.yaml")], ids=["cpu", "gpu"]
)
def test_compose_starts_what_the_code_defines(files, monkeypatch):
    compose = _compose(*files)
    services = compose["services"]
    api, postgres = services["api"], services["postgres"]
    workers = _workers(compose)
    assert workers, "no worker would run"
    if "compose.gpu.yaml" in files:
        devices = [
            body["deploy"]["resources"]["reservations"]["devices"][0] for body in workers.values()
        ]
        ids = [d["device_ids"] for d in devices]
        assert all(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
        assert len({tuple(i) for i in ids}) == len(ids) and all(len(i) == 1 for i in ids), ids
        assert api["build"]["args"]["JAX_EXTRA"] == "cuda12"
        assert "ARG JAX_EXTRA" in (REPO / "Dockerfile").read_text()
        assert {body["image"] for body in workers.values()} == {api["image"]}

    parser = build_parser()
    serve = parser.parse_args(api["command"][1:])
    assert serve.command == "serve" and serve.no_worker, "the API must not sample"
    assert api["ports"] == ["${WEATHER_PORT:-8000}:8000"]
    assert _port_of(api["healthcheck"]) == 8000
    assert "ENV PATH=/app/.venv/bin:$PATH" in (REPO / "Dockerfile").read_text()

    env = {"WEATHER_API_KEYS": "a" * 64}  # what the user exports (a sha256 digest)
    pg_env = postgres["environment"]
    for name, body in {"api": api, **workers}.items():
        if name != "api":
            args = parser.parse_args(body["command"][1:])
            assert args.command == "worker" and _port_of(body["healthcheck"]) == args.metrics_port
            assert body["depends_on"]["api"]["condition"] == "service_healthy", name
        assert body["depends_on"]["postgres"]["condition"] == "service_healthy", name
        values = {k: _substitute(str(v), env) for k, v in body["environment"].items()}
        for key in values:
            assert key.startswith("WEATHER_"), key
            assert key[8:].lower() in Settings.model_fields, f"{name}: {key} is no setting"
        for key in [k for k in os.environ if k.startswith("WEATHER_")]:
            monkeypatch.delenv(key)
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        settings = Settings()  # validates every value as the service would
        url = urlsplit(settings.database)
        assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432), name
        assert url.username == _substitute(pg_env["POSTGRES_USER"], env)
        assert url.password == _substitute(pg_env["POSTGRES_PASSWORD"], env)
        assert url.path == "/" + _substitute(pg_env["POSTGRES_DB"], env)
        # Results (settings.data_dir, relative to the WORKDIR) on the one shared volume.
        mounts = dict(m.split(":")[::-1] for m in body["volumes"])
        assert mounts.get(f"{WORKDIR}/data") == "results", name
        assert f"{WORKDIR}/{settings.data_dir}".startswith(f"{WORKDIR}/data/"), settings.data_dir
    assert "results" in compose["volumes"]
    with pytest.raises(KeyError, match="WEATHER_API_KEYS"):
        _substitute(api["environment"]["WEATHER_API_KEYS"], {})
