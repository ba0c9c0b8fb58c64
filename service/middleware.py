"""Pure ASGI middleware: request ids, request metrics and logs, and the body size limit.

The body limit counts the bytes actually received, so a missing or false
Content-Length cannot get a larger body through. The body is read up to the limit
before the app runs and then replayed to it; over the limit, the app never runs.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ERROR_TABLE, PayloadTooLarge, problem_response
from .metrics import Metrics

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
QUIET_ROUTES = ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")
UNMATCHED_ROUTE = "unmatched"

# The current request's id, for log lines written away from the request object;
# worker threads started with anyio.to_thread inherit it.
_request_id: ContextVar[str | None] = ContextVar("terdguard_request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _route_label(scope: Scope) -> str:
    """Return the route template (bounded), matching it here when the router has not run."""
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", []):
            if candidate.matches(scope)[0] is Match.FULL:
                route = candidate
                break
    return getattr(route, "path", None) or UNMATCHED_ROUTE


class _BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    """Tags each request with an id, enforces the body limit, and records metrics and a log line."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        # 1. Take the caller's request id when it is safe to echo, else make one.
        given = _header(scope, REQUEST_ID_HEADER)
        request_id = given if given and REQUEST_ID_PATTERN.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = _request_id.set(request_id)
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            # 2. Read the body within the limit, then hand the app a replay of it.
            try:
                body = await self._read_body(scope, receive)
            except _BodyTooLarge:
                await self._reject_too_large(scope, request_id, send_with_id)
                return
            await self.app(scope, _replay(body, receive), send_with_id)
        finally:
            # 3. Count the request under its route template, never its raw path.
            route = _route_label(scope)
            seconds = time.perf_counter() - start
            self.metrics.http_requests.labels(route=route, method=scope["method"], status=str(status)).inc()
            self.metrics.http_duration.labels(route=route).observe(seconds)
            level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
            logger.log(level, "request finished method=%s route=%s status=%d seconds=%.4f request_id=%s",
                       scope["method"], route, status, seconds, request_id)
            _request_id.reset(token)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _BodyTooLarge()
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client disconnected, so the app gets an empty body and then the disconnect
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body_bytes:
                raise _BodyTooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _reject_too_large(self, scope: Scope, request_id: str, send: Send) -> None:
        error = PayloadTooLarge(f"request body too large: expected at most {self.max_body_bytes} bytes")
        response = problem_response(ERROR_TABLE[PayloadTooLarge], str(error), instance=scope.get("path", ""),
                                    request_id=request_id, headers={"Connection": "close"})
        logger.info("request rejected code=payload_too_large request_id=%s", request_id)
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _replay(body: bytes, receive: Receive) -> Callable[[], Awaitable[MutableMapping[str, Any]]]:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
