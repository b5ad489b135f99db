"""Bearer tokens for write endpoints. Tokens map to users; admin tokens see everything.

With no token configured, the first start writes a random admin token to
$TASKALIGN_HOME/admin.token (mode 0600) rather than leaving writes open.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from .config import Settings

log = logging.getLogger("taskalign")


@dataclass(frozen=True)
class User:
    name: str
    admin: bool

    def may_access(self, owner: str) -> bool:
        """Owners see their own rows; admins see everyone's."""
        return self.admin or owner == self.name


def load_tokens(settings: Settings) -> dict[str, User]:
    tokens: dict[str, User] = {}
    for pair in filter(None, (p.strip() for p in settings.api_tokens.split(","))):
        user, sep, token = pair.partition("=")
        if not sep or not user or len(token) < 16:
            raise ValueError("TASKALIGN_API_TOKENS entries must be user=token with tokens of "
                             "at least 16 characters")
        tokens[token] = User(name=user, admin=False)
    for token in filter(None, (t.strip() for t in settings.admin_tokens.split(","))):
        tokens[token] = User(name="admin", admin=True)
    if not tokens:
        path = settings.home / "admin.token"
        if not path.exists():
            settings.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
            log.warning("no tokens configured: wrote an admin token to %s", path)
        tokens[path.read_text().strip()] = User(name="admin", admin=True)
    return tokens


async def current_user(request: Request) -> User:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "this endpoint needs a token: send 'Authorization: Bearer "
                                 "<token>'", headers={"WWW-Authenticate": "Bearer"})
    for known, user in request.app.state.tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            return user
    raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})


UserDep = Annotated[User, Depends(current_user)]
