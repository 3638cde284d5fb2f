"""The API's routes, one router per concern, each a module: ``docs`` (the OpenAPI document and its
pages), ``ops`` (metrics, health, readiness), ``roas`` and ``ivt`` (reports), ``budget`` (the ad server's
reads). What they share (the running state, the caller's key) is in ``deps``."""

from __future__ import annotations

from fastapi import APIRouter

from reporting.routes import budget, docs, ivt, ops, roas

# In the order the app mounts them: the OpenAPI document lists its paths in this order.
ROUTERS: tuple[APIRouter, ...] = (
    docs.router,
    docs.assets,
    ops.router,
    roas.router,
    ivt.router,
    budget.router,
)
