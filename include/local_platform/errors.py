"""Google's JSON error shape, so googleapiclient raises HttpError with the right status."""

from __future__ import annotations

_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


class ApiError(Exception):
    """A request-level failure, answered as ``{"error": {"code", "message", "status", "details"}}``."""

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
    """400; with ``field``, a BadRequest detail whose description is the message without its
    ``Field: F Error: `` prefix, as Google words them."""
    details = None
    if field:
        prefix = f"Field: {field} Error: "
        details = field_violation(field, message[len(prefix):] if message.startswith(prefix) else message)
    return ApiError(400, "INVALID_ARGUMENT", message, details)


def field_error(field: str, description: str) -> ApiError:
    """400 INVALID_ARGUMENT worded as Google did: ``Field: F Error: D`` plus a BadRequest detail."""
    return ApiError(400, "INVALID_ARGUMENT", f"Field: {field} Error: {description}",
                    field_violation(field, description))


def failed_precondition(message: str) -> ApiError:
    return ApiError(400, "FAILED_PRECONDITION", message)


def not_found(what: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"{what} not found.")


#: Google's ALREADY_EXISTS descriptions. model.name and job.job_id are Google's own words (outside
#: clients such as the provider's legacy MLEngineHook.create_model key on the model one); Google
#: documented none for versions, so that one follows the model's wording.
ALREADY_EXISTS = {
    "model.name": "A model with the same name already exists.",
    "version.name": "A version with the same name already exists.",
    "job.job_id": "A job with this id already exists.",
}


def already_exists(field: str) -> ApiError:
    """409 ALREADY_EXISTS: message ``Field: F Error: D``, one BadRequest fieldViolation {field, D}."""
    description = ALREADY_EXISTS[field]
    return ApiError(409, "ALREADY_EXISTS", f"Field: {field} Error: {description}",
                    field_violation(field, description))


def unimplemented(method: str) -> ApiError:
    return ApiError(501, "UNIMPLEMENTED", f"{method} is not implemented by the local ml/v1 service.")


class PredictionError(Exception):
    """A failure caused by instance content: answered HTTP 200 ``{"error": "..."}`` as ml/v1 did."""
