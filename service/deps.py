"""FastAPI dependency aliases.

The getters are `async` because they only read app state: FastAPI runs a sync dependency
in its thread pool, a thread hop per dependency per request for nothing.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from rules import Engine

from .config import Settings
from .zoo_state import ZooState


async def get_engine(request: Request) -> Engine:
    return request.app.state.rules_engine


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_zoo(request: Request) -> ZooState:
    return request.app.state.zoo


EngineDep = Annotated[Engine, Depends(get_engine)]
ZooDep = Annotated[ZooState, Depends(get_zoo)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
