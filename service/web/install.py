"""Mount the pages, their static files and the offline API docs on the app."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api_client import ApiError
from .context import HERE, Page, SignInNeeded, with_query
from .pages import datasets, docs, home, jobs, recommend, zoo


async def _api_error(request: Request, err: Exception) -> Response:
    assert isinstance(err, ApiError)
    if err.status == 401:
        return RedirectResponse("/sign-in?" + with_query({}, next=request.url.path), 303)
    return Page(request).render("error.html", err.status, status=err.status,
                                message=err.message)


async def _sign_in(request: Request, err: Exception) -> Response:
    assert isinstance(err, SignInNeeded)
    return RedirectResponse("/sign-in?" + with_query({}, next=err.next_path), 303)


# Paths that belong to machines: their errors stay JSON whatever the client accepts.
API_PREFIXES = ("/v1/", "/hf/", "/static/", "/healthz", "/openapi.json")


def _for_people(request: Request) -> bool:
    return ("text/html" in request.headers.get("accept", "")
            and not request.url.path.startswith(API_PREFIXES))


def _html_errors(app: FastAPI, exc_class: type[Exception]) -> None:
    """A browser asking a page path gets an error page; everyone else the JSON body the
    API's own handler writes."""
    json_handler = app.exception_handlers[exc_class]

    async def handler(request: Request, err: Exception) -> Response:
        if not _for_people(request):
            return await json_handler(request, err)
        if isinstance(err, RequestValidationError):
            status, message = 422, "; ".join(
                f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in err.errors())
        else:
            status, message = err.status_code, str(err.detail)
        return Page(request).render("error.html", status, status=status, message=message)

    app.add_exception_handler(exc_class, handler)


def install(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for module in (home, recommend, zoo, datasets, jobs, docs):
        app.include_router(module.router)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(SignInNeeded, _sign_in)
    for exc_class in (StarletteHTTPException, RequestValidationError):
        _html_errors(app, exc_class)


__all__ = ["install"]
