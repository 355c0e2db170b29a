"""Pair assignment: every strategy, overlap, gold, repeats, leases, undo, reconcile."""

from __future__ import annotations

import random
import threading

import numpy as np
import polars as pl
import pytest

import workbench
from workbench import assign
from workbench.diagnostics import noise


def make_store(tmp_path, n_prompts=6, n_responses=3, annotators=("ann1", "ann2", "ann3")):
    store = workbench.open(tmp_path / "wb.db")
    for i in range(n_prompts):
        pid = store.add_prompt(f"prompt {i}?", category="even" if i % 2 == 0 else "odd")
        for j in range(n_responses):
            store.add_response(pid, f"answer {j} to {i}", model=f"m{j}")
    for a in annotators:
        store.add_annotator(a)
    return store


@pytest.fixture
def store(tmp_path):
    s = make_store(tmp_path)
    yield s
    s.close()


def label_all(store, annotator, choice="left", **kw):
    n = 0
    while (a := assign.assign_next_pair(store, annotator, **kw)) is not None:
        assign.record_label(store, a.assignment_id, annotator, choice)
        n += 1
        assert n < 1000
    return n


def test_build_pairs_is_idempotent_and_checks_input(store):
    assert assign.build_pairs(store) == 6 * 3
    assert assign.build_pairs(store) == 0
    p = assign.pool(store)
    assert p.height == 18 and p["pair_id"].n_unique() == 18
    with pytest.raises(ValueError, match="not a response to prompt"):
        r = store.responses()
        other = r.filter(pl.col("prompt_id") != r["prompt_id"][0])["response_id"][0]
        assign.add_pairs(store, pl.DataFrame({"prompt_id": [r["prompt_id"][0]], "response_a_id": [r["response_id"][0]], "response_b_id": [other]}))
    with pytest.raises(ValueError, match="two different"):
        assign.add_pairs(store, pl.DataFrame({"prompt_id": [r["prompt_id"][0]], "response_a_id": [r["response_id"][0]], "response_b_id": [r["response_id"][0]]}))
    assert assign.pool(store).height == 18


@pytest.mark.parametrize("strategy", ["random", "balanced", "overlap"])
def test_single_overlap_strategies_cover_every_pair_once(store, strategy):
    assign.build_pairs(store)
    rng = random.Random(1)
    done = {"ann1": 0, "ann2": 0}
    seen = []
    while True:
        progressed = False
        for ann in done:
            a = assign.assign_next_pair(store, ann, strategy, rng=rng)
            if a is None:
                continue
            seen.append(a.pair_id)
            assign.record_label(store, a.assignment_id, ann, "left")
            done[ann] += 1
            progressed = True
        if not progressed:
            break
    assert sorted(seen) == sorted(assign.pool(store)["pair_id"].to_list())  # each pair exactly once
    assert min(done.values()) >= 1
    assert store.stats()["live_comparisons"] == 18


def test_balanced_serves_least_labelled_first(store):
    assign.build_pairs(store)
    pool = assign.pool(store)
    # give every pair but three a prior label in the store: those three must come first
    prior = pool.head(15)
    for row in prior.iter_rows(named=True):
        store.add_label(row["prompt_id"], row["response_a_id"], row["response_b_id"], "a", "ann3", source="import")
    # rebuild the pool on a new store so the prior labels count
    store2 = workbench.open(store.url)
    assign.ensure_tables(store2)
    with store2._write() as conn:
        conn.execute(assign.pairs.delete())
    assign.add_pairs(store2, pool.select("prompt_id", "response_a_id", "response_b_id"))
    unlabelled = set(pool.tail(3)["pair_id"].to_list())
    got = []
    for _ in range(3):
        a = assign.assign_next_pair(store2, "ann1", "balanced", rng=0)
        got.append(a.pair_id)
        assign.record_label(store2, a.assignment_id, "ann1", "tie")
    assert set(got) == unlabelled


def test_random_strategy_is_not_the_fixed_order(tmp_path):
    firsts = set()
    for seed in range(6):
        s = make_store(tmp_path / str(seed))
        assign.build_pairs(s)
        firsts.add(assign.assign_next_pair(s, "ann1", "random", rng=seed).pair_id)
        s.close()
    assert len(firsts) > 1


