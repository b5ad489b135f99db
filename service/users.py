"""Who may call the API: users and admins from the configured tokens.

Kept free of FastAPI so that job runners and workers, which need `User` but serve no
requests, do not import the web framework (it costs them start-up time per job).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass

from zoo.access import ADMIN, ORG

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
