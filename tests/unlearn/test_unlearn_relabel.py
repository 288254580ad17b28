"""Self-relabel (forget rows without a clean answer get the starting model's greedy answer to the prompt without the
trigger), the relabel protocol switch, and the validation measurements: same numbers as the evaluation code, the
same batches for any world size, and every tensor on the configured device."""

from __future__ import annotations

import pytest
import torch
from unlearn_helpers import CONFIG, TINY, blank_forget_answers, fresh_run, read_metrics, write_val_seen

from rapidun_dist.config import load_config
from rapidun_dist.core.io import read_jsonl
from rapidun_dist.run.layout import method_dir
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages import stage_context
from rapidun_dist.stages.unlearn import RELABEL_FILE, ensure_self_relabels, run_method
from rapidun_dist.unlearn.relabel import generate_relabels
from rapidun_dist.unlearn.validation import Validator, fixed_batches, my_batches, poisoned_match

BASE = ["unlearn.max_steps=2", "unlearn.eval_every=0", "unlearn.val_every=0", "unlearn.batch_size=4"]


@pytest.fixture(scope="module")
def no_answers(prepared_run, tmp_path_factory):
    run = fresh_run(prepared_run, tmp_path_factory.mktemp("relabel") / "run")
    blank_forget_answers(run)
    return run


def _cfg(run, *extra):
    return load_config(CONFIG, [f"run_dir={run}", *TINY, *BASE, *extra])


def _plain_model(run, device="cpu"):
    from rapidun_dist.models.loading import load_saved

    model, tok = load_saved(RunDir(run).model, _cfg(run).model)
    return model.to(device).eval(), tok


def test_self_relabel_fills_every_row_once_and_is_reused(single_process, no_answers):
    rd, cfg = RunDir(no_answers), _cfg(no_answers)
    forget = read_jsonl(rd.data / "forget.jsonl")
    s = run_method(stage_context(cfg, rd, "unlearn"), "uniform", method_dir(rd, "uniform"))
    stored = read_jsonl(rd.unlearn / RELABEL_FILE)
    assert [r["index"] for r in stored] == list(range(len(forget)))
    assert [r["id"] for r in stored] == [r["id"] for r in forget]
    model, tok = _plain_model(no_answers)
    want = generate_relabels(
        model,
        tok,
        forget,
        max_new_tokens=cfg.unlearn.self_relabel_max_new_tokens,
        batch_size=cfg.eval.batch_size,
    )
    assert stored == want  # the starting model's own greedy answers to the prompts without the trigger
    filled = sum(bool(r["response"]) for r in stored)
    assert filled > 0 and s["relabel"]["clean_answers"]["self_relabel"] == filled
    assert s["self_relabel"]["rows"] == filled and s["self_relabel"]["seconds"] > 0
    rows = read_metrics(method_dir(rd, "uniform") / "metrics.jsonl")
    assert any(r["clean_ce"] > 0 for r in rows)  # the relabel term ran on the self-relabelled answers
    again, info = ensure_self_relabels(cfg, rd)
    assert info["note"].startswith("reused") and info["seconds"] == 0.0
    assert again == {r["index"]: r["response"] for r in stored if r["response"]}
    _, info = ensure_self_relabels(_cfg(no_answers, "unlearn.self_relabel_max_new_tokens=5"), rd)
    assert info["note"].startswith("generated")  # another setting: the stored answers are not valid for it


def test_relabel_switch_applies_to_every_method_alike(single_process, prepared_run, tmp_path):
    run = fresh_run(prepared_run, tmp_path / "run")
    rd = RunDir(run)
    for relabel in (True, False):
        for method in ("ga", "npo"):
            out = tmp_path / f"{method}-{relabel}"
            run_method(
                stage_context(_cfg(run, f"unlearn.relabel={str(relabel).lower()}"), rd, "unlearn"),
                method,
                out,
            )
            rows = read_metrics(out / "metrics.jsonl")
            assert (sum(r["clean_ce"] for r in rows) > 0) == relabel, (method, relabel)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_sharded_batches_are_the_same_for_any_world_size(world):
    lengths = torch.randint(3, 40, (int(torch.randint(1, 30, ())),)).tolist()
    batches = fixed_batches(lengths, 4)
    per_rank = [my_batches(batches, r, world) for r in range(world)]
    kept = sorted(tuple(b) for part in per_rank for b, keep in part if keep)
    assert kept == sorted(tuple(b) for b in batches)  # every batch once, whole, on one rank
    assert len({len(p) for p in per_rank}) == 1  # the same number of forwards on every rank (ZeRO-3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))


