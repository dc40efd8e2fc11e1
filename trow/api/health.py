"""Liveness and readiness endpoints, shared by every listener that serves them."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.web.iweb import IRequest

from trow.api.http import send_json
from typing import Awaitable, Callable


def healthz(request: IRequest) -> bytes:
    """The process is up and its reactor turns."""
    return send_json(request, 200, {"status": "ok"})


def readiness(request: IRequest, unready: Callable[[], Awaitable[str | None]]) -> Any:
    """200 if C{unready()} finds nothing wrong, else 503 with its reason."""

    async def check() -> bytes:
        reason = await unready()
        if reason is not None:
            return send_json(request, 503, {"status": "unavailable", "reason": reason})
        return send_json(request, 200, {"status": "ready"})

    return ensureDeferred(check())
