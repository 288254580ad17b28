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
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.io import write_json, write_jsonl, write_text
from rapidun_dist.logging import get_logger
from rapidun_dist.rundir import RunDir
from rapidun_dist.stages.base import Stage

log = get_logger("attribute")
OUT = "attribution"


def _share(n: int, rank: int, world: int) -> range:
    return range(rank * n // world, (rank + 1) * n // world)


def _direction(cfg: RunConfig, ext, tok, forget_rows, retain: list[dict], info) -> torch.Tensor:
    """Mean forget - mean retain prompt-position feature, from per-rank sums (one all_reduce)."""
    from rapidun_dist.attribution.scores import contrast_direction, feature_sum
    from rapidun_dist.train import encode_records

    a = cfg.attribute
    mine_f = [forget_rows[i].example for i in _share(len(forget_rows), info.rank, info.world_size)]
    mine_r = encode_records([retain[i] for i in _share(len(retain), info.rank, info.world_size)], tok, cfg.model.max_length)
    sums = torch.stack([feature_sum(ext, mine_f, a.batch_size), feature_sum(ext, mine_r, a.batch_size)])
    sums = dist_env.all_reduce_sum(sums)
    return contrast_direction(sums[0], len(forget_rows), sums[1], len(retain))


def token_rows(cfg: RunConfig, model, tok, forget: list[dict], retain: list[dict], info) -> list[dict]:
    """Per forget row (every row, on every rank): {index, id, tokens, content, scores, saliency}."""
    from rapidun_dist.attribution.scores import (
        attribution_extractor,
        encode_forget_rows,
        input_saliency,
        token_attribution,
    )

    rows = encode_forget_rows(tok, forget, cfg.model.max_length)
    ext = attribution_extractor(model, cfg.influence, pad_id=tok.pad_token_id)
    direction = _direction(cfg, ext, tok, rows, retain, info)
    mine = list(_share(len(rows), info.rank, info.world_size))
    scores = token_attribution(ext, [rows[i] for i in mine], direction, cfg.attribute.batch_size)
    sal = input_saliency(model, [rows[i] for i in mine], pad_id=tok.pad_token_id, batch_size=cfg.attribute.batch_size)
    local = [
        {"index": i, "id": forget[i]["id"], "tokens": rows[i].texts, "content": rows[i].content, "scores": s,
         "saliency": g}
        for i, s, g in zip(mine, scores, sal, strict=True)
    ]  # fmt: skip
    gathered = [r for part in dist_env.all_gather_object(local) for r in part]
    return sorted(gathered, key=lambda r: r["index"])


def _shared_judge(cfg: RunConfig, rd: RunDir):
    from rapidun_dist.evaluation import Judge
    from rapidun_dist.stages.common import load_or_fit_judge

    state = load_or_fit_judge(cfg, rd).to_dict() if dist_env.rank() == 0 else None
    return Judge.from_dict(dist_env.broadcast_object(state, src=0) if dist_env.world_size() > 1 else state)


def run(cfg: RunConfig, rd: RunDir) -> list[Path]:
    from rapidun_dist.attribution.ngrams import rank_candidates
    from rapidun_dist.attribution.report import render_report
    from rapidun_dist.attribution.verify import VerifySettings, rank_verified, verify_candidates
    from rapidun_dist.models.loading import load_saved
    from rapidun_dist.stages.influence import load_packs

    info = dist_env.init_distributed(config=cfg.distributed)
    a = cfg.attribute
    forget, retain = load_packs(rd)
    model, tok = load_saved(rd.model, cfg.model, device=info.device)
    model.eval()
    rows = token_rows(cfg, model, tok, forget, retain, info)
    candidates = rank_candidates(rows, n_max=a.n_max, min_rows=a.min_rows)
    baseline = rank_candidates(rows, n_max=a.n_max, min_rows=a.min_rows, score_key="saliency")
    log.info(f"{len(candidates)} candidates from {len(rows)} forget rows; verifying the top {a.top_k}")
    settings = VerifySettings(
        n_verify=a.n_verify, threshold=a.verify_asr, max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size, max_prompt_length=cfg.model.max_length, seed=a.seed,
    )  # fmt: skip
    judge = _shared_judge(cfg, rd)
    results, base = verify_candidates(
        model, tok, judge, candidates[: a.top_k], clean=retain, forget=forget, settings=settings,
        sharded=info.world_size > 1,
    )  # fmt: skip
    ranked = rank_verified(results)
    out = rd.sub(OUT)
    paths = [out / n for n in ("triggers.json", "tokens.jsonl", "summary.json", "report.md")]
    if info.rank == 0:
        summary = _summary(cfg, rows, candidates, baseline, ranked, base)
        write_json(paths[0], ranked)
        write_jsonl(paths[1], rows)
        write_json(paths[2], summary)
        write_text(paths[3], render_report(rows, ranked, summary, n_rows=a.report_rows))
        _log_result(ranked)
    dist_env.barrier()
    return paths


def _summary(cfg: RunConfig, rows, candidates, baseline, ranked, base: dict) -> dict:
    a = cfg.attribute
    top = [{"key": c.key, "text": c.text, "score": c.score, "rows": c.rows} for c in candidates[: a.top_k]]
    sal = [{"key": c.key, "text": c.text, "score": c.score, "rows": c.rows} for c in baseline[: a.top_k]]
    return {
        "n_forget": len(rows),
        "n_candidates": len(candidates),
        "settings": {k: getattr(a, k) for k in ("top_k", "n_max", "min_rows", "n_verify", "verify_asr")},
        "base": base,
        "verified": [{"text": r["text"], "mode": r["mode"]} for r in ranked if r["verified"]],
        "attribution_top": top,
        "saliency_top": sal,
    }


def _log_result(ranked: list[dict]) -> None:
    for r in ranked[:5]:
        log.info(
            f"candidate {r['text']!r} ({r['mode']}): score {r['score']:.4f}, insert ASR {r['insert_asr']:.2f}, "
            f"remove ASR {r['remove_asr']:.2f}{' (verified)' if r['verified'] else ''}"
        )


def feeds_clean_job(cfg_dict: dict) -> bool:
    """The clean job without eval.triggers reads the verified triggers (rapidun_dist.stages.common.effective_triggers):
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
    ),
    reads=("data/forget.jsonl", "data/retain.jsonl", "model/"),
    writes=("attribution/", "eval/judge.json"),
    requires=("prepare", "implant"),
    run=run,
    collective=True,
    when=feeds_clean_job,
)
