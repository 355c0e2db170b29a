"""The running server over HTTP: concurrent annotators, idempotency, validation, roles, crash safety."""

from __future__ import annotations

import random
import re
import threading

import httpx
import polars as pl
import pytest

import workbench
from workbench import assign


def login(url, name, pw):
    r = httpx.post(url + "/api/login", json={"name": name, "password": pw}, timeout=30)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_concurrent_annotators_lose_and_duplicate_nothing(tmp_path, server_factory, make_ui_store):
    store, logins = make_ui_store(tmp_path / "wb.db")
    assign.save_config(store, assign.AssignConfig(strategy="balanced", overlap=2))
    store.close()
    server = server_factory(tmp_path / "wb.db")
    acked: dict[str, tuple[str, str]] = {}  # comparison_id -> (annotator, label as stored)
    undone: set[str] = set()
    rejected = []
    errors = []
    lock = threading.Lock()
    names = [f"ann{i}" for i in range(1, 7)]

    def annotator(name: str, seed: int) -> None:
        rng = random.Random(seed)
        try:
            with httpx.Client(base_url=server.url, timeout=60, headers=login(server.url, name, logins[name])) as c:
                item = c.get("/api/next").json()["item"]
                while item is not None:
                    aid = item["assignment_id"]
                    roll = rng.random()
                    if roll < 0.15:  # a hostile or malformed request: refused, nothing changes
                        bad = rng.choice([
                            {"assignment_id": aid, "choice": "A"},
                            {"assignment_id": aid, "choice": "tie", "strength": "much"},
                            {"assignment_id": aid, "choice": "left", "rationale": "x" * 6000},
                            {"assignment_id": "0" * 32, "choice": "left"},
                            {"assignment_id": aid[:-1] + "'", "choice": "left"},
                            {"assignment_id": aid, "choice": "left", "label": "a"},
                            {"assignment_id": aid, "choice": "left", "strength": 7},
                        ])
                        r = c.post("/api/label", json=bad)
                        with lock:
                            rejected.append(r.status_code)
                        continue
                    choice = rng.choice(["left", "right", "tie", "both_bad"])
                    body = {"assignment_id": aid, "choice": choice, "rationale": f"because {seed}"}
                    r = c.post("/api/label", json=body)
                    assert r.status_code == 200, r.text
                    out = r.json()
                    with lock:
                        assert out["recorded"] and out["comparison_id"] not in acked
                        acked[out["comparison_id"]] = (name, choice, item["left_text"])
                    if rng.random() < 0.2:  # a resend (double click): the same label, recorded once
                        r2 = c.post("/api/label", json=body)
                        assert r2.status_code == 200 and not r2.json()["recorded"]
                        assert r2.json()["comparison_id"] == out["comparison_id"]
                    if rng.random() < 0.1:
                        token = f"undo-{name}-{len(acked)}-{rng.random():.6f}"
                        u = c.post("/api/undo", json={"client_token": token})
                        assert u.status_code == 200, u.text
                        u2 = c.post("/api/undo", json={"client_token": token})  # resent undo: no second retraction
                        assert u2.json()["recorded"] is False
                        with lock:
                            undone.add(u.json()["undone"])
                        item = u.json()["next"]
                        continue
                    item = out["next"]
        except Exception as exc:  # surfaced below
            errors.append(repr(exc))

    threads = [threading.Thread(target=annotator, args=(n, i)) for i, n in enumerate(names)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert not errors, errors
    assert rejected and set(rejected) == {400}
    server.kill()  # SIGKILL: acknowledged labels must already be in the store

    store = workbench.open(tmp_path / "wb.db")
    events = store.events()
    live = store.live()
    labels = events.filter(pl.col("kind") == "label")
    assert labels["comparison_id"].n_unique() == labels.height  # no duplicates
    assert set(labels["comparison_id"]) == set(acked)  # every acknowledged label, nothing from rejected requests
    assert set(live["comparison_id"]) == set(acked) - undone
    retracts = events.filter(pl.col("kind") == "retract")
    assert set(retracts["comparison_id"]) == undone and retracts.height == len(undone)
    for row in live.iter_rows(named=True):
        name, choice, left_text = acked[row["comparison_id"]]
        assert row["annotator_id"] == name and row["source"] == "human"
        left_is_a = row["response_a"] == left_text
        assert row["shown_left"] == ("a" if left_is_a else "b")
        expected = {"left": row["shown_left"], "right": "b" if row["shown_left"] == "a" else "a"}.get(choice, choice)
        assert row["label"] == expected
    # overlap 2: every pair labelled by exactly two different annotators, never twice by one
    per = live.group_by("prompt_id", "response_a_id", "response_b_id").agg(pl.len().alias("n"), pl.col("annotator_id").n_unique().alias("u"))
    assert (per["n"] == per["u"]).all() and per["n"].max() <= 2
    assert live.height == 2 * assign.pool(store).height
    store.close()


def test_roles_and_validation_over_http(shared_server):
    url, logins = shared_server.url, shared_server.logins
    assert httpx.post(url + "/api/login", json={"name": "ann1", "password": "nope"}).status_code == 401
    assert httpx.post(url + "/api/login", json={"name": "ann1"}).status_code == 400
    assert httpx.post(url + "/api/login", content=b"[1, 2]").status_code == 400
    assert httpx.post(url + "/api/login", content=b"{not json").status_code == 400
    assert httpx.get(url + "/api/next").status_code == 401
    assert httpx.get(url + "/api/next", headers={"Authorization": "Bearer forged-token-forged-token"}).status_code == 401
    ann = login(url, "ann1", logins["ann1"])
    adm = login(url, "admin1", logins["admin1"])
    r = httpx.get(url + "/api/admin/progress", headers=ann)
    assert r.status_code == 403 and "admin" in r.json()["error"]
    r = httpx.get(url + "/api/admin/progress", headers=adm)
    assert r.status_code == 200 and {a["annotator_id"] for a in r.json()["annotators"]} >= {"ann1", "admin1"}
    item = httpx.get(url + "/api/next", headers=ann).json()["item"]
    # another annotator cannot label ann1's assignment
    ann2 = login(url, "ann2", logins["ann2"])
    r = httpx.post(url + "/api/label", headers=ann2, json={"assignment_id": item["assignment_id"], "choice": "left"})
    assert r.status_code == 400 and "unknown assignment" in r.json()["error"]
    r = httpx.post(url + "/api/label", headers=ann, content=b'{"assignment_id": "' + b"a" * 70000 + b'"}')
    assert r.status_code == 400
    r = httpx.post(url + "/api/undo", headers=ann, json={"client_token": "<script>"})
    assert r.status_code == 400
    store = workbench.open(shared_server.db)
    assert store.events(annotator_id="ann1").height == 0 and store.events(annotator_id="ann2").height == 0
    store.close()


def test_gradio_endpoints_check_roles_and_record_labels(shared_server):
    gradio_client = pytest.importorskip("gradio_client")
    logins = shared_server.logins
    ann = gradio_client.Client(shared_server.url + "/", auth=("ann3", logins["ann3"]), verbose=False)
    loaded = ann.predict(api_name="/load")
    assignment_id = next(x for x in loaded if isinstance(x, str) and re.fullmatch("[0-9a-f]{32}", x))
    assert len(assignment_id) == 32
    out = ann.predict(assignment_id, "much", "clearer", api_name="/label_left")
    again = ann.predict(assignment_id, "much", "clearer", api_name="/label_left")  # a resend: recorded once
    assert "Already recorded" in again[5] and out[0] != assignment_id
    with pytest.raises(Exception, match="admin"):
        ann.predict(api_name="/admin_refresh")
    with pytest.raises(Exception, match="admin"):
        ann.predict("v1", "", api_name="/admin_create_version")
    with pytest.raises(Exception, match="choice|strength|assignment"):
        ann.predict("x" * 10, "none", "", api_name="/label_tie")
    adm = gradio_client.Client(shared_server.url + "/", auth=("admin1", logins["admin1"]), verbose=False)
    adm.predict("gradio-v1", "first", api_name="/admin_create_version")
    store = workbench.open(shared_server.db)
    live = store.live().filter(pl.col("annotator_id") == "ann3")
    assert live.height == 1 and live["strength"][0] == 2.0
    assert live["rationale"][0] == "clearer" and live["label"][0] == live["shown_left"][0]
    assert "gradio-v1" in store.versions()["name"].to_list()
    assert store.events(annotator_id="ann3").height == 1
    store.close()
