"""Google's JSON error shape, as Compute Engine sends it."""

STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}

DEFAULT_REASON = {
    400: "invalid",
    401: "required",
    404: "notFound",
    409: "alreadyExists",
    412: "conditionNotMet",
    429: "rateLimitExceeded",
    500: "backendError",
    501: "notImplemented",
    503: "backendError",
}


class ApiError(Exception):
    def __init__(self, code, message, reason=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or DEFAULT_REASON.get(code, "invalid")

    def body(self):
        return error_body(self.code, self.message, self.reason)


def error_body(code, message, reason):
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
            "status": STATUS.get(code, "UNKNOWN"),
        }
    }


def not_found(key):
    return ApiError(404, f"The resource '{key}' was not found", reason="notFound")
