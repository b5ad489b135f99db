"""List responses share one shape: {"data": [...], "count": total}."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    count: int


Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Offset = Annotated[int, Query(ge=0, description="Items to skip.")]


def page(items: list[T], limit: int, offset: int) -> dict[str, object]:
    return {"data": items[offset: offset + limit], "count": len(items)}
