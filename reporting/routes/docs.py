"""The API's own description: the OpenAPI document, Swagger UI and ReDoc (none in the schema).

A key is needed unless ``api.docs_public``: an ``X-API-Key`` header, or a console session (its
cookie stands for its key on these pages, ``reporting.console.middleware``). Swagger UI's and
ReDoc's scripts and styles are served from this API (``/docs/assets/``, the files the
``fastapi-offline`` wheel carries), each page's start-up script too: nothing comes from a CDN,
and no script is inline.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from reporting.routes.deps import KeyHeader, caller, core

OPENAPI_PATH = "/openapi.json"
ASSETS_PATH = "/docs/assets"
_VENDORED = Path(fastapi_offline.__file__).parent / "static"
_OURS = Path(__file__).parent / "docs_assets"
#: The files /docs/assets/ serves: Swagger UI and ReDoc (MIT and Apache-2.0, as the wheel ships
#: them) and the start-up script of Swagger UI.
ASSETS = {
    "swagger-ui-bundle.js": _VENDORED / "swagger-ui-bundle.js",
    "swagger-ui.css": _VENDORED / "swagger-ui.css",
    "redoc.standalone.js": _VENDORED / "redoc.standalone.js",
    "favicon.png": _VENDORED / "favicon.png",
    "swagger-init.js": _OURS / "swagger-init.js",
}


def docs_access(request: Request, key: KeyHeader) -> None:
    if not core(request).settings.api.docs_public:
        caller(request, key)


router = APIRouter(include_in_schema=False, dependencies=[Depends(docs_access)])
assets = APIRouter(include_in_schema=False)


@router.get(OPENAPI_PATH)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


def _page(title: str, head: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><link rel='icon' href='{ASSETS_PATH}/favicon.png'>{head}</head>"
        f"<body>{body}</body></html>"
    )


@router.get("/docs")
async def docs(request: Request) -> Response:
    return _page(
        f"{request.app.title} - docs",
        f"<link rel='stylesheet' href='{ASSETS_PATH}/swagger-ui.css'>",
        f"<div id='swagger-ui' data-openapi='{OPENAPI_PATH}'></div>"
        f"<script src='{ASSETS_PATH}/swagger-ui-bundle.js'></script>"
        f"<script src='{ASSETS_PATH}/swagger-init.js'></script>",
    )


@router.get("/redoc")
async def redoc(request: Request) -> Response:
    return _page(
        f"{request.app.title} - ReDoc",
        "",
        f"<redoc spec-url='{OPENAPI_PATH}'></redoc><script src='{ASSETS_PATH}/redoc.standalone.js'></script>",
    )


@assets.get(ASSETS_PATH + "/{name}")
async def asset(name: str) -> FileResponse:
    path = ASSETS.get(name)
    if path is None:
        raise HTTPException(404, f"no docs asset {name!r}")
    return FileResponse(path)
