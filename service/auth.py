"""Bearer tokens for write endpoints. Tokens map to users; admin tokens see everything.

With no token configured, the first start writes a random admin token to
$TASKALIGN_HOME/admin.token (mode 0600) rather than leaving writes open.

The web pages sign in by putting the token in an HttpOnly, SameSite=Strict cookie. The API
accepts that cookie too (so the pages' scripts can stream events and upload), but a request
that changes something must then also carry the CSRF token derived from it: a cookie is
sent by the browser on its own, a header only by our pages.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from zoo.access import ANONYMOUS, Principal

from .users import User

# Declares bearer security in OpenAPI; the check (and its 401 wording) is ours.
bearer = HTTPBearer(auto_error=False, description="A token from TASKALIGN_API_TOKENS or "
                    "TASKALIGN_ADMIN_TOKENS (or $TASKALIGN_HOME/admin.token).")


COOKIE = "taskalign_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(token: str) -> str:
    """The CSRF token of a session: a MAC of a fixed label under the user's token, so it
    needs no storage and cannot be computed without the token."""
    return hmac.new(token.encode(), b"taskalign-csrf", hashlib.sha256).hexdigest()


def csrf_matches(token: str, presented: str) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(token), presented)


def request_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
    """The bearer token, else the sign-in cookie (with its CSRF check on writes). A cookie
    whose token is no longer known (rotated, removed) counts as no cookie: the pages show
    the user as signed out, so the API must not answer them with 401s."""
    if credentials and credentials.credentials:
        return credentials.credentials
    token = request.cookies.get(COOKIE, "")
    if not token or find_user(request, token) is None:
        return ""
    if request.method not in SAFE_METHODS and not csrf_matches(
            token, request.headers.get(CSRF_HEADER, "")):
        raise HTTPException(403, f"a signed-in browser request that changes something needs "
                                 f"the {CSRF_HEADER} header of the page it came from")
    return token


def find_user(request: Request, token: str) -> User | None:
    """The token's user; every known token is compared, in constant time each."""
    found = None
    for known, user in request.app.state.tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            found = user
    return found


def _user_of(request: Request, token: str) -> User:
    user = find_user(request, token)
    if user is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    return user


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    token = request_token(request, credentials)
    if not token:
        raise HTTPException(401, "this endpoint needs a token: send 'Authorization: Bearer "
                                 "<token>' (or sign in at /sign-in)",
                            headers={"WWW-Authenticate": "Bearer"})
    return _user_of(request, token)


async def current_reader(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User | Principal:
    """Read endpoints work without a token (public repositories only); a token that is
    sent must be valid, so a typo is a 401 rather than a quietly smaller listing."""
    token = request_token(request, credentials)
    return _user_of(request, token) if token else ANONYMOUS


UserDep = Annotated[User, Depends(current_user)]
ReaderDep = Annotated[User | Principal, Depends(current_reader)]
