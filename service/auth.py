"""API keys as bearer tokens, and the request body limit.

Settings hold only sha256 digests of the keys. A request's token is hashed and compared with
each digest in constant time; the job owner is a prefix of the digest, so a key sees only the
jobs it submitted and the key itself is never stored. Without keys every client is ``local``,
and only loopback clients are answered (`weather serve` also refuses to bind elsewhere).
"""

import hashlib
import hmac

from fastapi import HTTPException, Request
from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.settings import Settings, is_loopback

LOCAL_OWNER = "local"
bearer = HTTPBearer(
    auto_error=False,
    description="an API key (the server stores its sha256 digest in WEATHER_API_KEYS)",
)


def key_digest(key: str) -> str:
    """The sha256 hex digest of an API key (what the settings hold)."""
    return hashlib.sha256(key.encode()).hexdigest()


def owner_of(settings: Settings, request: Request, token: str | None) -> str:
    """The owner id a request acts for.

    Raises:
      HTTPException: 401 without a valid key when keys are configured; 403 for a non-loopback
        client when they are not.
    """
    if not settings.api_keys:
        client = request.client.host if request.client is not None else ""
        if not is_loopback(client):
            raise HTTPException(
                403, "this server has no API keys configured and answers only loopback clients"
            )
        return LOCAL_OWNER
    if token is None:
        raise HTTPException(
            401, "missing bearer token (Authorization: Bearer KEY)", {"WWW-Authenticate": "Bearer"}
        )
    digest = key_digest(token)
    # Compare with every digest (no early exit) so timing does not tell which one nearly matched.
    matches = [hmac.compare_digest(digest, known) for known in settings.api_keys]
    if not any(matches):
        raise HTTPException(401, "unknown API key", {"WWW-Authenticate": "Bearer"})
    return digest[:16]


class BodyLimitMiddleware:
    """Answer 413 to a request body over ``max_bytes`` before any route reads it.

    The body (at most ``max_bytes``) is read here and replayed to the app, so the limit holds
    for chunked uploads without Content-Length too.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        body = f'{{"detail":"request body exceeds {self.max_bytes} bytes"}}'.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
