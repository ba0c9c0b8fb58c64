"""Service errors and the one table that maps every domain error to an HTTP status and a stable code.

Every error response is an RFC 9457 problem document (`application/problem+json`)
with `type`, `title`, `status`, `detail`, `instance`, our stable `code` and the
request id. Handlers never put a traceback or request data into the body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from terdguard.core import errors as core

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
MAX_VALIDATION_ERRORS = 20  # a body with a million bad numbers still gets a short response


class ServiceError(Exception):
    """Base of the errors the service raises; `headers` and `extensions` go into the response."""

    def __init__(self, detail: str, *, headers: Mapping[str, str] | None = None,
                 extensions: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = dict(extensions or {})


class ModelUnknown(ServiceError):
    """No model is registered under the requested name."""


class ModelConflict(ServiceError):
    """The name is registered already, with other model content."""


class ModelChanged(ServiceError):
    """The model files on disk no longer match the fingerprint the model was scanned with."""


class ModelNotReady(ServiceError):
    """The model is queued or being scanned; the request can be retried later."""


class ModelFailed(ServiceError):
    """The model's scan failed; it needs a rescan before it can serve."""


class InvalidSource(ServiceError):
    """A model source is absolute, escapes the models root, or is not a usable path."""


class InvalidRequest(ServiceError):
    """The request is well-formed JSON but requests something the service cannot do."""


class Unauthorized(ServiceError):
    """The API key is missing or wrong."""


class Forbidden(ServiceError):
    """The key is valid but does not grant this operation."""


class PolicyForbidden(ServiceError):
    """The request names a guard policy weaker than the server allows."""


class PayloadTooLarge(ServiceError):
    """The request body exceeds the configured limit."""


class QueueFull(ServiceError):
    """Every generation slot is busy and the waiting room is full."""


class SamplerUnavailable(ServiceError):
    """The remote sampler could not be reached or responded with an error."""


class SamplerTimeout(ServiceError):
    """The remote sampler did not respond in time."""


class ClientDisconnected(ServiceError):
    """The client closed the connection before its generation finished, so the generation was stopped."""


class GuardRejected(ServiceError):
    """The guard flagged at least one sample as poisoned under the `reject` policy."""


@dataclass(frozen=True)
class ErrorKind:
    """The report of one error class: HTTP status, stable code and a short title."""

    status: int
    code: str
    title: str


# The one table. Lookup walks the exception's MRO, so a subclass without its own
# row inherits its parent's; core's ModelLoadError subclasses are listed first.
ERROR_TABLE: dict[type[BaseException], ErrorKind] = {
    # Service errors.
    ModelUnknown: ErrorKind(404, "model_not_found", "Model not found"),
    ModelConflict: ErrorKind(409, "model_conflict", "Model name taken by other content"),
    ModelChanged: ErrorKind(409, "model_changed", "Model files changed since the scan"),
    ModelFailed: ErrorKind(409, "model_failed", "Model scan failed"),
    ModelNotReady: ErrorKind(503, "model_not_ready", "Model not ready"),
    InvalidSource: ErrorKind(422, "invalid_source", "Invalid model source"),
    InvalidRequest: ErrorKind(422, "invalid_request", "Invalid request"),
    Unauthorized: ErrorKind(401, "unauthorized", "Missing or invalid API key"),
    Forbidden: ErrorKind(403, "forbidden", "Operation not allowed for this key"),
    PolicyForbidden: ErrorKind(403, "guard_policy_forbidden", "Guard policy not allowed"),
    GuardRejected: ErrorKind(403, "guard_rejected", "Poisoned initial noise rejected"),
    PayloadTooLarge: ErrorKind(413, "payload_too_large", "Request body too large"),
    QueueFull: ErrorKind(429, "queue_full", "Generation queue full"),
    SamplerUnavailable: ErrorKind(502, "sampler_unavailable", "Sampler unavailable"),
    SamplerTimeout: ErrorKind(504, "sampler_timeout", "Sampler timed out"),
    # 499 is the status nginx logs for a request its client closed. The body is never read, but metrics count it.
    ClientDisconnected: ErrorKind(499, "client_disconnected", "Client closed the request"),
    # Core errors.
    core.ModelNotFoundError: ErrorKind(422, "source_not_found", "Model source not found"),
    core.MissingConfigError: ErrorKind(422, "missing_config", "Model config missing or invalid"),
    core.UnsafeWeightsError: ErrorKind(422, "unsafe_weights", "Pickle weights rejected"),
    core.UnsupportedModelError: ErrorKind(422, "unsupported_model", "Model kind not supported"),
    core.ModelLoadError: ErrorKind(422, "model_load_failed", "Model could not be loaded"),
    core.InvalidLatentsError: ErrorKind(422, "invalid_latents", "Invalid latents"),
    core.DeviceUnavailableError: ErrorKind(503, "device_unavailable", "Device unavailable"),
    core.ScanFailedError: ErrorKind(500, "scan_failed", "Scan failed"),
    core.TriggerFileError: ErrorKind(500, "trigger_file_invalid", "Stored trigger unreadable"),
    core.TerdGuardError: ErrorKind(500, "core_error", "Guard library error"),
    # Framework errors.
    RequestValidationError: ErrorKind(422, "validation_error", "Request validation failed"),
}
INTERNAL_ERROR = ErrorKind(500, "internal_error", "Internal server error")
HTTP_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


