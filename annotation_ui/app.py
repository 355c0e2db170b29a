"""The Gradio app: an annotate view for everyone, an admin view for admins, the JSON API beside them.

``build_app(store)`` returns a FastAPI application with the Gradio UI mounted at ``/`` (login
required, Gradio's own login page) and the JSON API under ``/api``. Each Gradio event looks the
caller up from the login (``request.username``) and reads the role from the store, so hiding the
admin tab is cosmetic: the admin handlers refuse annotators themselves.
"""

from __future__ import annotations

import gc

import functools
import html
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import polars as pl
from fastapi import FastAPI

from workbench import assign
from workbench.auth import Account, AuthError

from . import api
from .service import AnnotationService, BadRequest, Item

CHOICE_LABELS = {"left": "A better", "right": "B better", "tie": "Tie", "both_bad": "Both bad"}
OUTCOME_TO_CHOICE = {v: k for k, v in CHOICE_LABELS.items()}

KEYBOARD_JS = """
<script>
(() => {
  if (window.__wbKeys) return;
  window.__wbKeys = true;
  const keys = {'1': 'wb-btn-left', '2': 'wb-btn-right', '3': 'wb-btn-tie', '4': 'wb-btn-bad',
                's': 'wb-btn-skip', 'u': 'wb-btn-undo'};
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    const tag = ((t && t.tagName) || '').toLowerCase();
    if (tag === 'input' || tag === 'textarea' || tag === 'select' || (t && t.isContentEditable)) {
      if (e.key === 'Escape') t.blur();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const id = keys[e.key];
    if (!id) return;
    const el = document.getElementById(id);
    const button = el && (el.tagName === 'BUTTON' ? el : el.querySelector('button'));
    if (button && !button.disabled && button.offsetParent !== null) {
      e.preventDefault();
      button.click();
    }
  });
})();
</script>
"""

CSS = """
.wb-panel { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 10px 14px;
            max-height: 60vh; overflow: auto; background: var(--background-fill-secondary); }
.wb-panel pre { white-space: pre-wrap; word-break: break-word; }
.wb-side { font-weight: 600; margin-bottom: 6px; color: var(--body-text-color-subdued); }
.wb-turn { margin-bottom: 8px; } .wb-role { font-weight: 600; font-size: 0.85em; text-transform: uppercase; }
.wb-image { color: var(--body-text-color-subdued); font-style: italic; }
.wb-bar { height: 10px; background: var(--neutral-200); border-radius: 5px; overflow: hidden; }
.wb-bar > div { height: 10px; background: var(--color-accent); }
.wb-empty { font-size: 1.2em; padding: 30px; text-align: center; }
"""


def _panel(side: str, body_html: str) -> str:
    return f'<div class="wb-side">{side}</div><div class="wb-panel">{body_html}</div>'


def _progress_html(p: dict) -> str:
    done, left = int(p["labelled_today"]), int(p["left_in_queue"])
    total = int(p["labelled_total"])
    frac = total / (total + left) if (total + left) else 1.0
    return (
        f'<div id="wb-progress-text">Labelled today: <b>{done}</b> · in all: <b>{total}</b> · '
        f'left in my queue: <b>{left}</b></div><div class="wb-bar"><div style="width:{100 * frac:.1f}%"></div></div>'
    )


