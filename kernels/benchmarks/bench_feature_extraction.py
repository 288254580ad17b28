"""Benchmark whole per-sample feature extraction: token-wise vs the RapidIn-style RapidGrad baseline vs the floor.

All three run on the same rows (forget + retain packs, topped up with train rows) of a run directory,
with the implanted model or `--model-dir`, timed side by side (interleaved repeats, median):

- tokenwise: `make_extractor` with hooks: one batched forward + backward, the projection at hook time;
- rapidgrad: one forward + backward per sample, each tracked weight's gradient normalized and sketched
  (hashed OPORP into K bins) as it is produced: a faithful RapidIn-style implementation;
- floor: the same batched forward + backward with frozen parameters and no hooks
  (`features.answer_loss_backward`): what token-wise features cannot be cheaper than.

Throughput is in answer tokens per second (the tokens whose gradients enter the features). Memory:
`peak_extra_bytes_per_token` = (peak allocation of a token-wise pass - peak of the floor pass on the same
batch) / its answer tokens, the largest over the batches (torch's allocation events from the profiler on
CPU, `max_memory_allocated` on CUDA), next to the bound of issue 12, 2 x sum over layers of
(k_in + k_out) x 4 bytes plus the per-sample sums. The poison retrieval AUROC/AP of both estimators
(`rapidun_dist.evaluation.retrieval.poison_retrieval`) is reported when the model is the implanted one.

    python kernels/benchmarks/bench_feature_extraction.py --quick --json   # ~1 min: builds a small run dir
    python kernels/benchmarks/bench_feature_extraction.py                  # configs/tiny_cpu.yaml defaults
    python kernels/benchmarks/bench_feature_extraction.py --run-dir runs/tiny_cpu   # reuse an implanted run
    python kernels/benchmarks/bench_feature_extraction.py --run-dir runs/tiny_cpu --model-dir MODEL \
        --rows 8 --repeat 1 --json                                           # a bigger saved model (SmolLM2)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from rapidun_dist.cli.experiments.perf import hardware
from rapidun_dist.config import load_config
from rapidun_dist.core.io import read_jsonl
from rapidun_dist.data.prompt import pad_batch
from rapidun_dist.evaluation.retrieval import poison_retrieval
from rapidun_dist.influence.features import (
    answer_loss_backward,
    answer_positions,
    make_extractor,
)
from rapidun_dist.models.loading import load_saved
from rapidun_dist.pipeline import run_pipeline
from rapidun_dist.training.finetune import encode_records

QUICK_OVERRIDES = ["data.n_synthetic=1500", "implant.epochs=2"]
ESTIMATORS = ("tokenwise", "rapidgrad")
PASSES = (*ESTIMATORS, "floor")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="small run dir (n_synthetic=1500, 2 epochs), fewer rows"
    )
    ap.add_argument("--json", action="store_true", help="end with one JSON line of the headline numbers")
    ap.add_argument("--run-dir", help="reuse this run dir (prepare + implant are skipped when done)")
    ap.add_argument("--config", default="configs/tiny_cpu.yaml")
    ap.add_argument(
        "--model-dir",
        help="throughput only, on this saved HF model (e.g. a bigger one) with --run-dir's data; no retrieval "
        "(the model is not the implanted one)",
    )
    ap.add_argument(
        "--rows", type=int, help="rows to extract (forget + retain + train); default 128 quick, 512"
    )
    ap.add_argument("--repeat", type=int, help="timed repeats per estimator; default 3 quick, 5")
    ap.add_argument("--max-train", type=int, help="train rows for poison retrieval; default 200 quick, 600")
    ap.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    ap.add_argument(
        "--rapidgrad-cache-mib",
        type=int,
        help="RapidGrad's budget for cached hash codes (default: features.CODE_CACHE_BYTES; 0 = hash every "
        "element on the fly, as at 7B scale where the codes never fit)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, same for both paths (default 1: on a shared 2-core machine more threads "
        "oversubscribe and both timings swing 5-10x; 0 = torch's default)",
    )
    return ap.parse_args(argv)


def build_run(args):
    """The config and run dir: `--run-dir` reused, else built in-process (prepare, and implant unless the
    model comes from `--model-dir`)."""
    if args.run_dir and (Path(args.run_dir) / "config.yaml").exists():
        cfg = load_config(Path(args.run_dir) / "config.yaml", [f"run_dir={args.run_dir}"])
    else:
        default_dir = "runs/bench_features_quick" if args.quick else "runs/bench_features"
        overrides = (QUICK_OVERRIDES if args.quick else []) + [f"run_dir={args.run_dir or default_dir}"]
        cfg = load_config(args.config, overrides)
    return cfg, run_pipeline(cfg, ["prepare"] if args.model_dir else ["prepare", "implant"])


class FloorPass:
    """The bare batched forward + backward the token-wise extractor rides on: frozen parameters, no hooks."""

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id

    def __call__(self, examples: list[dict]) -> None:
        dev = next(self.model.parameters()).device
        batch = pad_batch(examples, self.pad_id)
        answer = answer_positions(batch["labels"])
        answer_loss_backward(self.model, {k: v.to(dev) for k, v in batch.items()}, answer)


def bench_rows(rd, n_rows: int) -> list[dict]:
    """The first `n_rows` of the forget + retain packs, topped up with train rows not in them."""
    packs = read_jsonl(rd.data / "forget.jsonl") + read_jsonl(rd.data / "retain.jsonl")
    seen = {r["id"] for r in packs}
    extra = [r for r in read_jsonl(rd.data / "train.jsonl") if r["id"] not in seen]
    return (packs + extra)[:n_rows]


def answer_tokens(examples: list[dict]) -> int:
    return sum(int(answer_positions(torch.tensor([e["labels"]])).sum()) for e in examples)


def batches(examples: list[dict], batch_size: int) -> list[list[dict]]:
    """Length-sorted batches (as the influence stage forms them: less padding)."""
    order = sorted(examples, key=lambda e: len(e["input_ids"]))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(fn, groups: list[list[dict]], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for group in groups:
        fn(group)
    sync(device)
    return time.perf_counter() - t0


def make_passes(model, tok, cfg, rapidgrad_cache_mib: int | None = None) -> dict:
    out = {
        e: make_extractor(model, replace(cfg.influence, estimator=e), pad_id=tok.pad_token_id)
        for e in ESTIMATORS
    }
    if rapidgrad_cache_mib is not None:
        out["rapidgrad"].cache_bytes = rapidgrad_cache_mib << 20
    return out | {"floor": FloorPass(model, tok.pad_token_id)}


def time_passes(passes: dict, groups: list[list[dict]], repeat: int, device) -> dict[str, float]:
    """Median seconds per full pass over the rows, per path, interleaved repeats after one warm-up batch each."""
    for fn in passes.values():
        fn(groups[0])
    times: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(repeat):
        for name, fn in passes.items():
            times[name].append(run_once(fn, groups, device))
    return {name: statistics.median(t) for name, t in times.items()}


def peak_bytes(fn, device: torch.device) -> int:
    """Peak bytes allocated by torch while fn runs, above what was allocated when it started."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for ev in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += ev.self_cpu_memory_usage  # allocations minus frees attributed to this op itself
        peak = max(peak, current)
    return peak


