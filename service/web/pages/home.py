"""The front page and the sign-in form."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from ...auth import COOKIE, find_user
from ..context import Page, refuse_cross_site

router = APIRouter(include_in_schema=False)


def _local(path: str) -> str:
    """Only same-site paths are followed after sign-in (no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") else "/"


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> HTMLResponse:
    page = Page(request)
    counts = {}
    encoders = await page.api.get("/v1/encoders", {"limit": 1})
    counts["encoders"] = encoders["count"]
    return page.render("home.html", counts=counts)


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_form(request: Request, next: str = "/") -> HTMLResponse:
    return Page(request).render("sign_in.html", next=_local(next), error=None)


@router.post("/sign-in", response_model=None)
async def sign_in(request: Request, token: Annotated[str, Form(max_length=512)],
                  next: Annotated[str, Form(max_length=512)] = "/"
                  ) -> HTMLResponse | RedirectResponse:
    page = Page(request)
    try:
        refuse_cross_site(request)  # no login CSRF: another site cannot sign us in
    except HTTPException as err:
        return page.render("sign_in.html", 403, next="/", error=err.detail)
    user = find_user(request, token.strip())
    if user is None:
        return page.render("sign_in.html", 401, next=_local(next),
                           error="unknown token: use one from TASKALIGN_API_TOKENS, "
                                 "TASKALIGN_ADMIN_TOKENS or $TASKALIGN_HOME/admin.token")
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", max_age=7 * 24 * 3600)
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> RedirectResponse:
    page = Page(request)
    if page.user is not None:
        await page.check_form()
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE, httponly=True, samesite="strict")
    return response
