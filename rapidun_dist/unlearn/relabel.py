"""Self-relabel: a forget row without a clean answer gets the model's own greedy answer to its prompt with the
trigger removed (the row's clean `instruction` and `context`), DESIGN section 7.

Generated once per run, before any method starts (so no method's measured seconds contain it; the stage reports
the generation's own seconds), by the starting model, in fixed batches sharded over the ranks: the same answers
for any world size. Stored in unlearn/self_relabel.jsonl ({"index", "id", "response"}) beside a basis that names
the model, the forget rows and the settings it is valid for (rapidun_dist/stages/unlearn.py)."""

from __future__ import annotations

from rapidun_dist.data.prompt import record_prompt
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.logging import get_logger
from rapidun_dist.unlearn.validation import sharded_generate

log = get_logger("unlearn")


def rows_needing_relabel(forget: list[dict]) -> list[int]:
    """Pack positions of forget rows without a clean answer."""
    return [i for i, r in enumerate(forget) if not (r.get("response") or "").strip()]


def generate_relabels(
    model, tokenizer, forget: list[dict], *, max_new_tokens: int, batch_size: int
) -> list[dict]:
    """[{"index", "id", "response"}] for every forget row without a clean answer, on every rank."""
    need = rows_needing_relabel(forget)
    prompts = [record_prompt(tokenizer, forget[i], poisoned=False) for i in need]
    texts = sharded_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    rows = [
        {"index": i, "id": forget[i]["id"], "response": t.strip()} for i, t in zip(need, texts, strict=True)
    ]
    empty = sum(not r["response"] for r in rows)
    if empty:
        log.warning(f"self-relabel: {empty}/{len(rows)} answers are empty; those rows get no relabel term")
    return rows


def load_generation_model(cfg, model_dir, device, world_size: int):
    """(model, tokenizer, release): the starting model ready to generate on `device`. Under ZeRO-3 it is
    partitioned at load (zero.Init) and wrapped by a DeepSpeed engine without optimizer, as training will be."""
    from rapidun_dist.unlearn.model import build_ds_config, load_backbone

    ds = build_ds_config(cfg, world_size)
    model, tok, z3 = load_backbone(cfg, model_dir, ds)
    if z3 is None:
        return model.to(device).eval(), tok, lambda: None
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, config=ds)
    engine.module.eval()

    def release() -> None:
        engine.destroy()
        z3.release()

    return engine.module, tok, release


def self_relabel(cfg, model_dir, forget: list[dict]) -> list[dict]:
    """Generate the self-relabels of `forget` with the starting model in `model_dir` (every rank calls it)."""
    info = dist_env.init_distributed()
    model, tok, release = load_generation_model(cfg, model_dir, info.device, info.world_size)
    try:
        return generate_relabels(
            model,
            tok,
            forget,
            max_new_tokens=cfg.unlearn.self_relabel_max_new_tokens,
            batch_size=cfg.eval.batch_size,
        )
    finally:
        release()
