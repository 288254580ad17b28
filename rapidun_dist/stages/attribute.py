"""attribute: which prompt tokens carry the backdoor, and verified trigger candidates (rapidun_dist/attribution).

Collective. Forget and retain rows are split into contiguous per-rank ranges; each rank sums the prompt-position
features of its rows (one all_reduce of [2, dim] gives the direction: mean forget - mean retain feature), scores
its forget rows' prompt tokens (attribution and saliency) and all_gathers those per-row scores; every rank then
ranks the same n-gram candidates and verifies the top ones with generation sharded over the ranks (the one-rank
texts, bit for bit). Rank 0 writes:

    attribution/triggers.json   [{text, mode, score, insert_asr, remove_asr, ...}], best first
    attribution/tokens.jsonl    per forget row: tokens, content mask, attribution scores, saliency
    attribution/summary.json    base rates, settings, the saliency baseline's ranking, the verified triggers
    attribution/report.md       heat view of a few rows and the candidate table
"""

from __future__ import annotations

from pathlib import Path

import torch

from rapidun_dist.config import RunConfig
from rapidun_dist.core.io import read_jsonl, write_json, write_jsonl, write_text
from rapidun_dist.core.logging import get_logger
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.stages.base import Stage, StageContext
from rapidun_dist.stages.judge import shared_judge

log = get_logger("attribute")
OUT = "attribution"


