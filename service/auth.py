"""Bearer tokens for write endpoints. Tokens map to users; admin tokens see everything.

With no token configured, the first start writes a random admin token to
$TASKALIGN_HOME/admin.token (mode 0600) rather than leaving writes open.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from zoo.access import ADMIN, ANONYMOUS, ORG, Principal

from .config import Settings

log = logging.getLogger("taskalign")


@dataclass(frozen=True)
class User:
    name: str
    admin: bool

    def may_access(self, owner: str) -> bool:
        """Owners see their own rows; admins see everyone's."""
        return self.admin or owner == self.name


MIN_TOKEN_LENGTH = 16
RESERVED = (ADMIN, ORG)  # ORG: the seed zoo's namespace, an admin's for encoders
USER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def load_tokens(settings: Settings) -> dict[str, User]:
    """Token -> user from the settings; refuses short tokens, the reserved name `admin`,
    and one token given to two identities."""
    tokens: dict[str, User] = {}

    def add(token: str, user: User, where: str) -> None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"{where}: tokens need at least {MIN_TOKEN_LENGTH} characters")
        if token in tokens and tokens[token] != user:
            raise ValueError(f"{where}: one token is given to both {tokens[token].name} and "
                             f"{user.name}")
        tokens[token] = user

    for pair in filter(None, (p.strip() for p in settings.api_tokens.split(","))):
        name, sep, token = pair.partition("=")
        if not sep or not USER_NAME.match(name):
            raise ValueError("TASKALIGN_API_TOKENS entries must be user=token, user names in "
                             "lower case letters, digits, '.', '_' and '-'")
        if name in RESERVED:
            raise ValueError(f"TASKALIGN_API_TOKENS: the user name '{name}' is reserved "
                             f"({', '.join(RESERVED)} belong to admin tokens, "
                             "TASKALIGN_ADMIN_TOKENS)")
        add(token, User(name=name, admin=False), "TASKALIGN_API_TOKENS")
    for token in filter(None, (t.strip() for t in settings.admin_tokens.split(","))):
        add(token, User(name=ADMIN, admin=True), "TASKALIGN_ADMIN_TOKENS")
    if not tokens:
        path = settings.home / "admin.token"
        if not path.exists():
            settings.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
            log.warning("no tokens configured: wrote an admin token to %s", path)
        tokens[path.read_text().strip()] = User(name=ADMIN, admin=True)
    return tokens


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