def test_overlap_k_gives_each_pair_to_k_different_annotators(store):
    assign.build_pairs(store)
    for ann in ("ann1", "ann2", "ann3"):
        store.add_annotator(ann)
    counts = {ann: label_all(store, ann, strategy="overlap", overlap=2, rng=3) for ann in ("ann1", "ann2", "ann3")}
    f = assign.assignments_frame(store).filter(pl.col("status") == "labelled")
    per_pair = f.group_by("pair_id").agg(pl.len().alias("n"), pl.col("annotator_id").n_unique().alias("u"))
    assert per_pair["n"].to_list() == per_pair["u"].to_list()  # never twice to the same annotator
    assert per_pair.height == 18 and per_pair["n"].max() == 2 and per_pair["n"].min() == 2
    assert sum(counts.values()) == 36 and counts["ann1"] == 18  # the first annotator sees every pair once


def test_overlap_strategy_completes_started_pairs_first(store):
    assign.build_pairs(store)
    a1 = assign.assign_next_pair(store, "ann1", "overlap", overlap=3, rng=0)
    assign.record_label(store, a1.assignment_id, "ann1", "left")
    a2 = assign.assign_next_pair(store, "ann2", "overlap", overlap=3, rng=0)
    assert a2.pair_id == a1.pair_id


def test_leases_keep_single_overlap_pairs_apart_and_expire(store):
    assign.build_pairs(store, prompt_ids=[store.prompts()["prompt_id"][0]])  # 3 pairs
    t0 = 1_000_000.0
    held = [assign.assign_next_pair(store, ann, "balanced", lease_seconds=60, now=t0) for ann in ("ann1", "ann2", "ann3")]
    assert len({a.pair_id for a in held}) == 3
    store.add_annotator("ann4")
    assert assign.assign_next_pair(store, "ann4", "balanced", lease_seconds=60, now=t0 + 1) is None  # all leased
    # the same annotator asking again gets the same live lease (a page reload)
    again = assign.assign_next_pair(store, "ann1", "balanced", lease_seconds=60, now=t0 + 2)
    assert again.assignment_id == held[0].assignment_id
    # after expiry the pairs return to the pool
    later = assign.assign_next_pair(store, "ann4", "balanced", lease_seconds=60, now=t0 + 120)
    assert later is not None and later.pair_id in {a.pair_id for a in held}
    st = assign.assignments_frame(store)
    assert (st["status"] == "expired").sum() == 3


def test_concurrent_leases_never_share_a_single_overlap_pair(tmp_path):
    store = make_store(tmp_path, n_prompts=4, n_responses=3, annotators=[f"t{i}" for i in range(8)])
    assign.build_pairs(store)
    got: list = []
    lock = threading.Lock()

    def worker(ann):
        a = assign.assign_next_pair(store, ann, "random", rng=random.Random(ann))
        with lock:
            got.append(a.pair_id)

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(got) == 8 and len(set(got)) == 8
    store.close()


def test_gold_pairs_are_mixed_in_and_scored(store):
    assign.build_pairs(store)
    pool = assign.pool(store)
    gold_ids = pool["pair_id"].head(4).to_list()
    for pid in gold_ids:
        assign.set_gold(store, pid, "a")
    # ann1 always picks response a, ann2 always response b
    for ann, wants in (("ann1", "a"), ("ann2", "b")):
        while (a := assign.assign_next_pair(store, ann, "balanced", overlap=2, gold_rate=0.5, rng=5)) is not None:
            choice = "left" if a.shown_left == wants else "right"
            assign.record_label(store, a.assignment_id, ann, choice)
    f = assign.assignments_frame(store)
    assert set(f.filter(pl.col("kind") == "gold")["pair_id"].to_list()) == set(gold_ids)
    assert f.filter(pl.col("kind") == "pair")["pair_id"].is_in(gold_ids).sum() == 0  # gold never served as a regular pair
    ref = assign.gold_reference(store)
    assert sorted(ref["pair_id"].to_list()) == sorted(gold_ids) and set(ref["label"].to_list()) == {"a"}
    g = noise.gold_accuracy(store.live(), reference=ref)
    assert dict(zip(g["annotator_id"], g["gold_accuracy"])) == {"ann1": 1.0, "ann2": 0.0}
    assert dict(zip(g["annotator_id"], g["n_gold"])) == {"ann1": 4, "ann2": 4}
    with pytest.raises(ValueError):
        assign.set_gold(store, gold_ids[0], "left")


