"""A small JSON API beside the Gradio app: the same service, auth and validation, less overhead.

Scripts, load tests and other front ends use it. Authenticate with ``POST /api/login``
(``{"name", "password"}``) and send the returned token as ``Authorization: Bearer <token>``.

=======================  ==========================================================  ========
route                    body                                                        role
=======================  ==========================================================  ========
``POST /api/login``      ``{name, password}`` -> ``{token, annotator_id, role}``      anyone
``POST /api/logout``                                                                 any
``GET  /api/next``       -> ``{item, progress}`` (``item`` null: the queue is empty)  any
``POST /api/label``      ``{assignment_id, choice, strength?, rationale?}``          any
``POST /api/skip``       ``{assignment_id}``                                         any
``POST /api/undo``       ``{client_token}``                                          any
``GET  /api/progress``                                                               any
``GET  /api/admin/progress``  per-annotator progress, agreement                      admin
=======================  ==========================================================  ========

``choice`` is what the annotator saw: ``left``, ``right``, ``tie`` or ``both_bad``. Errors are
``{"error": "..."}`` with 400 (bad input, nothing changed), 401 (not logged in), 403 (role).
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from workbench.auth import Account, AuthError

from .service import AnnotationService, BadRequest

MAX_BODY_BYTES = 64 * 1024
# Worker threads for the store work (``$WORKBENCH_API_THREADS``): the store serializes writers
# anyway, so more threads only add GIL contention and unfair queuing on the write lock.
API_THREADS = int(os.environ.get("WORKBENCH_API_THREADS", "2"))


def _item(item: Any) -> dict | None:
    return item.to_dict() if item is not None else None


async def _body(request: Request, allowed: set[str], required: set[str]) -> dict:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"request body over {MAX_BODY_BYTES // 1024} KiB")
    import json

    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(map(str, unknown)))[:200]}")
    missing = required - set(body)
    if missing:
        raise BadRequest(f"missing fields: {', '.join(sorted(missing))}")
    return body


def _rows(frame: Any) -> list[dict]:
    """Frame rows as JSON-safe dicts (NaN -> null)."""
    import math

    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in frame.to_dicts()]


def _token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    raise AuthError("not logged in: send Authorization: Bearer <token> from POST /api/login")


def _json(obj: Any) -> Response:
    return Response(orjson.dumps(obj), media_type="application/json")


def install(app: FastAPI, service: AnnotationService, *, threads: int = API_THREADS) -> None:
    """Add the JSON routes and their error handlers to ``app``.

    The store work runs in worker threads of the API's own pool of ``threads``: requests beyond
    that wait in first-come-first-served order (a fair queue keeps the latency tail short).
    """
    router = APIRouter(prefix="/api")
    limiter: list[anyio.CapacityLimiter] = []

    async def run(fn: Any, *args: Any) -> Any:
        if not limiter:
            limiter.append(anyio.CapacityLimiter(threads))
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter[0])

    def who(request: Request) -> Account:
        return service.session(_token(request))

    @router.post("/login")
    async def login(request: Request) -> Response:
        body = await _body(request, {"name", "password"}, {"name", "password"})
        token, acct = await run(service.login, body["name"], body["password"])
        return _json({"token": token, "annotator_id": acct.annotator_id, "role": acct.role})

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        await run(service.logout, _token(request))
        return _json({"ok": True})

    @router.get("/next")
    async def next_pair(request: Request) -> Response:
        def work() -> dict:
            acct = who(request)
            return {"item": _item(service.next_item(acct)), "progress": service.progress(acct)}

        return _json(await run(work))

    @router.post("/label")
    async def label(request: Request) -> Response:
        body = await _body(request, {"assignment_id", "choice", "strength", "rationale"}, {"assignment_id", "choice"})
        def work() -> dict:
            acct = who(request)
            out = service.submit(acct, body["assignment_id"], body["choice"], body.get("strength"), body.get("rationale"))
            out["next"] = _item(out["next"])
            return out

        return _json(await run(work))

    @router.post("/skip")
    async def skip(request: Request) -> Response:
        body = await _body(request, {"assignment_id"}, {"assignment_id"})
        def work() -> dict:
            out = service.skip(who(request), body["assignment_id"])
            out["next"] = _item(out["next"])
            return out

        return _json(await run(work))

    @router.post("/undo")
    async def undo(request: Request) -> Response:
        body = await _body(request, {"client_token"}, {"client_token"})
        def work() -> dict:
            out = service.undo(who(request), body["client_token"])
            out["next"] = _item(out["next"])
            return out

        return _json(await run(work))

    @router.get("/progress")
    async def progress(request: Request) -> Response:
        return _json(await run(lambda: service.progress(who(request))))

    @router.get("/admin/progress")
    def admin_progress(request: Request) -> dict:
        view = service.admin(who(request))
        return {
            "annotators": _rows(view.progress_by_annotator()),
            "categories": _rows(view.progress_by_category()),
            "agreement": _rows(view.agreement()),
        }

    app.include_router(router)

    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(AuthError)
    async def auth_error(_request: Request, exc: AuthError) -> JSONResponse:
        status = 403 if "role" in str(exc) else 401
        return JSONResponse({"error": str(exc)}, status_code=status)
