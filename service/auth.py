"""Bearer tokens for write endpoints. Tokens map to users; admin tokens see everything.

With no token configured, the first start writes a random admin token to
$TASKALIGN_HOME/admin.token (mode 0600) rather than leaving writes open.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from zoo.access import ANONYMOUS, Principal

from .users import User

# Declares bearer security in OpenAPI; the check (and its 401 wording) is ours.
bearer = HTTPBearer(auto_error=False, description="A token from TASKALIGN_API_TOKENS or "
                    "TASKALIGN_ADMIN_TOKENS (or $TASKALIGN_HOME/admin.token).")


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
    token = credentials.credentials if credentials else ""
    if not token:
        raise HTTPException(401, "this endpoint needs a token: send 'Authorization: Bearer "
                                 "<token>'", headers={"WWW-Authenticate": "Bearer"})
    return _user_of(request, token)


async def current_reader(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User | Principal:
    """Read endpoints work without a token (public repositories only); a token that is
    sent must be valid, so a typo is a 401 rather than a quietly smaller listing."""
    token = credentials.credentials if credentials else ""
    return _user_of(request, token) if token else ANONYMOUS


UserDep = Annotated[User, Depends(current_user)]
ReaderDep = Annotated[User | Principal, Depends(current_reader)]
