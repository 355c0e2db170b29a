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

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from workbench.auth import Account, AuthError

from .service import AnnotationService, BadRequest

MAX_BODY_BYTES = 64 * 1024


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


def install(app: FastAPI, service: AnnotationService) -> None:
    """Add the JSON routes and their error handlers to ``app``."""
    router = APIRouter(prefix="/api")

    def who(request: Request) -> Account:
        return service.session(_token(request))

    @router.post("/login")
    async def login(request: Request) -> dict:
        body = await _body(request, {"name", "password"}, {"name", "password"})
        from starlette.concurrency import run_in_threadpool

        token, acct = await run_in_threadpool(service.login, body["name"], body["password"])
        return {"token": token, "annotator_id": acct.annotator_id, "role": acct.role}

    @router.post("/logout")
    def logout(request: Request) -> dict:
        service.logout(_token(request))
        return {"ok": True}

    @router.get("/next")
    def next_pair(request: Request) -> dict:
        acct = who(request)
        return {"item": _item(service.next_item(acct)), "progress": service.progress(acct)}

    @router.post("/label")
    async def label(request: Request) -> dict:
        body = await _body(request, {"assignment_id", "choice", "strength", "rationale"}, {"assignment_id", "choice"})
        from starlette.concurrency import run_in_threadpool

        def work() -> dict:
            acct = who(request)
            out = service.submit(acct, body["assignment_id"], body["choice"], body.get("strength"), body.get("rationale"))
            out["next"] = _item(out["next"])
            return out

        return await run_in_threadpool(work)

    @router.post("/skip")
    async def skip(request: Request) -> dict:
        body = await _body(request, {"assignment_id"}, {"assignment_id"})
        from starlette.concurrency import run_in_threadpool

        def work() -> dict:
            out = service.skip(who(request), body["assignment_id"])
            out["next"] = _item(out["next"])
            return out

        return await run_in_threadpool(work)

    @router.post("/undo")
    async def undo(request: Request) -> dict:
        body = await _body(request, {"client_token"}, {"client_token"})
        from starlette.concurrency import run_in_threadpool

        def work() -> dict:
            out = service.undo(who(request), body["client_token"])
            out["next"] = _item(out["next"])
            return out

        return await run_in_threadpool(work)

    @router.get("/progress")
    def progress(request: Request) -> dict:
        return service.progress(who(request))

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