def build_blocks(service: AnnotationService) -> gr.Blocks:
    """The Gradio UI on one :class:`AnnotationService`."""

    def who(request: gr.Request) -> Account:
        name = getattr(request, "username", None) if request is not None else None
        return service.account(name)

    def view(item: Item | None, acct: Account, message: str) -> tuple:
        prog = _progress_html(service.progress(acct))
        if item is None:
            empty = '<div class="wb-empty" id="wb-empty">Your queue is empty: there is nothing left for you to label. Thank you!</div>'
            return ("", prog, empty, "", "", message, "", "none", None)
        return (
            item.assignment_id, prog, f'<div class="wb-panel" id="wb-prompt-body">{item.prompt_html}</div>',
            _panel("Response A (left)", item.left_html), _panel("Response B (right)", item.right_html),
            message, "", "none", None,
        )

    def guarded(fn: Callable[..., tuple]) -> Callable[..., tuple]:
        @functools.wraps(fn)
        def run(*args: Any) -> tuple:
            try:
                return fn(*args)
            except (BadRequest, assign.AssignmentError) as exc:
                raise gr.Error(str(exc)) from exc
            except AuthError as exc:
                raise gr.Error(f"{exc}") from exc

        return run

    def on_load(request: gr.Request) -> tuple:
        acct = who(request)
        item = service.next_item(acct)
        header = (f"### Preference workbench · signed in as **{html.escape(acct.name)}** ({acct.role}) · "
                  "[log out](/logout)")
        return (header, service.guidelines_html(acct), gr.update(visible=acct.is_admin)) + view(item, acct, "")

    def submit_with(choice: str) -> Callable[..., tuple]:
        def submit(assignment_id: str, strength: str, rationale: str, request: gr.Request) -> tuple:
            acct = who(request)
            if not assignment_id:
                return view(service.next_item(acct), acct, "Nothing to label.")
            out = service.submit(acct, assignment_id, choice, strength, rationale)
            msg = f"Recorded: {CHOICE_LABELS[choice]}." if out["recorded"] else "Already recorded (resubmission ignored)."
            return view(out["next"], acct, msg)

        submit.__name__ = f"label_{choice}"
        return guarded(submit)

    @guarded
    def submit_outcome(assignment_id: str, outcome: str | None, strength: str, rationale: str, request: gr.Request) -> tuple:
        if outcome not in OUTCOME_TO_CHOICE:
            raise BadRequest("choose an outcome (A better, B better, Tie or Both bad) before pressing Enter")
        return submit_with(OUTCOME_TO_CHOICE[outcome])(assignment_id, strength, rationale, request)

    @guarded
    def skip(assignment_id: str, request: gr.Request) -> tuple:
        acct = who(request)
        if not assignment_id:
            return view(service.next_item(acct), acct, "Nothing to skip.")
        out = service.skip(acct, assignment_id)
        return view(out["next"], acct, "Skipped." if out["skipped"] else "")

    @guarded
    def undo(assignment_id: str, request: gr.Request) -> tuple:
        acct = who(request)
        token = f"g:{assignment_id or 'none'}:{secrets.token_hex(4) if not assignment_id else 'x'}"
        out = service.undo(acct, token)
        msg = "Undone: your last label was withdrawn; label that pair again." if out["undone"] else "Nothing to undo."
        return view(out["next"], acct, msg)

    with gr.Blocks(title="Preference workbench") as blocks:
        header = gr.Markdown(elem_id="wb-header")
        with gr.Tabs():
            with gr.Tab("Annotate", id="annotate", elem_id="wb-tab-annotate"):
                progress = gr.HTML(elem_id="wb-progress")
                with gr.Accordion("Guidelines", open=False, elem_id="wb-guidelines-box"):
                    guidelines = gr.HTML(elem_id="wb-guidelines")
                assignment = gr.Textbox(visible="hidden", elem_id="wb-assignment", label="assignment")
                prompt = gr.HTML(elem_id="wb-prompt", label="Prompt")
                with gr.Row(equal_height=False):
                    left = gr.HTML(elem_id="wb-left")
                    right = gr.HTML(elem_id="wb-right")
                with gr.Row():
                    b_left = gr.Button("A better  [1]", elem_id="wb-btn-left", variant="primary")
                    b_right = gr.Button("B better  [2]", elem_id="wb-btn-right", variant="primary")
                    b_tie = gr.Button("Tie  [3]", elem_id="wb-btn-tie")
                    b_bad = gr.Button("Both bad  [4]", elem_id="wb-btn-bad")
                with gr.Row():
                    strength = gr.Radio(["none", "slightly", "much"], value="none", label="How much better (optional)", elem_id="wb-strength")
                    outcome = gr.Radio(list(OUTCOME_TO_CHOICE), label="Outcome (for Enter in the rationale box)", elem_id="wb-outcome")
                rationale = gr.Textbox(label="Rationale (optional; Enter submits it with the outcome above, Esc leaves the box)",
                                       elem_id="wb-rationale", max_length=5000, lines=1)
                with gr.Row():
                    b_skip = gr.Button("Skip  [s]", elem_id="wb-btn-skip", size="sm")
                    b_undo = gr.Button("Undo last  [u]", elem_id="wb-btn-undo", size="sm")
                status = gr.Markdown(elem_id="wb-status")
            with gr.Tab("Admin", id="admin", visible=False, elem_id="wb-tab-admin") as admin_tab:
                admin_components = _admin_view(service, who)

        outputs = [assignment, progress, prompt, left, right, status, rationale, strength, outcome]
        blocks.load(on_load, None, [header, guidelines, admin_tab] + outputs, api_name="load")
        for button, choice in ((b_left, "left"), (b_right, "right"), (b_tie, "tie"), (b_bad, "both_bad")):
            button.click(submit_with(choice), [assignment, strength, rationale], outputs, api_name=f"label_{choice}", trigger_mode="once")
        rationale.submit(submit_outcome, [assignment, outcome, strength, rationale], outputs, api_name="label_outcome", trigger_mode="once")
        b_skip.click(skip, [assignment], outputs, api_name="skip", trigger_mode="once")
        b_undo.click(undo, [assignment], outputs, api_name="undo", trigger_mode="once")
        del admin_components
    return blocks


