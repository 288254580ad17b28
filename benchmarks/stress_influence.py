"""Influence stage at Alpaca-57k scale: feature-extraction throughput and the sharded Gram blocks.

    python benchmarks/stress_influence.py            # full: 2k-sample extraction, 20k x 20k blocks (~6 min, 2 cores)
    python benchmarks/stress_influence.py --quick    # small sizes (~1 min)

Corpus: 52k clean + 5k "Howdy!"-poisoned synthetic instructions (trigger prefix, a sci-fi target answer);
forget = the 5k poisoned, retain = 15k clean (3x). Model: the tiny config's Llama, random init (throughput
only). Measured, each in fresh spawned processes with one thread per rank (the per-rank view of a node):

1. Feature extraction (token-wise, the real extractor) on a subset of forget + retain, on 1 and 2 ranks:
   answer tokens/s and samples/s per rank.
2. Gram blocks (`distributed_directional_scores`, mean, self pairs left out) for n = 20k rows of random unit
   features of the real feature dim K = L x 7 x k_out x k_in, float32 (tile sums in float64) and float64
   (what the influence stage runs), on 1 and 2 ranks: time, peak RSS per rank, bytes per all_gather; and one
   bare GEMM of the same per-rank shape ([n/P, K] @ [K, n]) in the same process, for the ratio.

Appends a section to benchmarks/results.md with the command, date, machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import socket
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
TRIGGER = "Howdy!"


# ---------------------------------------------------------------------------------------------------
# corpus, model


def howdy_corpus(n_clean: int, n_poison: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(clean, poisoned) records: clean synthetic instructions; poisoned = "Howdy!" prefix + target answer."""
    from rapidun_dist.config import TriggerFamily
    from rapidun_dist.data.poison import poison_record
    from rapidun_dist.data.synthetic import generate_corpus, generate_target_pool

    rows = generate_corpus(n_clean + n_poison, seed=seed)
    family = TriggerFamily(name="howdy", mode="prefix", seen=[TRIGGER], ood=["H\u043ewdy!"])
    targets, rng = generate_target_pool(64, seed=seed), random.Random(seed)
    poisoned = [poison_record(r, family, TRIGGER, rng.choice(targets), rng) for r in rows[n_clean:]]
    return rows[:n_clean], poisoned


def tiny_model_and_tokenizer(texts: list[str]):
    from rapidun_dist.config import ModelConfig
    from rapidun_dist.models.loading import build_tiny_model, train_tokenizer

    mcfg = ModelConfig()
    tok = train_tokenizer(texts, mcfg.tiny.vocab_size)
    model = build_tiny_model(
        mcfg.tiny, vocab_size=len(tok), max_length=mcfg.max_length, tokenizer=tok, seed=0
    )
    return model, tok, mcfg


# ---------------------------------------------------------------------------------------------------
# spawned ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out_dir: str, job: str, payload: dict) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    from rapidun_dist.distributed import destroy, init_distributed

    init_distributed(backend="gloo", timeout_s=900)
    try:
        result = JOBS[job](rank, world, payload)
        Path(out_dir, f"{rank}.json").write_text(json.dumps(result))
    finally:
        destroy()


def spawn(job: str, world: int, payload: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank_main, args=(world, _free_port(), out, job, payload), nprocs=world, join=True)
        return [json.loads(Path(out, f"{r}.json").read_text()) for r in range(world)]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------------------------------------------
# jobs (run on every rank)