def memory_per_token(passes: dict, groups: list[list[dict]], device, extractor) -> dict:
    """The largest (token-wise peak - floor peak) / answer tokens over the batches, and the issue-12 bound."""
    k_sum = sum(p_in.shape[0] + p_out.shape[0] for p_in, p_out in extractor.proj.values())
    kk_sum = sum(p_in.shape[0] * p_out.shape[0] for p_in, p_out in extractor.proj.values())
    worst, bound = 0.0, 0.0
    for group in groups:
        tokens = max(answer_tokens(group), 1)
        extra = peak_bytes(lambda g=group: passes["tokenwise"](g), device) - peak_bytes(
            lambda g=group: passes["floor"](g), device
        )
        if extra / tokens >= worst:
            worst, bound = extra / tokens, 2 * k_sum * 4 + len(group) * kk_sum * 4 / tokens
    return {"peak_extra_bytes_per_token": worst, "memory_bound_bytes_per_token": bound}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_rows, repeat = args.rows or (128 if args.quick else 512), args.repeat or (3 if args.quick else 5)
    max_train = args.max_train or (200 if args.quick else 600)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg, rd = build_run(args)
    model, tok = load_saved(Path(args.model_dir) if args.model_dir else rd.model, cfg.model)
    model.to(device).eval()
    examples = encode_records(bench_rows(rd, n_rows), tok, cfg.model.max_length)
    n_tok = answer_tokens(examples)
    groups = batches(examples, cfg.influence.batch_size)
    passes = make_passes(model, tok, cfg, args.rapidgrad_cache_mib)
    secs = time_passes(passes, groups, repeat, device)
    memory = memory_per_token(passes, groups, device, passes["tokenwise"])
    train, forget = read_jsonl(rd.data / "train.jsonl"), read_jsonl(rd.data / "forget.jsonl")
    none = {"auroc": None, "ap": None, "n_train": 0, "n_poisoned": 0, "seconds": 0.0}
    retr = {
        e: none
        if args.model_dir
        else poison_retrieval(model, tok, cfg, train, forget, estimator=e, max_train=max_train)
        for e in ESTIMATORS
    }
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "hardware": hardware(device),
        "torch": torch.__version__,
        "run_dir": str(rd.root),
        "model": str(args.model_dir or rd.model),
        "rows": len(examples),
        "answer_tokens": n_tok,
        "repeat": repeat,
        "batch_size": cfg.influence.batch_size,
        "k_in": cfg.influence.k_in,
        "k_out": cfg.influence.k_out,
        "rapidgrad_k": cfg.influence.rapidgrad_k,
        "rapidgrad_cache_bytes": passes["rapidgrad"].cache_bytes,
        "fused_seconds": secs["tokenwise"],
        "rapidgrad_seconds": secs["rapidgrad"],
        "floor_seconds": secs["floor"],
        "speedup": secs["rapidgrad"] / secs["tokenwise"],
        "fused_over_floor": secs["floor"] / secs["tokenwise"],
        **memory,
        "auroc_tokenwise": retr["tokenwise"]["auroc"],
        "auroc_rapidgrad": retr["rapidgrad"]["auroc"],
        "ap_tokenwise": retr["tokenwise"]["ap"],
        "ap_rapidgrad": retr["rapidgrad"]["ap"],
        "retrieval_n_train": retr["tokenwise"]["n_train"],
        "retrieval_n_poisoned": retr["tokenwise"]["n_poisoned"],
        "retrieval_n_forget": len(forget),
        "retrieval_seconds_tokenwise": retr["tokenwise"]["seconds"],
        "retrieval_seconds_rapidgrad": retr["rapidgrad"]["seconds"],
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "fused_tokens_per_s": n_tok / secs["tokenwise"],
        "rapidgrad_tokens_per_s": n_tok / secs["rapidgrad"],
        "floor_tokens_per_s": n_tok / secs["floor"],
        "peak_extra_bytes_per_token": memory["peak_extra_bytes_per_token"],
    }
    print_table(result)
    if args.json:
        print(json.dumps(result))
    return result


def print_table(r: dict) -> None:
    print(
        f"{r['hardware']} | torch {r['torch']} | {r['rows']} rows, {r['answer_tokens']} answer tokens, "
        f"median of {r['repeat']}"
    )
    print(f"{'path':<11}{'seconds':>9}{'tokens/s':>11}{'AUROC':>8}{'AP':>8}")
    for name, key in (("tokenwise", "fused"), ("rapidgrad", "rapidgrad"), ("floor", "floor")):
        auroc = r.get("auroc_" + name)
        print(
            f"{name:<11}{r[key + '_seconds']:>9.3f}{r[key + '_tokens_per_s']:>11.1f}"
            + (f"{auroc:>8.3f}{r['ap_' + name]:>8.3f}" if auroc is not None else "")
        )
    print(
        f"tokenwise: {r['fused_over_floor']:.2f}x the floor's tokens/s, {r['speedup']:.1f}x rapidgrad's; "
        f"extra memory {r['peak_extra_bytes_per_token']:.0f} B/token (bound {r['memory_bound_bytes_per_token']:.0f})"
    )


if __name__ == "__main__":
    main()