def _df(frame: pl.DataFrame) -> Any:
    return frame.to_pandas() if frame.height or frame.width else None


def _admin_view(service: AnnotationService, who: Callable[[gr.Request], Account]) -> dict:
    export_dir = Path(tempfile.mkdtemp(prefix="wb-export-"))

    def admin_of(request: gr.Request) -> Any:
        try:
            return service.admin(who(request))
        except AuthError as exc:
            raise gr.Error(str(exc)) from exc

    def call(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any) -> Any:
            try:
                return fn(*args)
            except (BadRequest, ValueError, LookupError) as exc:
                raise gr.Error(str(exc)) from exc

        return run

    gr.Markdown("## Progress, agreement and quality")
    refresh = gr.Button("Refresh", elem_id="wb-admin-refresh")
    per_annotator = gr.Dataframe(label="Per annotator (gold accuracy, left-side rate, self-consistency)", elem_id="wb-admin-annotators", interactive=False)
    with gr.Row():
        per_category = gr.Dataframe(label="Per prompt category", interactive=False)
        agreement = gr.Dataframe(label="Agreement on overlapping pairs", interactive=False)
    plot = gr.Plot(label="Labels and left-side rate per annotator")

    gr.Markdown("## Guidelines and assignment")
    with gr.Row():
        guidelines = gr.Textbox(label="Guidelines (Markdown)", lines=8, max_length=100_000)
        with gr.Column():
            cfg = assign.load_config(service.store)
            strategy = gr.Dropdown(list(assign.STRATEGIES), value=cfg.strategy, label="Strategy")
            overlap = gr.Number(value=cfg.overlap, precision=0, label="Overlap k (annotators per pair)")
            gold_rate = gr.Slider(0, 1, value=cfg.gold_rate, step=0.01, label="Gold rate")
            repeat_rate = gr.Slider(0, 1, value=cfg.repeat_rate, step=0.01, label="Repeat rate (swapped sides)")
            lease = gr.Number(value=cfg.lease_seconds, label="Lease (seconds)")
    save = gr.Button("Save guidelines and assignment settings")
    saved = gr.Markdown()

    gr.Markdown("## Versions, leaderboard, export")
    with gr.Row():
        version_name = gr.Textbox(label="New version name", max_length=128)
        version_desc = gr.Textbox(label="Description", max_length=2000)
        create = gr.Button("Create version")
    versions = gr.Dataframe(label="Versions", interactive=False)
    with gr.Row():
        version_pick = gr.Dropdown([], label="Version", allow_custom_value=False)
        fit = gr.Button("Fit Bradley-Terry leaderboard")
        fmt = gr.Dropdown(["trl", "trl-conversational", "parquet", "jsonl"], value="trl", label="Export format")
        export = gr.Button("Export")
    leaderboard = gr.Dataframe(label="Leaderboard (95% CI)", interactive=False)
    leaderboard_plot = gr.Plot(label="Leaderboard")
    exported = gr.File(label="Exported file")

    gr.Markdown("## Diagnostics report")
    diagnose = gr.Button("Diagnose the chosen version (label noise and coverage)", elem_id="wb-admin-diagnose")
    findings = gr.Markdown(elem_id="wb-admin-findings")
    report = gr.HTML(elem_id="wb-admin-report")

    def _version_choices(view: Any) -> Any:
        names = view.versions()["name"].to_list()
        return gr.update(choices=names, value=names[-1] if names else None)

    @call
    def do_refresh(request: gr.Request) -> tuple:
        view = admin_of(request)
        import matplotlib.pyplot as plt

        fig = view.progress_figure()
        plt.close(fig)
        return (_df(view.progress_by_annotator()), _df(view.progress_by_category()), _df(view.agreement()), fig,
                service.guidelines(), _df(view.versions()), _version_choices(view))

    @call
    def do_save(text: str, strategy_: str, overlap_: float, gold_: float, repeat_: float, lease_: float, request: gr.Request) -> str:
        acct = who(request)
        service.set_guidelines(acct, text or "")
        try:
            k = int(overlap_)
        except (TypeError, ValueError) as exc:
            raise BadRequest("overlap must be a whole number") from exc
        c = service.set_assign_config(acct, strategy=strategy_, overlap=k, gold_rate=float(gold_), repeat_rate=float(repeat_), lease_seconds=float(lease_))
        return f"Saved. Assignment: {c.strategy}, overlap {c.overlap}, gold {c.gold_rate:.2f}, repeats {c.repeat_rate:.2f}, lease {c.lease_seconds:.0f} s."

    @call
    def do_create(name: str, description: str, request: gr.Request) -> tuple:
        view = admin_of(request)
        v = view.create_version(name, description or None)
        gr.Info(f"version {v.name} created: {v.n_comparisons} comparisons, hash {v.hash[:12]}")
        return _df(view.versions()), _version_choices(view)

    @call
    def do_fit(version: str, request: gr.Request) -> tuple:
        view = admin_of(request)
        import matplotlib.pyplot as plt

        scores = view.leaderboard(version)
        fig = view.leaderboard_figure(scores)
        plt.close(fig)
        return _df(scores), fig

    @call
    def do_export(version: str, fmt_: str, request: gr.Request) -> str:
        view = admin_of(request)
        return str(view.export(version, fmt_, export_dir))

    @call
    def do_diagnose(version: str, request: gr.Request) -> tuple:
        view = admin_of(request)
        rep = view.diagnostics(version)
        lines = [f"**{html.escape(v_)}**" for v_ in (rep.summary().splitlines()[:1])]
        lines += [f"- [{html.escape(str(r['area']))}] {html.escape(str(r['finding']))}" for r in rep.findings.head(8).iter_rows(named=True)]
        # The report is self-contained (plots embedded) and escapes all data text; the sandboxed
        # frame runs no script and loads nothing from elsewhere.
        page = Path(rep.html_path).read_text(encoding="utf-8")
        frame = (f'<iframe title="diagnostics report" sandbox="" referrerpolicy="no-referrer" '
                 f'style="width:100%;height:900px;border:1px solid #ddd" srcdoc="{html.escape(page, quote=True)}"></iframe>')
        return "\n".join(lines), frame

    admin_outputs = [per_annotator, per_category, agreement, plot, guidelines, versions, version_pick]
    refresh.click(do_refresh, None, admin_outputs, api_name="admin_refresh")
    save.click(do_save, [guidelines, strategy, overlap, gold_rate, repeat_rate, lease], saved, api_name="admin_save")
    create.click(do_create, [version_name, version_desc], [versions, version_pick], api_name="admin_create_version")
    fit.click(do_fit, [version_pick], [leaderboard, leaderboard_plot], api_name="admin_fit")
    export.click(do_export, [version_pick, fmt], exported, api_name="admin_export")
    diagnose.click(do_diagnose, [version_pick], [findings, report], api_name="admin_diagnose")
    return {"export_dir": export_dir}