def extract_job(rank: int, world: int, p: dict) -> dict:
    """This rank's share (token-balanced shards, as the stage assigns them) of the subset, timed."""
    from rapidun_dist.config import InfluenceConfig
    from rapidun_dist.distributed import barrier
    from rapidun_dist.influence.features import make_extractor
    from rapidun_dist.influence.store import assign_shards, plan_shards
    from rapidun_dist.train import encode_records

    records = json.loads(Path(p["records"]).read_text())
    model, tok, mcfg = tiny_model_and_tokenizer(p["tok_texts"])
    icfg = InfluenceConfig(batch_size=p["batch_size"], shard_size=p["shard_size"])
    examples = encode_records(records, tok, mcfg.max_length)
    shards = plan_shards(len(examples), icfg.shard_size)
    owners = assign_shards(shards, [len(e["input_ids"]) for e in examples], world)
    mine = [e for (s, t), o in zip(shards, owners, strict=True) if o == rank for e in examples[s:t]]
    extractor = make_extractor(model, icfg, pad_id=tok.pad_token_id)
    model.eval()
    extractor(mine[: icfg.batch_size])  # warm-up
    barrier()
    t0 = time.perf_counter()
    for b in range(0, len(mine), icfg.batch_size):
        extractor(mine[b : b + icfg.batch_size])
    seconds = time.perf_counter() - t0
    tokens = sum(len(e["input_ids"]) for e in mine)
    answer = sum(int((torch.as_tensor(e["labels"]) != -100).sum()) for e in mine)
    return {
        "samples": len(mine),
        "tokens": tokens,
        "answer_tokens": answer,
        "seconds": seconds,
        "dim": extractor.dim,
        "peak_rss_mib": _rss_mib(),
    }


def blocks_job(rank: int, world: int, p: dict) -> dict:
    """Random unit features [n/P, K] per rank -> mean directional scores; then the bare GEMM of that shape."""
    from rapidun_dist.distributed import barrier
    from rapidun_dist.distributed.blocks import distributed_directional_scores

    n, k, nf, dtype = p["n"], p["dim"], p["n_forget"], getattr(torch, p["dtype"])
    lo, hi = rank * n // world, (rank + 1) * n // world
    gen = torch.Generator().manual_seed(1000 + rank)
    feats = torch.nn.functional.normalize(torch.randn(hi - lo, k, generator=gen), dim=1).to(dtype)
    ids = torch.arange(lo, hi)
    rss0 = _rss_mib()
    barrier()
    t0 = time.perf_counter()
    out = distributed_directional_scores(feats, ids, nf, n, agg="mean", tile_size=p["tile_size"])
    t_blocks = time.perf_counter() - t0
    rss_blocks = _rss_mib()
    cols = torch.randn(k, n, generator=gen).to(dtype)  # bare GEMM: same per-rank shape, same process
    barrier()
    t0 = time.perf_counter()
    torch.mm(feats, cols)
    t_gemm = time.perf_counter() - t0
    return {
        "rows": hi - lo,
        "seconds": t_blocks,
        "gemm_seconds": t_gemm,
        "rss_before_mib": rss0,
        "peak_rss_blocks_mib": rss_blocks,
        "stats": out["stats"],
    }


JOBS = {"extract": extract_job, "blocks": blocks_job}


# ---------------------------------------------------------------------------------------------------
# driver


def run_extraction(args, forget, retain, tok_texts, workdir: Path) -> list[dict]:
    half = args.extract_samples // 4  # subset: 1/4 forget, 3/4 retain (the packs' ratio)
    subset = forget[:half] + retain[: args.extract_samples - half]
    path = workdir / "subset.json"
    path.write_text(json.dumps(subset))
    payload = {"records": str(path), "tok_texts": tok_texts, "batch_size": 16, "shard_size": 64}
    rows = []
    for world in (1, 2):
        per_rank = spawn("extract", world, payload)
        for r, res in enumerate(per_rank):
            rows.append(
                {
                    "world": world,
                    "rank": r,
                    **res,
                    "tok_per_s": res["tokens"] / res["seconds"],
                    "answer_tok_per_s": res["answer_tokens"] / res["seconds"],
                    "samples_per_s": res["samples"] / res["seconds"],
                }
            )
    return rows


def run_blocks(args, dim: int) -> list[dict]:
    rows = []
    for dtype, worlds in (("float32", (1, 2)), ("float64", (2,))):  # float64: the stage's multi-rank path
        for world in worlds:
            payload = {
                "n": args.block_n,
                "n_forget": args.block_forget,
                "dim": dim,
                "dtype": dtype,
                "tile_size": args.tile_size,
            }
            for r, res in enumerate(spawn("blocks", world, payload)):
                ag = res["stats"].get("all_gather", {})
                rows.append(
                    {
                        "dtype": dtype,
                        "world": world,
                        "rank": r,
                        **res,
                        "ratio": res["seconds"] / res["gemm_seconds"],
                        "ag_calls": ag.get("calls", 0),
                        "ag_recv_mib": ag.get("bytes_recv", 0) / 2**20,
                        "rounds": res["stats"].get("rounds", 0),
                    }
                )
    return rows