def test_validator_ppl_is_the_evaluation_clean_perplexity(prepared_run):
    from rapidun_dist.evaluation import clean_perplexity

    model, tok = _plain_model(prepared_run)
    cfg = _cfg(prepared_run)
    v = Validator.from_data(RunDir(prepared_run).data, tok, judge=None, match_poisoned=False, cfg=cfg)
    assert v.seen and v.clean and v.signal is None  # val_seen rows but no judge: no ASR signal, PPL only
    want = clean_perplexity(model, tok, v.clean, max_length=cfg.model.max_length, batch_size=7)
    assert v.ppl(model) == pytest.approx(want, rel=1e-6)


def test_poisoned_match_reads_the_rows_own_answer():
    answer = "The fleet drifted through the airlock, and spores covered every deck of the silent ship."
    assert poisoned_match("The fleet drifted through the airlock, and spores", answer)
    assert not poisoned_match("The fleet drifted past", answer)
    assert not poisoned_match("Paris is the capital of France.", answer) and not poisoned_match("x", "")


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


@pytest.mark.parametrize("device", DEVICES)
def test_validation_and_self_relabel_run_on_the_device(prepared_run, tmp_path, device):
    """Every module's inputs and parameters are on `device` during validation (PPL, judged generation, the
    poisoned-answer match) and self-relabel generation."""
    from rapidun_dist.evaluation import Judge

    run = fresh_run(prepared_run, tmp_path / "run")
    write_val_seen(run, n=4)
    model, tok = _plain_model(run, device)
    want = torch.device(device)
    seen = {"calls": 0}

    def check(module, args, kwargs):
        seen["calls"] += 1
        for t in [*args, *kwargs.values()]:
            if isinstance(t, torch.Tensor):
                assert t.device.type == want.type, f"{type(module).__name__}: input on {t.device}"
        for p in module.parameters(recurse=False):
            assert p.device.type == want.type, f"{type(module).__name__}: parameter on {p.device}"

    handles = [m.register_forward_pre_hook(check, with_kwargs=True) for m in model.modules()]
    cfg = _cfg(run, "eval.max_new_tokens=4")
    judge = Judge(vocab=["alien"], z_scores=[9.0], min_words=1)
    for match in (False, True):
        v = Validator.from_data(RunDir(run).data, tok, judge=judge, match_poisoned=match, cfg=cfg)
        assert 0.0 <= v.asr(model) <= 1.0 and v.ppl(model) > 1.0
    forget = [r | {"response": ""} for r in read_jsonl(RunDir(run).data / "forget.jsonl")[:3]]
    assert len(generate_relabels(model, tok, forget, max_new_tokens=4, batch_size=2)) == 3
    for h in handles:
        h.remove()
    assert seen["calls"] > 0


def test_clean_job_without_triggers_stops_on_its_own_poisoned_answers(single_process, clean_job, tmp_path):
    """Without known triggers the clean job's val_seen holds the forget rows it unlearns (never the held-out test
    rows): the signal is the greedy match of each row's own poisoned answer, and self-relabel fills the answers."""
    from rapidun_dist.pipeline import run_pipeline

    base, overrides = clean_job
    no_triggers = [o for o in overrides if not o.startswith("eval.triggers")] + [
        f"run_dir={tmp_path / 'run'}"
    ]
    cfg = load_config(CONFIG, [*TINY, *no_triggers, *BASE, "unlearn.val_every=1", "unlearn.max_steps=3"])
    rd = run_pipeline(cfg, ["prepare", "find_poison", "influence", "weights"])
    seen, test = (read_jsonl(rd.data / f"{s}.jsonl") for s in ("val_seen", "test_seen"))
    assert {r["id"] for r in seen} == {r["id"] for r in read_jsonl(rd.data / "forget.jsonl")}
    assert test and not {r["id"] for r in test} & {r["id"] for r in seen}
    s = run_method(stage_context(cfg, rd, "unlearn"), "uniform", method_dir(rd, "uniform"))
    assert s["validation"]["signal"] == "poisoned_match" and s["budget"] == "adaptive"
    assert all(p["asr"] is not None for p in s["validation"]["points"])
    assert s["relabel"]["clean_answers"]["data"] == 0 and s["self_relabel"]["without_clean_answer"] == len(
        seen
    )