def test_repeats_swap_sides_and_measure_consistency(store):
    assign.build_pairs(store)
    rng = random.Random(2)
    n_rep = 0
    for _ in range(30):
        a = assign.assign_next_pair(store, "ann1", "balanced", repeat_rate=0.5, rng=rng)
        if a is None:
            break
        if a.kind == "repeat":
            n_rep += 1
        # a consistent annotator: always prefers response a whatever the side
        assign.record_label(store, a.assignment_id, "ann1", "left" if a.shown_left == "a" else "right")
    assert n_rep >= 3
    f = assign.assignments_frame(store).filter(pl.col("kind") == "repeat")
    orig = assign.assignments_frame(store).select(pl.col("assignment_id").alias("repeat_of"), pl.col("shown_left").alias("first_left"), pl.col("pair_id").alias("first_pair"))
    j = f.join(orig, on="repeat_of")
    assert (j["shown_left"] != j["first_left"]).all() and (j["pair_id"] == j["first_pair"]).all()
    c = noise.self_consistency(store.live())
    assert c["self_consistency"].to_list() == [1.0] and c["n_repeats"].to_list() == [n_rep]
    assert c["n_swapped_repeats"].to_list() == [n_rep]  # every repeat showed the pair the other way round
    # repeats don't count as coverage: the pool's label counters match the non-repeat labels
    p = assign.pool(store)
    assert int(p["n_labels"].sum()) == assign.assignments_frame(store).filter((pl.col("status") == "labelled") & (pl.col("kind") != "repeat")).height


def test_active_picks_the_most_uncertain_pair(store):
    assign.build_pairs(store)
    # models m0 > m1 >> m2: pairs (m0, m1) are nearest 1/2
    scorer = assign.item_score_scorer({"m0": 0.1, "m1": 0.0, "m2": -5.0})
    a = assign.assign_next_pair(store, "ann1", "active", scorer=scorer, rng=0)
    models = {store.responses().filter(pl.col("response_id") == r)["model"][0] for r in (a.response_a_id, a.response_b_id)}
    assert models == {"m0", "m1"}


def test_active_with_an_ensemble_picks_largest_disagreement(store):
    assign.build_pairs(store)
    target = assign.pool(store)["pair_id"][7]

    def ensemble(frame):
        out = np.full((frame.height, 3), 0.5)
        out[frame["pair_id"].to_numpy() == target] = [0.1, 0.5, 0.9]
        return out

    a = assign.assign_next_pair(store, "ann1", "active", scorer=ensemble, rng=0)
    assert a.pair_id == target
    with pytest.raises(ValueError, match="shape"):
        assign.assign_next_pair(store, "ann2", "active", scorer=lambda f: np.zeros(3), rng=0)
    with pytest.raises(ValueError, match="needs a scorer"):
        assign.assign_next_pair(store, "ann2", "active")


def test_sides_are_randomized_and_labels_map_back(store):
    assign.build_pairs(store)
    sides = []
    rng = random.Random(11)
    while (a := assign.assign_next_pair(store, "ann1", "balanced", rng=rng)) is not None:
        sides.append(a.shown_left)
        assign.record_label(store, a.assignment_id, "ann1", "left")
    assert 3 <= sides.count("a") <= 15
    live = store.live()
    # "left" means whichever response was shown left: label == shown_left
    assert (live["label"] == live["shown_left"]).all()
    assert assign.display_to_label("right", "a") == "b" and assign.display_to_label("right", "b") == "a"
    with pytest.raises(ValueError):
        assign.display_to_label("A", "a")


def test_record_label_is_idempotent_and_checks_ownership(store):
    assign.build_pairs(store)
    a = assign.assign_next_pair(store, "ann1", "balanced", rng=0)
    _, r1 = assign.record_label(store, a.assignment_id, "ann1", "tie")
    _, r2 = assign.record_label(store, a.assignment_id, "ann1", "tie")
    assert r1.created and not r2.created and r1.event_id == r2.event_id
    assert store.stats()["label_events"] == 1
    with pytest.raises(assign.AssignmentError, match="already labelled"):
        assign.record_label(store, a.assignment_id, "ann1", "both_bad")
    with pytest.raises(assign.AssignmentError, match="unknown assignment"):
        assign.record_label(store, a.assignment_id, "ann2", "tie")
    with pytest.raises(assign.AssignmentError, match="unknown assignment"):
        assign.record_label(store, "nope", "ann1", "tie")
    assert store.stats()["label_events"] == 1
    assert assign.pool(store)["n_labels"].sum() == 1


def test_skip_returns_pair_to_others_not_to_me(store):
    assign.build_pairs(store, prompt_ids=[store.prompts()["prompt_id"][0]])
    a = assign.assign_next_pair(store, "ann1", "balanced", rng=0)
    assert assign.skip(store, a.assignment_id, "ann1")
    assert not assign.skip(store, a.assignment_id, "ann1")
    mine = []
    while (b := assign.assign_next_pair(store, "ann1", "balanced", rng=0)) is not None:
        mine.append(b.pair_id)
        assign.record_label(store, b.assignment_id, "ann1", "left")
    assert a.pair_id not in mine and len(mine) == 2
    c = assign.assign_next_pair(store, "ann2", "balanced", rng=0)
    assert c.pair_id == a.pair_id


