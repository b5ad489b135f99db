"""What every page needs: its user, the CSRF token, and rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import HTTPException, Request
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup

from ..auth import COOKIE, csrf_matches, csrf_token, find_user
from ..users import User
from .api_client import Api

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
# Raw HTML in a card is shown as text and link schemes are checked (javascript: is
# refused): a card written by any uploader renders without running anything.
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def markdown(text: str) -> Markup:
    return Markup(_markdown.render(text or ""))  # noqa: S704 - html is disabled above


def number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}"


def with_query(params: dict[str, Any], **changes: Any) -> str:
    merged = {**params, **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "")}, doseq=True)


templates.env.filters["markdown"] = markdown
templates.env.filters["number"] = number
templates.env.globals["with_query"] = with_query


class Page:
    """A request's user (from the sign-in cookie), its API client and its renderer."""

    def __init__(self, request: Request):
        self.request = request
        self.token = request.cookies.get(COOKIE, "")
        self.user: User | None = find_user(request, self.token) if self.token else None
        # An unknown or rotated token reads as signed out, and the cookie is dropped.
        self.stale_cookie = bool(self.token) and self.user is None
        if self.user is None:
            self.token = ""
        self.api = Api(request.app, self.token or None)

    @property
    def csrf(self) -> str:
        return csrf_token(self.token) if self.token else ""

    def require_user(self) -> User:
        if self.user is None:
            url = self.request.url
            raise SignInNeeded(url.path + (f"?{url.query}" if url.query else ""))
        return self.user

    async def check_form(self) -> dict[str, Any]:
        """A posted form, refused unless it comes from this site and carries this
        session's CSRF token. The user is checked before the body is read, so an
        anonymous post cannot make the server spool an upload."""
        refuse_cross_site(self.request)
        self.require_user()
        form = dict(await self.request.form())
        if not csrf_matches(self.token, str(form.get("csrf_token", ""))):
            raise HTTPException(403, "the form's CSRF token is missing or stale: reload the "
                                     "page and submit again")
        return form

    def render(self, template: str, status_code: int = 200, **values: Any) -> Any:
        response = templates.TemplateResponse(self.request, template, {
            "user": self.user, "csrf": self.csrf, "path": self.request.url.path, **values},
            status_code=status_code)
        response.headers["content-security-policy"] = CONTENT_SECURITY_POLICY
        if self.stale_cookie:
            response.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return response


# Pages load scripts, styles and images from this server only: a card's Markdown cannot
# pull in a tracking image, and nothing inline runs. (Inline style attributes draw the
# score bars; /docs and /redoc are FastAPI's pages and set no policy.)
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; "
                           "style-src 'self' 'unsafe-inline'; object-src 'none'; "
                           "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def refuse_cross_site(request: Request) -> None:
    """Refuse a form another site made the browser send. Browsers say where a request
    comes from in Sec-Fetch-Site; older ones only send Origin, which is compared with the
    host the client addressed (X-Forwarded-Host behind a proxy), not with our own URL,
    which a reverse proxy rewrites."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        if site not in ("same-origin", "none"):
            raise HTTPException(403, f"form posted from another site (Sec-Fetch-Site: {site})")
        return
    origin = request.headers.get("origin")
    if not origin:
        return
    host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
    if urlsplit(origin).netloc != host.split(",")[0].strip():
        raise HTTPException(403, f"form posted from another site ({origin})")


class SignInNeeded(Exception):
    def __init__(self, next_path: str):
        self.next_path = next_path
