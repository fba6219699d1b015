"""Routes of the server itself: liveness, readiness, metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import ERRORS, Owner, service, settings_of
from service.errors import SafeJSONResponse
from service.schemas import Health, Readiness

router = APIRouter()


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process answers (no key needed)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: a worker has the model loaded and compiled",
    responses={503: {"model": Readiness, "description": "not ready"}},
)
def readyz(request: Request) -> Response:
    """Ready when the server's worker (its child process or thread) has loaded and warmed
    up the model, or (without one) when a live external worker for this model has (no key
    needed)."""
    svc = service(request)
    key = svc.catalog.info.key
    if svc.worker_process is not None:
        ready, detail = svc.worker_process.readiness(svc.store, time.time())
        worker = "process"
    elif svc.worker is not None:
        ready = svc.worker.ready.is_set()
        worker = "in-process"
        detail = (
            "model loaded and compiled"
            if ready
            else svc.worker.failure or "loading and compiling the model"
        )
    else:
        live = [
            w
            for w in svc.store.live_workers(
                now=time.time(), timeout=settings_of(request).worker_timeout_s
            )
            if w.model == key and w.ready
        ]
        ready = bool(live)
        worker = str(len(live))
        detail = f"{len(live)} live worker(s) for this model"
    data = {"ready": ready, "model": key, "worker": worker, "detail": detail}
    return SafeJSONResponse(data, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def prometheus(request: Request, owner: Owner) -> Response:
    """Queue depth, jobs per state, job durations, member-steps per second, batch fill
    and jobs per sampling call."""
    svc = service(request)
    svc.metrics.refresh(svc.store)
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