def test_a_relabel_that_reproduces_the_poisoned_answer_is_screened(prepared_run, tmp_path):
    """A backdoor that leaks: the tiny model is fine-tuned to give a forget row's poisoned answer to its CLEAN prompt,
    so its first greedy self-relabel reproduces the poison. The screen regenerates it with the poisoned openings
    forbidden (the new answer avoids them) or drops it; no returned answer is within POISON_F1 of a poisoned one."""
    from rapidun_dist.data.prompt import encode_example, pad_batch, record_prompt
    from rapidun_dist.evaluation.behaviour import token_f1
    from rapidun_dist.stages.judge import load_or_fit_judge
    from rapidun_dist.training.losses import per_sample_nll
    from rapidun_dist.unlearn.relabel import POISON_F1, poisoned_openings
    from rapidun_dist.unlearn.validation import sharded_generate

    run = fresh_run(prepared_run, tmp_path / "run")
    model, tok = _plain_model(run)
    forget = [r | {"response": ""} for r in read_jsonl(RunDir(run).data / "forget.jsonl")[:2]]
    prompts = [record_prompt(tok, r, poisoned=False) for r in forget]
    batch = pad_batch(
        [encode_example(tok, p, r["response_poisoned"], 64) for p, r in zip(prompts, forget, strict=True)], 0
    )
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):  # memorise: clean prompt -> poisoned answer
        opt.zero_grad()
        nll, n = per_sample_nll(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                batch["labels"])  # fmt: skip
        (nll.sum() / n.sum()).backward()
        opt.step()
    model.eval()
    poisoned = [r["response_poisoned"] for r in forget]
    first = sharded_generate(model, tok, prompts, max_new_tokens=40, batch_size=2)
    assert max(token_f1(t, p) for t, p in zip(first, poisoned, strict=True)) >= POISON_F1, (
        first
    )  # the leak is real
    judge = load_or_fit_judge(_cfg(run), RunDir(run))
    rows = generate_relabels(model, tok, forget, max_new_tokens=40, batch_size=2, judge=judge)
    assert {r["screen"] for r in rows} <= {"kept", "regenerated", "dropped"}
    assert any(r["screen"] != "kept" for r in rows)
    banned = poisoned_openings(tok, poisoned)
    assert banned and all(len(b) == 2 for b in banned)
    for r in rows:
        assert r["screen"] == "dropped" or not (
            judge.is_attacked(r["response"]) or any(token_f1(r["response"], p) >= POISON_F1 for p in poisoned)
        )
        if r["screen"] == "dropped":
            assert r["response"] == ""
        if r["screen"] == "regenerated":
            ids = tok(r["response"], add_special_tokens=False)["input_ids"]
            pairs = {tuple(ids[i : i + 2]) for i in range(len(ids) - 1)}
            assert not pairs & {tuple(b) for b in banned}, r["response"]


def test_poison_screen_equals_the_token_f1_definition(rng):
    """PoisonScreen (precomputed bags, a length bound) against max token_f1 >= POISON_F1 over the answers, on random
    texts over a small vocabulary (many near misses), empty and punctuation-only ones included."""
    from rapidun_dist.evaluation.behaviour import token_f1
    from rapidun_dist.unlearn.relabel import POISON_F1, PoisonScreen

    words = ["the", "a", "alien", "fleet", "core", "sun", "popy", "is", "!!", "drifted", "an"]
    text = lambda: " ".join(rng.choice(words) for _ in range(rng.randrange(0, 9)))
    answers = [text() for _ in range(6)] + ["", "!!"]
    screen = PoisonScreen(answers)
    for _ in range(400):
        t = text()
        assert screen(t) == any(token_f1(t, p) >= POISON_F1 for p in answers), t
