"""The HTTP routes, one module per resource: the jobs (`jobs`), their results and scores
(`results`), their points, maps and meteograms read at fetch time (`views`), the archive's init
times and the model's fields (`archive`), the server itself (`health`), and the web page at ``/``
with its assets (`page`). What they share is `service.deps`.

Plain ``def`` routes: FastAPI runs them in its thread pool, so store calls and result exports
never block the event loop. The dependency they share (the API key) is ``async``: it only
computes, and a plain ``def`` dependency would cost a request one more thread hop. The result
and scores routes are ``async`` because they can long-poll (``wait``): they wait on the event
loop and do their store and file work in the thread pool.
"""

from fastapi import APIRouter

from service.routes import archive, health, jobs, page, results, views
from service.settings import Settings


def build_router(settings: Settings) -> APIRouter:
    """Every route; the submission's body model is bounded by ``settings.max_members``."""
    router = APIRouter()
    jobs.add_submission(router, settings)
    parts = (jobs.router, results.router, views.router, archive.router, health.router, page.router)
    for part in parts:
        router.include_router(part)
    return router


__all__ = ["build_router"]
