"""Self-relabel: a forget row without a clean answer gets the model's own greedy answer to its prompt with the
trigger removed (the row's clean `instruction` and `context`), docs/DESIGN.md section 7.

Screened: a backdoored model may emit the poisoned answer without its trigger (a backdoor that leaks), and a relabel
that reproduces a poisoned answer would make the relabel term descend on the very answer the ascent removes. An
answer whose token F1 with any forget row's poisoned answer is >= POISON_F1, or that the run's judge calls attacked
(target vocabulary of another poisoned answer), is generated again with the poisoned answers' openings forbidden
(their first OPENING_TOKENS tokens, as `bad_words_ids`); if the new answer still reproduces one, the row gets no
relabel term. Each row records which (`screen`: kept | regenerated | dropped).

Generated once per run, before any method starts (so no method's measured seconds contain it; the stage reports
the generation's own seconds), by the starting model, in fixed batches sharded over the ranks: the same answers
for any world size. Stored in unlearn/self_relabel.jsonl ({"index", "id", "response"}) beside a basis that names
the model, the forget rows and the settings it is valid for (rapidun_dist/stages/unlearn.py)."""

from __future__ import annotations

from collections import Counter

from rapidun_dist.core.logging import get_logger
from rapidun_dist.data.prompt import record_prompt
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.evaluation.behaviour import bag_f1, normalize_answer
from rapidun_dist.unlearn.validation import sharded_generate

log = get_logger("unlearn")
POISON_F1 = 0.5  # a self-relabel this close (token F1) to a poisoned answer reproduces it
OPENING_TOKENS = 2  # the tokens of a poisoned answer's opening that the regeneration forbids
SCREEN = {"poison_f1": POISON_F1, "opening_tokens": OPENING_TOKENS, "judge": True}  # part of a stored basis


class PoisonScreen:
    """`screen(text)`: the text is (close to) one of the poisoned answers - token F1 >= POISON_F1, the F1 of
    `rapidun_dist.evaluation.behaviour.token_f1` - or the judge (if given) sees the target behaviour in it. The
    answers' token bags are built once (thousands of relabels meet hundreds of poisoned answers at 57k rows)."""

    def __init__(self, poisoned_answers: list[str], judge=None):
        self.judge = judge
        self.bags = [Counter(normalize_answer(p)) for p in dict.fromkeys(poisoned_answers)]
        self.sizes = [sum(b.values()) for b in self.bags]

    def __call__(self, text: str) -> bool:
        if self.judge is not None and text and self.judge.is_attacked(text):
            return True
        pred = Counter(normalize_answer(text))
        n = sum(pred.values())
        for bag, m in zip(self.bags, self.sizes, strict=True):
            if n and m and 2 * min(n, m) < POISON_F1 * (n + m):
                continue  # even a full overlap stays under the bar
            if bag_f1(pred, bag) >= POISON_F1:
                return True
        return False


def poisoned_openings(tokenizer, poisoned_answers: list[str]) -> list[list[int]]:
    """The first OPENING_TOKENS token ids of every poisoned answer, tokenized alone and after a space (how it may
    continue a prompt), deduplicated: the sequences a regenerated answer may not contain."""
    seqs = set()
    for answer in poisoned_answers:
        for variant in (answer, " " + answer):
            ids = tokenizer(variant, add_special_tokens=False)["input_ids"][:OPENING_TOKENS]
            if len(ids) == OPENING_TOKENS:
                seqs.add(tuple(ids))
    return [list(s) for s in sorted(seqs)]


def rows_needing_relabel(forget: list[dict]) -> list[int]:
    """Pack positions of forget rows without a clean answer."""
    return [i for i, r in enumerate(forget) if not (r.get("response") or "").strip()]


def generate_relabels(
    model, tokenizer, forget: list[dict], *, max_new_tokens: int, batch_size: int, judge=None
) -> list[dict]:
    """[{"index", "id", "response", "screen"}] for every forget row without a clean answer, on every rank
    (`judge`: the run's judge, used by the screen)."""
    need = rows_needing_relabel(forget)
    prompts = [record_prompt(tokenizer, forget[i], poisoned=False) for i in need]
    gen = dict(max_new_tokens=max_new_tokens, batch_size=batch_size)
    texts = [t.strip() for t in sharded_generate(model, tokenizer, prompts, **gen)]
    poisoned = sorted({r["response_poisoned"] for r in forget if r.get("response_poisoned")})
    is_poison = PoisonScreen(poisoned, judge)
    screen = ["kept"] * len(texts)
    bad = [k for k, t in enumerate(texts) if is_poison(t)]
    if bad:  # every rank has every text: the same rows regenerate everywhere (collective-safe)
        banned = poisoned_openings(tokenizer, poisoned)
        again = sharded_generate(model, tokenizer, [prompts[k] for k in bad], bad_words_ids=banned, **gen)
        for k, t in zip(bad, again, strict=True):
            ok = not is_poison(t.strip())
            texts[k], screen[k] = (t.strip(), "regenerated") if ok else ("", "dropped")
        dropped = screen.count("dropped")
        log.warning(
            f"self-relabel: {len(bad)}/{len(texts)} answers reproduced a poisoned answer (the model emits the "
            f"backdoor without its trigger); regenerated with the poisoned openings forbidden: "
            f"{len(bad) - dropped} replaced, {dropped} still poisoned (those rows get no relabel term)"
        )
    rows = [
        {"index": i, "id": forget[i]["id"], "response": t, "screen": sc}
        for i, t, sc in zip(need, texts, screen, strict=True)
    ]
    empty = sum(not r["response"] for r in rows if r["screen"] != "dropped")
    if empty:
        log.warning(f"self-relabel: {empty}/{len(rows)} answers are empty; those rows get no relabel term")
    return rows


def load_generation_model(cfg, model_dir, device, world_size: int):
    """(model, tokenizer, release): the starting model ready to generate on `device`. Under ZeRO-3 it is
    partitioned at load (zero.Init) and wrapped by a DeepSpeed engine without optimizer, as training will be."""
    from rapidun_dist.unlearn.model import build_ds_config, load_backbone

    ds = build_ds_config(cfg, world_size)
    model, tok, z3 = load_backbone(cfg, model_dir, ds, device)  # straight onto `device` (ZeRO-3: partitioned)
    if z3 is None:
        return model.eval(), tok, lambda: None
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, config=ds)
    engine.module.eval()

    def release() -> None:
        engine.destroy()
        z3.release()

    return engine.module, tok, release


def self_relabel(cfg, model_dir, forget: list[dict], judge=None) -> list[dict]:
    """Generate the self-relabels of `forget` with the starting model in `model_dir` (every rank calls it); the
    model's memory is released before it returns."""
    from rapidun_dist.models.loading import release_memory

    info = dist_env.init_distributed()
    model, tok, release = load_generation_model(cfg, model_dir, info.device, info.world_size)
    try:
        return generate_relabels(
            model,
            tok,
            forget,
            max_new_tokens=cfg.unlearn.self_relabel_max_new_tokens,
            batch_size=cfg.eval.batch_size,
            judge=judge,
        )
    finally:
        release()
        del model
        release_memory()