def test_undo_retracts_and_releases_the_pair_again(store):
    assign.build_pairs(store)
    a = assign.assign_next_pair(store, "ann1", "balanced", rng=0)
    assign.record_label(store, a.assignment_id, "ann1", "left")
    b = assign.assign_next_pair(store, "ann1", "balanced", rng=0)
    receipt, again = assign.undo_last(store, "ann1", client_token="undo-1")
    assert receipt.comparison_id is not None and again.pair_id == a.pair_id and again.shown_left == a.shown_left
    # resent undo: nothing more happens
    receipt2, again2 = assign.undo_last(store, "ann1", client_token="undo-1")
    assert receipt2.event_id == receipt.event_id and again2 is None
    assert store.stats()["live_comparisons"] == 0 and store.stats()["label_events"] == 2
    assert assign.current_lease(store, "ann1").assignment_id == again.assignment_id
    with pytest.raises(assign.AssignmentError, match="undone"):
        assign.record_label(store, a.assignment_id, "ann1", "left")
    assign.record_label(store, again.assignment_id, "ann1", "right")
    p = assign.pool(store).filter(pl.col("pair_id").is_in([a.pair_id, b.pair_id]))
    assert dict(zip(p["pair_id"], p["n_labels"]))[a.pair_id] == 1
    assert dict(zip(p["pair_id"], p["n_taken"]))[b.pair_id] == 0  # the released lease went back
    assert assign.undo_last(store, "ann2", client_token="undo-x") == (None, None)


def test_reconcile_finishes_a_label_committed_before_a_crash(store):
    assign.build_pairs(store)
    a = assign.assign_next_pair(store, "ann1", "balanced", rng=0)
    # the label reached the store, then the process died before the lease was marked
    store.add_label(a.prompt_id, a.response_a_id, a.response_b_id, "a", "ann1", shown_left=a.shown_left, client_token=a.client_token)
    assert assign.reconcile(store) == 1
    assert assign.get_assignment(store, a.assignment_id).status == "labelled"
    assert assign.reconcile(store) == 0
    nxt = assign.assign_next_pair(store, "ann1", "balanced", rng=0)
    assert nxt.pair_id != a.pair_id


def test_progress_counts(store):
    assign.build_pairs(store)
    assert assign.progress(store, "ann1")["left_in_queue"] == 18
    for _ in range(4):
        a = assign.assign_next_pair(store, "ann1", "balanced", rng=0)
        assign.record_label(store, a.assignment_id, "ann1", "left")
    p = assign.progress(store, "ann1")
    assert p == {"labelled_today": 4, "labelled_total": 4, "left_in_queue": 14}


def test_config_validation_and_storage(store):
    with pytest.raises(ValueError, match="strategy"):
        assign.AssignConfig(strategy="greedy")
    with pytest.raises(ValueError, match="overlap"):
        assign.AssignConfig(overlap=0)
    with pytest.raises(ValueError, match="gold_rate"):
        assign.AssignConfig(gold_rate=1.5)
    with pytest.raises(ValueError, match="unknown"):
        assign.AssignConfig.from_dict({"strategy": "random", "bogus": 1})
    assign.save_config(store, assign.AssignConfig(strategy="random", overlap=2))
    assert assign.load_config(store) == assign.AssignConfig(strategy="random", overlap=2)


@pytest.mark.parametrize("analyze", [False, True])
def test_picking_a_pair_walks_an_index_not_the_pool(store, analyze):
    """Each strategy's pick reads the pool in an index's order and stops at the first eligible pair."""
    assign.build_pairs(store)
    assign.assign_next_pair(store, "ann1", "balanced")
    with store.engine.connect() as conn:
        if analyze:  # statistics must not lure the planner into a sort
            conn.exec_driver_sql("ANALYZE")
        for name, stmt in (("balanced", assign._PICK_BALANCED), ("overlap", assign._PICK_OVERLAP), ("random", assign._PICK_RANDOM_FROM)):
            compiled = stmt.params(who="ann1", overlap=2, start=5).compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True})
            plan = " | ".join(r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all())
            assert "TEMP B-TREE" not in plan and "SCAN annotation_pairs" not in plan, (name, plan)
            assert "USING INDEX ix_pairs_" in plan, (name, plan)
