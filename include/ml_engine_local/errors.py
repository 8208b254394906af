"""Google's JSON error shape, so googleapiclient raises HttpError with the right status."""

from __future__ import annotations

_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


class ApiError(Exception):
    """A request-level failure, answered as `{"error": {"code", "message", "status", "details"}}`."""

    def __init__(self, code: int, status: str, message: str, details: list[dict] | None = None):
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.details = details or []

    def body(self) -> dict:
        error = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def field_violation(field: str, description: str) -> list[dict]:
    return [{"@type": _BAD_REQUEST, "fieldViolations": [{"field": field, "description": description}]}]


def invalid_argument(message: str, field: str | None = None) -> ApiError:
    details = field_violation(field, message) if field else None
    return ApiError(400, "INVALID_ARGUMENT", message, details)


def failed_precondition(message: str) -> ApiError:
    return ApiError(400, "FAILED_PRECONDITION", message)


def not_found(what: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"{what} not found.")


def already_exists(field: str, name: str) -> ApiError:
    message = f"Field: {field} Error: A resource with the name {name} already exists."
    return ApiError(409, "ALREADY_EXISTS", message, field_violation(field, message))


def unimplemented(method: str) -> ApiError:
    return ApiError(501, "UNIMPLEMENTED", f"{method} is not implemented by the local ml/v1 service.")


class PredictionError(Exception):
    """A failure caused by instance content: answered HTTP 200 `{"error": "..."}` as ml/v1 did."""
