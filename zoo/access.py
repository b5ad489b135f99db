"""Who may read and write which encoder repositories.

Repositories are `owner/name`, as on the Hugging Face Hub. Reading a private repository
takes its owner or an admin; to everyone else it does not exist (the same 404 as an unknown
name, so private names do not leak). Writing takes the owner or an admin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import ColumnElement, false, or_, true

ORG = "taskalign"  # the namespace of the seed zoo, and an admin's default namespace
ADMIN = "admin"  # the name admin tokens act under; no user may take it
OWNER_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
OWNER = re.compile(OWNER_PATTERN)


class Reader(Protocol):
    """Anything with a name (None: anonymous) and an admin flag, e.g. service.auth.User."""

    @property
    def name(self) -> str | None: ...

    @property
    def admin(self) -> bool: ...


@dataclass(frozen=True)
class Principal:
    name: str | None = None
    admin: bool = False


ANONYMOUS = Principal()
SYSTEM = Principal(name=None, admin=True)  # seed registration, workers acting for owners


def repo_id(owner: str, name: str) -> str:
    return f"{owner}/{name}"


def split_repo_id(repo: str) -> tuple[str, str]:
    owner, _, name = repo.partition("/")
    return owner, name


def may_read(reader: Reader, owner: str, private: bool) -> bool:
    return not private or reader.admin or (reader.name is not None and reader.name == owner)


def may_write(reader: Reader, owner: str) -> bool:
    return reader.admin or (reader.name is not None and reader.name == owner)


def default_owner(reader: Reader) -> str:
    """Where an upload goes when it names no owner: the user's own namespace; an admin's
    goes to the organisation's."""
    return reader.name if reader.name and not reader.admin else ORG


def visible(reader: Reader, owner_column: Any, private_column: Any) -> ColumnElement[bool]:
    """The SQL condition matching rows this reader may see."""
    if reader.admin:
        return true()
    if reader.name is None:
        return private_column == false()
    return or_(private_column == false(), owner_column == reader.name)
