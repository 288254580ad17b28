"""Two-stage find_poison: the candidate set, the rows stage 2 scores, the combined ranking, the known-row check and
the recall accounting by hand; then the stage with two_stage on the tiny run (its candidates are the top Rep-Sim
rows, or the top TF-IDF rows where `auto` finds TF-IDF keeps every known row)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fp_utils import fresh_copy, load_cfg, read_rows  # noqa: E402

from rapidun_dist.core.io import read_json  # noqa: E402
from rapidun_dist.find_poison import twostage  # noqa: E402


def test_candidate_count_share_or_count():
    assert twostage.n_candidates(0.1, 276) == 28 and twostage.n_candidates(0.5, 3) == 2
    assert twostage.n_candidates(40, 276) == 40 and twostage.n_candidates(500, 276) == 276
    assert twostage.n_candidates(1e-9, 10) == 1


def test_candidates_scored_rows_and_combined_ranking():
    first = torch.tensor([0.3, 0.9, 0.1, 0.9, 0.5, 0.0], dtype=torch.float64)
    cand = twostage.candidate_mask(first, 3)
    assert cand.tolist() == [False, True, False, True, True, False]  # ties: the earlier row first
    known = torch.tensor([False, False, False, False, False, True])
    pos = twostage.scored_positions(cand, known, torch.tensor([2]))
    assert pos == [1, 2, 3, 4, 5]
    second = torch.tensor([2.0, -1.0, 5.0, 0.5, 1.0], dtype=torch.float64)
    full = twostage.combine(first, pos, second)
    assert full[pos].tolist() == second.tolist()
    assert float(full[0]) < float(second.min()) - 1.0 + 1e-12  # below every scored row
    first2 = torch.tensor([0.3, 0.9, 0.1, 0.9, 0.5, 0.0, 0.2], dtype=torch.float64)
    full2 = twostage.combine(first2, [1, 3], torch.tensor([1.0, 2.0], dtype=torch.float64))
    rest = [4, 0, 6, 2, 5]  # the unscored rows in stage-1 order (0.5, 0.3, 0.2, 0.1, 0.0)
    assert sorted(rest, key=lambda i: -float(full2[i])) == rest and float(full2[rest].max()) < 1.0


def test_known_kept_and_the_auto_choice_by_hand():
    first = torch.tensor([0.9, 0.1, 0.8, 0.7, 0.2, 0.6], dtype=torch.float64)
    known = torch.tensor([True, False, False, True, False, False])
    assert twostage.known_kept(first, known, 3) == {"known": 2, "kept": 2}  # rows 0, 2, 3 kept
    assert twostage.lexical_first(twostage.known_kept(first, known, 3))
    known[4] = True  # score 0.2: the 5th of 6
    assert twostage.known_kept(first, known, 3) == {"known": 3, "kept": 2}
    assert not twostage.lexical_first(twostage.known_kept(first, known, 3))
    assert not twostage.lexical_first({"known": 0, "kept": 0})  # nothing to check: never trust it blind


def test_fitted_keep_follows_the_lowest_known_row_by_hand():
    first = torch.tensor([0.9, 0.1, 0.8, 0.7, 0.2, 0.6, 0.5, 0.4, 0.3, 0.0], dtype=torch.float64)
    known = torch.zeros(10, dtype=torch.bool)
    known[[0, 3]] = True  # ranks 1 and 3
    assert twostage.fitted_keep(first, known, 8, 1.5) == {"keep": 5, "cap": 8, "lowest_known": 3}  # ceil(4.5)
    assert twostage.fitted_keep(first, known, 4, 1.5)["keep"] == 4  # the cap binds
    assert twostage.fitted_keep(first, known, 8, 1.0)["keep"] == 3  # margin 1: down to the lowest known row
    assert twostage.fitted_keep(first, known, 8, 0.0) == {"keep": 8, "cap": 8, "lowest_known": None}
    known[:] = False
    assert twostage.fitted_keep(first, known, 8, 1.5)["keep"] == 8  # no known row: nothing to fit on
    known[1] = True  # the last row but one (score 0.1, rank 9): the margin asks for more than the cap
    assert twostage.fitted_keep(first, known, 8, 1.5) == {"keep": 8, "cap": 8, "lowest_known": 9}


def test_recall_accounting_by_hand():
    labels = torch.tensor([1, 1, 1, 0, 1, 0], dtype=torch.bool)
    known = torch.tensor([1, 0, 0, 0, 0, 0], dtype=torch.bool)
    scored = torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.bool)
    rec = twostage.recall_accounting(labels, known, scored)
    assert rec == {"poisoned": 4, "kept": 2, "lost": 2, "recall_kept": 0.5, "lost_unknown": 2,
                   "recall_kept_unknown": pytest.approx(1 / 3)}  # fmt: skip


def test_two_stage_scores_the_top_repsim_rows_and_accounts_for_what_it_dropped(implanted_dir, tmp_path):
    from rapidun_dist.pipeline import run_pipeline

    runs = {}
    for name, extra in (("repsim", ["find_poison.method=repsim"]),
                        ("two", ["find_poison.two_stage=true", "find_poison.first_stage=repsim",
                                 "find_poison.candidates=0.2"])):  # fmt: skip
        run = fresh_copy(implanted_dir, tmp_path / name)
        run_pipeline(load_cfg(run, "find_poison.time_epoch=false", *extra), ["find_poison"])
        runs[name] = run
    train = read_rows(runs["two"] / "data" / "train.jsonl")
    summary = read_json(runs["two"] / "suspects" / "summary.json")
    rows = read_rows(runs["two"] / "suspects" / "suspects.jsonl")
    first = torch.tensor([r["score"] for r in read_rows(runs["repsim"] / "suspects" / "suspects.jsonl")])
    keep = math.ceil(0.2 * len(train))
    cand = twostage.candidate_mask(first, keep)
    forget_ids = {r["id"] for r in read_rows(runs["two"] / "data" / "forget.jsonl")}
    ref_ids = {r["id"] for r in read_rows(runs["two"] / "data" / "retain.jsonl")}
    scored = [bool(cand[i]) or r["id"] in forget_ids or r["id"] in ref_ids for i, r in enumerate(train)]
    two = summary["two_stage"]
    assert (two["candidates"], two["scored"], two["rows"]) == (keep, sum(scored), len(train))
    assert two["seconds_first"] > 0 and two["seconds_second"] > 0
    assert (two["first"], two["first_stage"]) == ("repsim", "repsim") and "tfidf" not in two["known_kept"]
    known = torch.tensor([r["id"] in forget_ids for r in train])
    assert two["known_kept"]["repsim"] == twostage.known_kept(first, known, keep)
    assert not any(r["flagged"] for r, s in zip(rows, scored, strict=True) if not s)
    lowest_scored = min(r["score"] for r, s in zip(rows, scored, strict=True) if s)
    assert all(r["score"] < lowest_scored for r, s in zip(rows, scored, strict=True) if not s)
    poisoned = [bool(r["is_poisoned"]) for r in train]
    lost = sum(p and not s for p, s in zip(poisoned, scored, strict=True))
    assert two["recall"]["lost"] == lost and two["recall"]["poisoned"] == sum(poisoned)
    assert summary["scorers"]["influence"]["seconds"] == pytest.approx(
        two["seconds_first"] + two["seconds_second"]
    )


@pytest.mark.parametrize(("candidates", "expected"), [(0.3, "tfidf"), (0.02, "repsim")])
def test_auto_first_stage_is_tfidf_exactly_when_it_keeps_every_known_row(
    implanted_dir, tmp_path, candidates, expected
):
    """`auto` reads TF-IDF's leave-one-out ranks of the known rows (the stage's own tfidf method scores them the
    same way): every known row among the candidates -> the TF-IDF candidates are stage 2's rows; else Rep-Sim's."""
    from rapidun_dist.pipeline import run_pipeline

    runs = {}
    for name, extra in (("tfidf", ["find_poison.method=tfidf"]), ("repsim", ["find_poison.method=repsim"]),
                        ("auto", ["find_poison.two_stage=true", f"find_poison.candidates={candidates}"])):  # fmt: skip
        run = fresh_copy(implanted_dir, tmp_path / name)
        run_pipeline(load_cfg(run, "find_poison.time_epoch=false", *extra), ["find_poison"])
        runs[name] = run
    train = read_rows(runs["auto"] / "data" / "train.jsonl")
    forget_ids = {r["id"] for r in read_rows(runs["auto"] / "data" / "forget.jsonl")}
    known = torch.tensor([r["id"] in forget_ids for r in train])
    keep = twostage.n_candidates(candidates, len(train))
    lexical = torch.tensor([r["score"] for r in read_rows(runs["tfidf"] / "suspects" / "suspects.jsonl")])
    check = twostage.known_kept(lexical, known, keep)
    summary = read_json(runs["auto"] / "suspects" / "summary.json")
    two = summary["two_stage"]
    lexical_flagged = sum(r["flagged"] for r in read_rows(runs["tfidf"] / "suspects" / "suspects.jsonl"))
    assert (
        summary["scorers"]["tfidf"]["n_flagged"] == lexical_flagged
    )  # the baseline: the same scores either way
    assert two["known_kept"]["tfidf"] == check and two["first_stage"] == "auto"
    picked = "tfidf" if check["kept"] == check["known"] else "repsim"
    assert two["first"] == picked
    first = torch.tensor([r["score"] for r in read_rows(runs[picked] / "suspects" / "suspects.jsonl")])
    cand = twostage.candidate_mask(first, keep)
    ref_ids = {r["id"] for r in read_rows(runs["auto"] / "data" / "retain.jsonl")}
    scored = sum(bool(cand[i]) or r["id"] in forget_ids or r["id"] in ref_ids for i, r in enumerate(train))
    assert two["scored"] == scored
    # both branches are taken: the fixture's fixed triggers are lexical, and 0.02 is fewer rows than the known ones
    assert picked == expected and (expected == "tfidf" or keep < check["known"])
    from rapidun_dist.evaluation.report import _find_poison_section

    line = next(x for x in _find_poison_section({"find_poison": summary}) if x.startswith("Two stages:"))
    assert (
        line.startswith(f"Two stages: {picked} over all {len(train)} rows") and "(first_stage auto; " in line
    )
    assert (
        f"tfidf kept {check['kept']} of {check['known']} known rows" in line
        and f"kept {keep} candidates" in line
    )


@pytest.mark.dist
def test_dense_methods_and_two_stage_on_two_ranks_match_one(implanted_dir, tmp_path):
    """Rep-Sim features sliced over 2 gloo ranks and gathered, the candidates broadcast, the epoch timed on both:
    the same ranking as on one process (features differ only by the padding of their batch)."""
    from fp_utils import torchrun_find_poison

    from rapidun_dist.pipeline import run_pipeline

    extra = ("find_poison.method=gradsim", "find_poison.two_stage=true", "find_poison.candidates=0.3")
    one = fresh_copy(implanted_dir, tmp_path / "one")
    run_pipeline(load_cfg(one, *extra), ["find_poison"])
    two = fresh_copy(implanted_dir, tmp_path / "two")
    done = torchrun_find_poison(two, nproc=2, extra=extra)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (read_rows(r / "suspects" / "suspects.jsonl") for r in (one, two))
    assert [(r["id"], r["flagged"]) for r in a] == [(r["id"], r["flagged"]) for r in b]
    assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b, strict=True)) < 1e-5
    s1, s2 = (read_json(r / "suspects" / "summary.json") for r in (one, two))
    assert s1["two_stage"]["scored"] == s2["two_stage"]["scored"]
    assert len(s2["epoch"]["per_rank"]) == 2 and s2["epoch_seconds"] > 0
    assert [r["rank"] for r in s2["features"]["per_rank"]] == [0, 1]


def test_a_two_stage_training_store_holds_the_candidates_in_length_order_and_feeds_the_expanded_packs(
    implanted_dir, tmp_path
):
    """Stage 2's training store holds only the rows it scored, in `store_order` (text length), its index listing
    their ids; the influence stage still copies the expanded packs' rows from it (matched by id, whatever the
    store's order or subset): every all-forget pack shard is written from the stores, each row equal to the store's
    feature of that id."""
    from rapidun_dist.find_poison.tokenwise import feature_dirs, store_order
    from rapidun_dist.influence.extract import feature_context
    from rapidun_dist.influence.store import load_features
    from rapidun_dist.models.loading import load_saved
    from rapidun_dist.pipeline import run_pipeline
    from rapidun_dist.run.layout import model_identity
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import find_poison as fp

    run = fresh_copy(implanted_dir, tmp_path / "run")
    extra = ("find_poison.time_epoch=false", "find_poison.two_stage=true", "find_poison.first_stage=tfidf",
             "find_poison.candidates=0.3", "find_poison.expand=true", "influence.shard_size=8")  # fmt: skip
    cfg = load_cfg(run, *extra)
    run_pipeline(cfg, ["find_poison"])
    rd = RunDir(run)
    train = read_rows(run / "data" / "train.jsonl")
    two = read_json(run / "suspects" / "summary.json")["two_stage"]
    train_store, groups_store = feature_dirs(rd)
    held, index = load_features(train_store)
    by_id = {r["id"]: r for r in train}
    scored = [by_id[i] for i in index["ids"]]
    assert len(scored) == two["scored"] < len(train)
    assert index["ids"] == [
        scored[i]["id"] for i in store_order(scored)
    ]  # the store's own order is length order
    lengths = [sum(map(len, fp.S.as_trained(r))) for r in scored]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]

    forget_x = read_rows(run / "suspects" / "forget.jsonl")
    retain_x = read_rows(run / "suspects" / "retain.jsonl")
    records = forget_x + retain_x
    model, tok = load_saved(rd.model, cfg.model)
    copied = fp.reuse_train_features(
        cfg, rd, records, model, tok, feature_context(model_identity(rd), tok, cfg)
    )
    groups, g_index = load_features(groups_store)
    store = {i: held[p] for p, i in enumerate(index["ids"])} | {
        i: groups[p] for p, i in enumerate(g_index["ids"])
    }
    full = len(forget_x) // 8
    assert full >= 1 and copied >= 8 * full
    for s in range(full):
        from safetensors.torch import load_file

        shard = load_file(str(run / "features" / f"shard-{s:05d}.safetensors"))["features"]
        want = torch.stack([store[r["id"]] for r in records[8 * s : 8 * s + 8]])
        torch.testing.assert_close(shard, want, rtol=0, atol=0)


def test_the_model_is_loaded_once_when_stage_2_and_the_epoch_timing_both_need_it(
    implanted_dir, tmp_path, monkeypatch
):
    """TF-IDF's first stage loads no model; stage 2 loads it, and the epoch is timed on that same model (a second
    copy would double the memory of an 8B run)."""
    import rapidun_dist.models.loading as loading
    from rapidun_dist.pipeline import run_pipeline

    calls = []
    real = loading.load_saved
    monkeypatch.setattr(loading, "load_saved", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    run = fresh_copy(implanted_dir, tmp_path / "run")
    run_pipeline(
        load_cfg(
            run, "find_poison.two_stage=true", "find_poison.first_stage=tfidf", "find_poison.candidates=0.3"
        ),
        ["find_poison"],
    )
    summary = read_json(run / "suspects" / "summary.json")
    assert summary["two_stage"]["first"] == "tfidf" and summary["epoch_seconds"] > 0
    assert len(calls) == 1