def classify(error: BaseException) -> ErrorKind:
    """Return the table row of `error`'s closest listed class, or the internal-error row."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return INTERNAL_ERROR


def problem_response(kind: ErrorKind, detail: str, *, instance: str, request_id: str | None,
                     headers: Mapping[str, str] | None = None,
                     extensions: Mapping[str, Any] | None = None) -> JSONResponse:
    """Build an RFC 9457 problem response for one error."""
    body: dict[str, Any] = {
        "type": f"urn:terdguard:problem:{kind.code}",
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
        "instance": instance,
        "code": kind.code,
        "request_id": request_id,
    }
    body.update(extensions or {})
    response_headers = dict(headers or {})
    if request_id:
        response_headers["X-Request-ID"] = request_id
    return JSONResponse(body, status_code=kind.status, headers=response_headers, media_type=PROBLEM_MEDIA_TYPE)


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _respond(request: Request, kind: ErrorKind, detail: str, headers: Mapping[str, str] | None = None,
             extensions: Mapping[str, Any] | None = None) -> JSONResponse:
    return problem_response(kind, detail, instance=request.url.path, request_id=request_id_of(request),
                            headers=headers, extensions=extensions)


async def _domain_error(request: Request, error: Exception) -> JSONResponse:
    kind = classify(error)
    headers = error.headers if isinstance(error, ServiceError) else None
    extensions = error.extensions if isinstance(error, ServiceError) else None
    if kind.status >= 500:
        logger.error("request failed code=%s error=%s request_id=%s", kind.code, error, request_id_of(request))
    else:
        logger.info("request rejected code=%s request_id=%s", kind.code, request_id_of(request))
    return _respond(request, kind, str(error), headers, extensions)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    # Only location, message and type: echoing `input` could return a whole tensor or a secret.
    items = error.errors()
    fields = [
        {"loc": list(item.get("loc", ())), "msg": item.get("msg", ""), "type": item.get("type", "")}
        for item in items
    ]
    shown = fields[:MAX_VALIDATION_ERRORS]
    extensions: dict[str, Any] = {"errors": shown}
    if len(fields) > len(shown):
        extensions["errors_omitted"] = len(fields) - len(shown)
    first = shown[0] if shown else {"loc": [], "msg": "invalid request"}
    location = ".".join(str(part) for part in first["loc"])
    hint = _body_hint(items[0], request) if items else ""
    detail = f"request invalid: {location}: {first['msg']}{hint}"
    if len(fields) > 1:
        detail += f" (and {len(fields) - 1} more)"
    return _respond(request, ERROR_TABLE[RequestValidationError], detail, extensions=extensions)


def _body_hint(item: Mapping[str, Any], request: Request) -> str:
    """Return what to fix when the body as a whole is not JSON or not an object, else ''."""
    location = tuple(item.get("loc", ()))
    if item.get("type") == "json_invalid":
        reason = (item.get("ctx") or {}).get("error", "")
        at = f" at character {location[1]}" if len(location) > 1 else ""
        return f" ({reason}{at}); send the body as one JSON object"
    content_type = request.headers.get("content-type", "")
    if location == ("body",) and "json" not in content_type:
        return f"; got content-type {content_type or 'none'!r}, send a JSON object with content-type application/json"
    return ""


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code = HTTP_STATUS_CODES.get(error.status_code, "http_error")
    kind = ErrorKind(error.status_code, code, code.replace("_", " ").capitalize())
    return _respond(request, kind, str(error.detail), headers=error.headers)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("request failed with an unexpected error request_id=%s", request_id_of(request))
    return _respond(request, INTERNAL_ERROR, "internal error; the server log has the details under this request id")


def install_error_handlers(app: FastAPI) -> None:
    """Register the problem+json handlers on `app`."""
    app.add_exception_handler(ServiceError, _domain_error)
    app.add_exception_handler(core.TerdGuardError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