def _share(n: int, rank: int, world: int) -> range:
    return range(rank * n // world, (rank + 1) * n // world)


def _direction(cfg: RunConfig, ext, forget_rows: list, retain_rows: list, info) -> torch.Tensor:
    """Mean forget - mean retain prompt-position feature, from per-rank sums (one all_reduce)."""
    from rapidun_dist.attribution.scores import contrast_direction, feature_sum

    bs = cfg.attribute.batch_size
    mine_f = [forget_rows[i].example for i in _share(len(forget_rows), info.rank, info.world_size)]
    mine_r = [retain_rows[i].example for i in _share(len(retain_rows), info.rank, info.world_size)]
    sums = dist_env.all_reduce_sum(torch.stack([feature_sum(ext, mine_f, bs), feature_sum(ext, mine_r, bs)]))
    return contrast_direction(sums[0], len(forget_rows), sums[1], len(retain_rows))


def _references(cfg: RunConfig, ext, rows: list, info) -> dict[int, torch.Tensor]:
    """{row: phi [n_content, dim]} of at most attribute.ref_rows evenly spaced rows, computed sharded over the
    ranks and gathered (every rank holds every reference)."""
    from rapidun_dist.attribution.scores import token_features

    step = -(-len(rows) // cfg.attribute.ref_rows)
    picked = list(range(0, len(rows), step))
    mine = [picked[i] for i in _share(len(picked), info.rank, info.world_size)]
    feats = token_features(ext, [rows[i] for i in mine], cfg.attribute.batch_size)
    return {i: f for part in dist_env.all_gather_object(list(zip(mine, feats, strict=True))) for i, f in part}


def _full(row, values) -> list[float]:
    """Values at the row's instruction tokens placed at their prompt positions (0 elsewhere)."""
    out, it = [0.0] * row.n_prompt, iter(values)
    for t, c in enumerate(row.content):
        if c:
            out[t] = float(next(it))
    return out


def token_rows(cfg: RunConfig, model, tok, forget: list[dict], retain: list[dict], info) -> list[dict]:
    """Per forget row (every row, on every rank): {index, id, tokens, content, scores, direction, saliency}."""
    from rapidun_dist.attribution import scores as sc

    a, max_len = cfg.attribute, cfg.model.max_length
    rows = sc.encode_forget_rows(tok, forget, max_len)
    retain_rows = [
        sc.encode_prompt_tokens(tok, r["instruction"], r.get("context", ""), r["response"], max_len)
        for r in retain
    ]
    ext = sc.attribution_extractor(model, cfg.influence, pad_id=tok.pad_token_id)
    ref_f, ref_r = _references(cfg, ext, rows, info), list(_references(cfg, ext, retain_rows, info).values())
    direction = _direction(cfg, ext, rows, retain_rows, info)
    mine = list(_share(len(rows), info.rank, info.world_size))
    order = sorted(ref_f)
    missing = [i for i in mine if i not in ref_f]  # own rows outside the reference sample
    feats = ref_f | dict(
        zip(missing, sc.token_features(ext, [rows[i] for i in missing], a.batch_size), strict=True)
    )
    forget_refs = [ref_f[i] for i in order]
    match = [
        sc.match_scores(
            feats[i], forget_refs, ref_r, own=order.index(i) if i in ref_f else None, m=a.match_rows
        )
        for i in mine
    ]
    split = sc.token_attribution(ext, [rows[i] for i in mine], direction, a.batch_size)
    sal = sc.input_saliency(model, [rows[i] for i in mine], pad_id=tok.pad_token_id, batch_size=a.batch_size)
    local = [
        {"index": i, "id": forget[i]["id"], "tokens": rows[i].texts, "content": rows[i].content,
         "scores": _full(rows[i], m), "direction": d, "saliency": g}
        for i, m, d, g in zip(mine, match, split, sal, strict=True)
    ]  # fmt: skip
    gathered = [r for part in dist_env.all_gather_object(local) for r in part]
    return sorted(gathered, key=lambda r: r["index"])


def run(ctx: StageContext) -> list[Path]:
    cfg, rd = ctx.cfg, ctx.rd
    from rapidun_dist.attribution.ngrams import rank_candidates
    from rapidun_dist.attribution.report import render_report
    from rapidun_dist.attribution.verify import VerifySettings, rank_verified, verify_candidates
    from rapidun_dist.models.loading import load_saved

    info = dist_env.init_distributed(config=cfg.distributed)
    a = cfg.attribute
    # the prepared packs: the known rows against the retain rows (not find_poison's expanded ones, which would
    # feed flagged guesses back into the trigger search)
    forget, retain = read_jsonl(rd.data / "forget.jsonl"), read_jsonl(rd.data / "retain.jsonl")
    model, tok = load_saved(rd.model, cfg.model, device=info.device)
    model.eval()
    rows = token_rows(cfg, model, tok, forget, retain, info)
    candidates = rank_candidates(rows, n_max=a.n_max, min_rows=a.min_rows)
    baselines = {
        k: rank_candidates(rows, n_max=a.n_max, min_rows=a.min_rows, score_key=k)
        for k in ("direction", "saliency")
    }
    log.info(f"{len(candidates)} candidates from {len(rows)} forget rows; verifying the top {a.top_k}")
    settings = VerifySettings(
        n_verify=a.n_verify, threshold=a.verify_asr, min_lift=a.min_lift, max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size, max_prompt_length=cfg.model.max_length, seed=a.seed,
    )  # fmt: skip
    judge = shared_judge(cfg, rd)
    results, base = verify_candidates(
        model, tok, judge, candidates[: a.top_k], clean=retain, forget=forget, settings=settings,
        sharded=info.world_size > 1,
    )  # fmt: skip
    ranked = rank_verified(results)
    out = rd.sub(OUT)
    paths = [out / n for n in ("triggers.json", "tokens.jsonl", "summary.json", "report.md")]
    if info.rank == 0:
        summary = _summary(cfg, rows, candidates, baselines, ranked, base)
        write_json(paths[0], ranked)
        write_jsonl(paths[1], rows)
        write_json(paths[2], summary)
        write_text(paths[3], render_report(rows, ranked, summary, n_rows=a.report_rows))
        _log_result(ranked)
    dist_env.barrier()
    return paths


def _summary(cfg: RunConfig, rows, candidates, baselines: dict, ranked, base: dict) -> dict:
    a = cfg.attribute

    def top(cands):
        return [{"key": c.key, "text": c.text, "score": c.score, "rows": c.rows} for c in cands[: a.top_k]]

    return {
        "n_forget": len(rows),
        "n_candidates": len(candidates),
        "settings": {
            k: getattr(a, k)
            for k in (
                "top_k",
                "n_max",
                "min_rows",
                "n_verify",
                "verify_asr",
                "min_lift",
                "match_rows",
                "ref_rows",
            )
        },
        "base": base,
        "verified": [{"text": r["text"], "mode": r["mode"]} for r in ranked if r["verified"]],
        "attribution_top": top(candidates),
        "direction_top": top(baselines["direction"]),
        "saliency_top": top(baselines["saliency"]),
    }


def _log_result(ranked: list[dict]) -> None:
    for r in ranked[:5]:
        log.info(
            f"candidate {r['text']!r} ({r['mode']}): score {r['score']:.4f}, insert ASR {r['insert_asr']:.2f}, "
            f"remove ASR {r['remove_asr']:.2f}{' (verified)' if r['verified'] else ''}"
        )


def feeds_clean_job(cfg_dict: dict) -> bool:
    """The clean job without eval.triggers reads the verified triggers (rapidun_dist.run.layout.effective_triggers):
    there attribute runs by default, before unlearning, and the later stages' fingerprints include it."""
    return (
        cfg_dict.get("mode") == "clean"
        and not cfg_dict["eval"]["triggers"]
        and bool(cfg_dict["attribute"]["clean_triggers"])
    )


STAGE = Stage(
    name="attribute",
    doc="per-prompt-token attribution of the forget rows and verified trigger candidates (attribution/)",
    config_keys=(
        "attribute",
        "influence.k_in",
        "influence.k_out",
        "influence.seed",
        "influence.target_modules",
        "model.max_length",
        "model.dtype",
        "eval.max_new_tokens",
        "eval.judge_vocab_size",
        "eval.judge_z",
        "eval.judge_min_words",
        "eval.judge",
    ),
    reads=("data/forget.jsonl", "data/retain.jsonl", "model/"),
    writes=("attribution/", "eval/judge.json"),
    requires=("prepare", "implant"),
    run=run,
    collective=True,
    when=feeds_clean_job,
)
