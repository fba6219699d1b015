"""The web page (``GET /``) and its assets (``GET /static/NAME``), from ``service/static``.

Plain HTML, CSS and JavaScript, no build step: the page talks to the JSON and image routes
with ``fetch`` (sending the API key the user entered as ``Authorization: Bearer KEY``), so it
needs no key itself. Everything it loads comes from this server, which its
Content-Security-Policy enforces in the browser: no CDN, and it works offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Response

router = APIRouter()

# What the page may load: this server only (and the blob: URLs of the images it fetched).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_HEADERS = {
    # Revalidate each time: a new version of the service serves its own page at once.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


# Beside the package's modules (package data). Not `importlib.resources.files("service")`: a
# ``service`` folder elsewhere on the path (the tests' own) can shadow the package's name there.
STATIC = Path(__file__).resolve().parent.parent / "static"


def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


@router.get("/", include_in_schema=False)
def page() -> Response:
    """The web page: submit forecasts, follow their progress, maps, meteograms, scores."""
    headers = {**_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY}
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=headers)


@router.get("/static/{name}", include_in_schema=False)
def asset(name: str) -> Response:
    """One of the page's files (`ASSETS`; anything else is a 404)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"no such file: {name[:64]!r}")
    return Response(_read(name), media_type=media_type, headers=_HEADERS)