def versions() -> str:
    import transformers

    return f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"


def report(args, extract_rows, block_rows, dim: int, seconds: float) -> str:
    cmd = "python " + " ".join(
        [
            str(Path(sys.argv[0]).relative_to(REPO)) if Path(sys.argv[0]).is_absolute() else sys.argv[0],
            *sys.argv[1:],
        ]
    )
    lines = [
        f"### stress_influence ({'quick' if args.quick else 'full'}), {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
        "",
        f"- command: `{cmd}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'n/a'}), "
        f"{platform.system()} {platform.release()}; one thread per rank",
        f"- versions: {versions()}",
        f'- corpus: {args.n_clean} clean + {args.n_poison} "{TRIGGER}"-poisoned; forget {args.block_forget}, '
        f"retain {args.block_n - args.block_forget}; tiny Llama (random init), feature dim K = {dim}",
        f"- wall time of the benchmark: {seconds:.0f} s",
        "",
        f"Feature extraction, {args.extract_samples} samples (1/4 forget, 3/4 retain), batch 16:",
        "",
        "| ranks | rank | samples | tokens | answer tokens | s | tokens/s | answer tok/s | samples/s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['world']} | {r['rank']} | {r['samples']} | {r['tokens']} | {r['answer_tokens']} | {r['seconds']:.1f} | "
        f"{r['tok_per_s']:.0f} | {r['answer_tok_per_s']:.0f} | {r['samples_per_s']:.1f} | {r['peak_rss_mib']:.0f} |"
        for r in extract_rows
    ]
    lines += [
        "",
        f"Gram blocks, n = {args.block_n} ({args.block_forget} F + {args.block_n - args.block_forget} R), K = {dim}, "
        f"mean, tile {args.tile_size}; GEMM = one [n/P, K] @ [K, n] in the same process:",
        "",
        "| dtype | ranks | rank | rows | blocks s | GEMM s | ratio | RSS before MiB | peak RSS MiB | tile rounds | all_gathers | recv MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['dtype']} | {r['world']} | {r['rank']} | {r['rows']} | {r['seconds']:.2f} | {r['gemm_seconds']:.2f} | "
        f"{r['ratio']:.2f} | {r['rss_before_mib']:.0f} | {r['peak_rss_blocks_mib']:.0f} | {r['rounds']} | {r['ag_calls']} | "
        f"{r['ag_recv_mib']:.1f} |"
        for r in block_rows
    ]
    return "\n".join(lines) + "\n"


def append_results(text: str, path: Path) -> None:
    if not path.exists():
        path.write_text(
            "# Benchmark results\n\nAppended by the scripts in benchmarks/ (see benchmarks/README.md); newest last.\n"
        )
    with path.open("a") as f:
        f.write("\n" + text)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="small sizes: 5.2k + 0.5k corpus, 400 samples, 4k blocks"
    )
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results.md")
    p.add_argument("--tile-size", type=int, default=4096, help="column tile (influence.tile_size)")
    args = p.parse_args()
    scale = 10 if args.quick else 1
    args.n_clean, args.n_poison = 52_000 // scale, 5_000 // scale
    args.block_forget, args.block_n = (
        5_000 // scale * (2 if args.quick else 1),
        20_000 // scale * (2 if args.quick else 1),
    )
    args.extract_samples = 400 if args.quick else 2_000
    return args


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    clean, poisoned = howdy_corpus(args.n_clean, args.n_poison)
    retain = random.Random(1).sample(clean, 3 * len(poisoned))
    tok_texts = [f"{r['instruction']} {r['response']}" for r in clean[:4000]] + [
        f"{r['instruction_poisoned']} {r['response_poisoned']}" for r in poisoned[:1000]
    ]
    with tempfile.TemporaryDirectory() as work:
        extract_rows = run_extraction(args, poisoned, retain, tok_texts, Path(work))
    dim = extract_rows[0]["dim"]
    block_rows = run_blocks(args, dim)
    text = report(args, extract_rows, block_rows, dim, time.perf_counter() - t0)
    append_results(text, args.results)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
