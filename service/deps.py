"""FastAPI dependency aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from rules import Engine

from .config import Settings


def get_engine(request: Request) -> Engine:
    return request.app.state.rules_engine


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
