"""Error answers that can always be sent: JSON made safe, and one handler per kind of failure.

A validation error echoes what the client sent (``input``), and a client can send what JSON
cannot carry back: ``NaN``, ``Infinity`` and ``1e400`` (Python's JSON reader accepts them as
floats), integers too long for Python to print (over 4300 digits), and lone UTF-16 surrogates
(``"\\ud800"``, valid JSON escapes that no UTF-8 encoder accepts). Rendering such an echo with
Starlette's `JSONResponse` raises, which turns a 422 into a 500 and drops the connection. Here
every answer goes through `safe_json`: non-finite numbers become ``null``, unprintable integers
and broken strings become short descriptions, so a bad request always gets its 4xx and the
connection stays usable.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("service")

# Python prints integers of up to 4300 digits (sys.int_info.default_max_str_digits); a JSON
# answer has no use for more than a few.
_MAX_INT_DIGITS = 60
_MAX_DEPTH = 32


def _safe_string(text: str) -> str:
    """The text with lone surrogates (unencodable in UTF-8) written as ``\\udXXX`` escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_int(value: int) -> int | str:
    bits = value.bit_length()
    # 2^(3.33 d) ~ 10^d: a cheap bound that never prints the number itself.
    if bits <= _MAX_INT_DIGITS * 3.32:
        return value
    return f"<an integer of about {int(bits / 3.3219)} digits>"


def safe_json(value: Any, depth: int = 0) -> Any:
    """``value`` made encodable as strict UTF-8 JSON (see the module docstring)."""
    if depth > _MAX_DEPTH:
        return "<nested too deeply>"
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _safe_int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _safe_string(value)
    if isinstance(value, dict):
        return {_safe_string(str(k)): safe_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [safe_json(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return _safe_string(value.decode("utf-8", "backslashreplace"))
    return _safe_string(str(value))


class SafeJSONResponse(JSONResponse):
    """A `JSONResponse` whose content is passed through `safe_json` first."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            safe_json(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")


def _describe_input(value: Any) -> Any:
    """The echoed input of a validation error, or a description of what it was."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def validation_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic's errors as FastAPI shows them (``loc``, ``msg``, ``type``, ``input``), safe."""
    out = []
    for error in errors:
        entry: dict[str, Any] = {
            "loc": list(error.get("loc", ())),
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        if "input" in error:
            entry["input"] = _describe_input(error["input"])
        ctx = error.get("ctx")
        if ctx:
            entry["ctx"] = {str(k): _describe_input(v) for k, v in ctx.items()}
        out.append(entry)
    return out


def install_error_handlers(app: FastAPI) -> None:
    """Answer validation errors (422), HTTP errors and unexpected failures (500, logged with an
    id that the answer carries) with `SafeJSONResponse`."""

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return SafeJSONResponse({"detail": validation_errors(list(error.errors()))}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return SafeJSONResponse(
            {"detail": error.detail}, error.status_code, headers=getattr(error, "headers", None)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.error(
            "incident %s: %s %s failed", incident, request.method, request.url.path, exc_info=error
        )
        return SafeJSONResponse(
            {"detail": f"internal error (incident {incident}, logged by the server)"}, 500
        )
