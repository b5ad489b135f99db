"""Swagger UI and ReDoc from files the app serves, so /docs works on an offline network."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)
VENDOR = "/static/vendor"


@router.get("/docs", response_class=HTMLResponse)
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url, title="TaskAlign API",
        swagger_js_url=f"{VENDOR}/swagger-ui-5.35.0/swagger-ui-bundle.js",
        swagger_css_url=f"{VENDOR}/swagger-ui-5.35.0/swagger-ui.css",
        swagger_favicon_url=f"{VENDOR}/swagger-ui-5.35.0/favicon-32x32.png")


@router.get("/redoc", response_class=HTMLResponse)
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url=request.app.openapi_url, title="TaskAlign API",
                          redoc_js_url=f"{VENDOR}/redoc-2.5.0/redoc.standalone.js",
                          redoc_favicon_url=f"{VENDOR}/swagger-ui-5.35.0/favicon-32x32.png",
                          with_google_fonts=False)
