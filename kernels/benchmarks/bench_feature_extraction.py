"""Benchmark whole per-sample feature extraction: token-wise vs the RapidIn-style RapidGrad baseline.

Both go through `rapidun_dist.influence.features.make_extractor` on the implanted tiny model of a run
directory, on the same rows (forget + retain packs, topped up with train rows), timed side by side
(interleaved repeats, median):

- tokenwise: one batched forward + backward with hooks, then the fused token projection per layer;
- rapidgrad: one forward + backward per sample, the flattened weight gradient of the same layers
  normalized per tensor, OPORP-sketched into K bins (a faithful RapidIn-style implementation).

Throughput is in answer tokens per second (the tokens whose gradients enter the features). The poison
retrieval AUROC/AP of both estimators (`rapidun_dist.influence.retrieval.poison_retrieval`) is reported too.

    python kernels/benchmarks/bench_feature_extraction.py --quick --json   # ~1 min: builds a small run dir
    python kernels/benchmarks/bench_feature_extraction.py                  # configs/tiny_cpu.yaml defaults
    python kernels/benchmarks/bench_feature_extraction.py --run-dir runs/tiny_cpu   # reuse an implanted run
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import hardware  # noqa: E402

from rapidun_dist.config import load_config  # noqa: E402
from rapidun_dist.influence.features import answer_positions, make_extractor  # noqa: E402
from rapidun_dist.influence.retrieval import poison_retrieval  # noqa: E402
from rapidun_dist.io import read_jsonl  # noqa: E402
from rapidun_dist.models.loading import load_saved  # noqa: E402
from rapidun_dist.pipeline import run_pipeline  # noqa: E402
from rapidun_dist.train import encode_records  # noqa: E402

QUICK_OVERRIDES = ["data.n_synthetic=1500", "implant.epochs=2"]
ESTIMATORS = ("tokenwise", "rapidgrad")


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
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, same for both paths (default 1: on a shared 2-core machine more threads "
        "oversubscribe and both timings swing 5-10x; 0 = torch's default)",
    )
    return ap.parse_args(argv)


def build_run(args):
    """The config and implanted run dir: `--run-dir` reused, else built in-process (prepare, implant)."""
    if args.run_dir and (Path(args.run_dir) / "config.yaml").exists():
        cfg = load_config(Path(args.run_dir) / "config.yaml", [f"run_dir={args.run_dir}"])
    else:
        default_dir = "runs/bench_features_quick" if args.quick else "runs/bench_features"
        overrides = (QUICK_OVERRIDES if args.quick else []) + [f"run_dir={args.run_dir or default_dir}"]
        cfg = load_config(args.config, overrides)
    return cfg, run_pipeline(cfg, ["prepare", "implant"])


def bench_rows(rd, n_rows: int) -> list[dict]:
    """forget + retain packs, topped up with train rows not in them, `n_rows` in all (at least the packs)."""
    packs = read_jsonl(rd.data / "forget.jsonl") + read_jsonl(rd.data / "retain.jsonl")
    seen = {r["id"] for r in packs}
    extra = [r for r in read_jsonl(rd.data / "train.jsonl") if r["id"] not in seen]
    return packs + extra[: max(0, n_rows - len(packs))]


def answer_tokens(examples: list[dict]) -> int:
    return sum(int(answer_positions(torch.tensor([e["labels"]])).sum()) for e in examples)


def run_once(extractor, examples: list[dict], batch_size: int) -> float:
    t0 = time.perf_counter()
    for s in range(0, len(examples), batch_size):
        extractor(examples[s : s + batch_size])
    return time.perf_counter() - t0


def time_estimators(model, tok, cfg, examples: list[dict], repeat: int) -> dict[str, float]:
    """Median seconds per full pass, per estimator, with interleaved repeats (after one warm-up batch each)."""
    extractors = {
        e: make_extractor(model, replace(cfg.influence, estimator=e), pad_id=tok.pad_token_id)
        for e in ESTIMATORS
    }
    for ex in extractors.values():
        ex(examples[: cfg.influence.batch_size])
    times: dict[str, list[float]] = {e: [] for e in ESTIMATORS}
    for _ in range(repeat):
        for name, ex in extractors.items():
            times[name].append(run_once(ex, examples, cfg.influence.batch_size))
    return {e: statistics.median(t) for e, t in times.items()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_rows, repeat = args.rows or (128 if args.quick else 512), args.repeat or (3 if args.quick else 5)
    max_train = args.max_train or (200 if args.quick else 600)
    cfg, rd = build_run(args)
    model, tok = load_saved(Path(args.model_dir) if args.model_dir else rd.model, cfg.model)
    model.eval()
    examples = encode_records(bench_rows(rd, n_rows), tok, cfg.model.max_length)
    n_tok = answer_tokens(examples)
    secs = time_estimators(model, tok, cfg, examples, repeat)
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
        "hardware": hardware(torch.device("cpu")),
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
        "fused_seconds": secs["tokenwise"],
        "rapidgrad_seconds": secs["rapidgrad"],
        "fused_tokens_per_s": n_tok / secs["tokenwise"],
        "rapidgrad_tokens_per_s": n_tok / secs["rapidgrad"],
        "speedup": secs["rapidgrad"] / secs["tokenwise"],
        "auroc_tokenwise": retr["tokenwise"]["auroc"],
        "auroc_rapidgrad": retr["rapidgrad"]["auroc"],
        "ap_tokenwise": retr["tokenwise"]["ap"],
        "ap_rapidgrad": retr["rapidgrad"]["ap"],
        "retrieval_n_train": retr["tokenwise"]["n_train"],
        "retrieval_n_poisoned": retr["tokenwise"]["n_poisoned"],
        "retrieval_n_forget": len(forget),
        "retrieval_seconds_tokenwise": retr["tokenwise"]["seconds"],
        "retrieval_seconds_rapidgrad": retr["rapidgrad"]["seconds"],
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
    print(f"{'estimator':<11}{'seconds':>9}{'tokens/s':>11}{'AUROC':>8}{'AP':>8}")
    for name, key in (("tokenwise", "fused"), ("rapidgrad", "rapidgrad")):
        print(
            f"{name:<11}{r[key + '_seconds']:>9.3f}{r[key + '_tokens_per_s']:>11.0f}"
            + (f"{r['auroc_' + name]:>8.3f}{r['ap_' + name]:>8.3f}" if r["auroc_" + name] is not None else "")
        )
    print(f"speedup (tokens/s, tokenwise over rapidgrad): {r['speedup']:.1f}x")


if __name__ == "__main__":
    main()
