"""Domain errors that the HTTP layer maps to 4xx (service/errors.py), so that planners and
other domain modules can refuse a request without importing the web framework."""

from __future__ import annotations


class Problem(ValueError):
    """A refused request: `field` names the request field to fix, the message says why and
    what is allowed."""

    status = 422
    code = "invalid"
    # Itemised: the body is a list of {loc, msg, type} like a failed request validation;
    # otherwise a plain {"detail": message}.
    itemised = True

    def __init__(self, field: str, message: str, code: str | None = None):
        self.field, self.message = field, message
        if code:
            self.code = code
        super().__init__(message)


class Invalid(Problem):
    """The request cannot be carried out as given (422)."""


class NotFound(Problem):
    """What the request names does not exist, or is not the caller's (404)."""

    status = 404
    code = "not_found"
    itemised = False


class Conflict(Problem):
    """The request clashes with the current state (409)."""

    status = 409
    code = "conflict"
    itemised = False
