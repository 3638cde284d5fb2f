"""The API's own description: the OpenAPI document, Swagger UI and ReDoc (none in the schema).

A key is needed unless ``api.docs_public``.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response

from reporting.routes.deps import KeyHeader, caller, core

OPENAPI_PATH = "/openapi.json"


def docs_access(request: Request, key: KeyHeader) -> None:
    if not core(request).settings.api.docs_public:
        caller(request, key)


router = APIRouter(include_in_schema=False, dependencies=[Depends(docs_access)])


@router.get(OPENAPI_PATH)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def docs(request: Request) -> Response:
    return get_swagger_ui_html(openapi_url=OPENAPI_PATH, title=f"{request.app.title} - docs")


@router.get("/redoc")
async def redoc(request: Request) -> Response:
    return get_redoc_html(openapi_url=OPENAPI_PATH, title=f"{request.app.title} - ReDoc")