class SecurityHeaders:
    """Pure ASGI middleware adding no-sniff / no-framing / no-referrer headers to every response, and
    ``Server-Timing: app;dur=<ms>`` (time in the server from request to response headers).

    (Starlette's ``@app.middleware("http")`` wraps each response in a streaming body and a task
    group, which cost about as much CPU as the JSON API's own work.)
    """

    HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"))

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in self.HEADERS if k not in present]
                headers.append((b"server-timing", f"app;dur={1000 * (time.perf_counter() - started):.1f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_app(store: Any, *, scorer: Callable[[pl.DataFrame], Any] | None = None, concurrency: int = 8) -> FastAPI:
    """The whole server: JSON API under ``/api``, the Gradio UI (login required) at ``/``."""
    service = AnnotationService(store, scorer=scorer)
    app = FastAPI(title="Preference workbench annotation", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    app.add_middleware(SecurityHeaders)

    api.install(app, service)
    blocks = build_blocks(service)
    blocks.queue(default_concurrency_limit=concurrency)
    return gr.mount_gradio_app(
        app, blocks, path="/", auth=service.check_password,
        auth_message="Preference workbench: sign in with the name and password from `workbench annotators add`.",
        head=KEYBOARD_JS, css=CSS, show_error=True, footer_links=[],
    )


def serve(store: Any, host: str = "127.0.0.1", port: int = 7860, *, scorer: Any = None, log_level: str = "warning") -> None:
    """Run the server until interrupted (uvicorn, one process)."""
    import uvicorn

    app = build_app(store, scorer=scorer)
    # The app's import-time heap (gradio, polars, matplotlib...) is large and lives forever: keep
    # the cyclic garbage collector from rescanning it in full collections during requests.
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5, timeout_keep_alive=30)
