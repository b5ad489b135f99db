"""List responses share one shape: {"data": [...], "count": total}."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from fastapi import Path, Query
from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    count: int


Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
# Row ids and offsets fit the databases' integer columns (PostgreSQL INTEGER is 32-bit):
# a larger number is a 422 with the bound, never an overflow inside the database driver.
MAX_ROW_ID = 2**31 - 1
Offset = Annotated[int, Query(ge=0, le=MAX_ROW_ID, description="Items to skip.")]
RowId = Annotated[int, Path(ge=0, le=MAX_ROW_ID, description="Numeric id.")]
After = Annotated[int, Query(ge=0, le=MAX_ROW_ID, description="Last event id seen.")]


def fetch_page(session: Session, query: Select[Any], order: Any, limit: int,
               offset: int) -> tuple[list[Any], int]:
    """One page of a query's rows in the given order, and how many rows there are in all."""
    count = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(order).limit(limit).offset(offset)).all()
    return list(rows), int(count or 0)


def page(items: list[T], limit: int, offset: int) -> dict[str, object]:
    return {"data": items[offset: offset + limit], "count": len(items)}
