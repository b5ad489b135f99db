"""The 4xx answers routes declare in OpenAPI, so clients and schemathesis know every status
a route can return and the shape of its body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ErrorItem(BaseModel):
    """One problem with a request, as request validation reports it."""

    model_config = ConfigDict(extra="allow")  # e.g. allowed, did_you_mean, input, image

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every 4xx body: a message, or a list of itemised problems."""

    detail: str | list[ErrorItem]


Responses = dict[int | str, dict[str, Any]]


def error(*codes: tuple[int, str]) -> Responses:
    return {code: {"model": ErrorBody, "description": text} for code, text in codes}


# Any route: the middlewares answer these before a route runs, and request validation
# (path, query, body) answers 422 with itemised problems.
EVERY_ROUTE = error((400, "The URL contains a NUL byte"),
                    (413, "The request body is over this route's size limit"),
                    (422, "The request is invalid: what was wrong and what is allowed"))
TOKEN = error((401, "No token, or an unknown one"))
SENT_TOKEN = error((401, "A token was sent and is unknown (no token: public data only)"))
NOT_FOUND = error((404, "No such item, or not the caller's (the two answer the same)"))
CONFLICT = error((409, "Clashes with the current state"))
FORBIDDEN = error((403, "Not the owner's, nor an admin's"))
MEDIA_TYPE = error((415, "Unsupported content type"))
