"""Mount the pages, their static files and the offline API docs on the app."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

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


def install(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for module in (home, recommend, zoo, datasets, jobs, docs):
        app.include_router(module.router)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(SignInNeeded, _sign_in)


__all__ = ["install"]
