"""Errors that ModelMora reports to people, one line each, with the fix in the message.

    ModelmoraError
    ├── ManifestError        modelmora.toml is missing, malformed or invalid
    ├── LockError            modelmora.lock is missing, malformed or stale
    ├── SourceError          a source cannot be resolved or fetched
    │   ├── NotFoundError    the repository, revision or file does not exist
    │   ├── OfflineError     offline mode and the data is not in the cache
    │   ├── UnsafeFileError  pickle weights or a path that escapes the snapshot
    │   └── TransientError   a reset, a timeout, HTTP 429 or 5xx: retried, then reported
    ├── IntegrityError       bytes do not match their sha256
    ├── CacheError           the cache is in a state we cannot use
    ├── BundleError          a file is not a modelmora bundle, or one of another format version
    └── ServeError           a request cannot be served (carries an HTTP status and a code)
        ├── UnknownModelError 404, JobNotFoundError 404, JobNotCancellableError 409
        ├── ConflictError 409 (a version change the model's state refuses)
        ├── ForbiddenError 403 (the API key lacks the scope)
        ├── InvalidInputError 422, PayloadTooLargeError 413, OverloadedError 429
        ├── UnavailableError 503, DeadlineExceededError 504
        └── ClientDisconnectedError 499 (nobody reads the answer)

This module imports nothing else of the package, so every module may import it.
"""

from __future__ import annotations


class ModelmoraError(Exception):
    """A problem the user can fix; `str()` is the whole one-line message."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class ManifestError(ModelmoraError):
    pass


class LockError(ModelmoraError):
    pass


class SourceError(ModelmoraError):
    pass


class NotFoundError(SourceError):
    pass


class OfflineError(SourceError):
    pass


class UnsafeFileError(SourceError):
    pass


class TransientError(SourceError):
    """A failure that may pass if tried again: a dropped connection, a timeout, HTTP 429 or 5xx."""

    def __init__(
        self, message: str, hint: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, hint)
        self.retry_after = retry_after


class IntegrityError(ModelmoraError):
    pass


class CacheError(ModelmoraError):
    pass


class BundleError(ModelmoraError):
    pass


class ServeError(ModelmoraError):
    """An error a request can hit; `status` is the HTTP status and `code` a stable name."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, hint: str | None = None, *, retry_after: float | None = None):
        super().__init__(message, hint)
        self.retry_after = retry_after


class UnknownModelError(ServeError):
    status = 404
    code = "model_not_found"


class ConflictError(ServeError):
    """A change that the model's current state refuses: removing its only routed version,
    deprecating a version that gets traffic, registering a name that exists."""

    status = 409
    code = "conflict"


class InvalidInputError(ServeError):
    status = 422
    code = "invalid_input"


class PayloadTooLargeError(ServeError):
    status = 413
    code = "payload_too_large"


class UnavailableError(ServeError):
    """The model's worker crashed, failed to load or is shutting down."""

    status = 503
    code = "model_unavailable"


class DeadlineExceededError(ServeError):
    status = 504
    code = "deadline_exceeded"


class OverloadedError(ServeError):
    status = 429
    code = "overloaded"


class ClientDisconnectedError(ServeError):
    """The client left before its request was computed; nobody reads the answer."""

    status = 499
    code = "client_closed_request"


class ForbiddenError(ServeError):
    """The request's API key is valid but lacks the scope the route needs."""

    status = 403
    code = "insufficient_scope"


class JobNotFoundError(ServeError):
    status = 404
    code = "job_not_found"


class JobNotCancellableError(ServeError):
    """Only a queued job can be cancelled: a running one is already on a worker."""

    status = 409
    code = "job_not_cancellable"


SERVE_ERRORS: tuple[type[ServeError], ...] = (
    UnknownModelError,
    InvalidInputError,
    PayloadTooLargeError,
    UnavailableError,
    DeadlineExceededError,
    OverloadedError,
    ClientDisconnectedError,
    JobNotFoundError,
    JobNotCancellableError,
    ConflictError,
    ForbiddenError,
)


def serve_error_class(code: str | None) -> type[ServeError]:
    """The ServeError subclass whose `code` this is (a worker's reply, a server's response)."""
    return next((cls for cls in SERVE_ERRORS if cls.code == code), ServeError)
