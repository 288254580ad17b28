"""Influence stage at Alpaca-57k scale: feature-extraction throughput and the sharded Gram blocks.

    python benchmarks/stress_influence.py                  # full: extraction, 20k x 20k blocks, 16-rank blocks
    python benchmarks/stress_influence.py --quick --json   # blocks only: 16 gloo ranks, 2D vs all_gather

Corpus: 52k clean + 5k "Howdy!"-poisoned synthetic instructions (trigger prefix, a sci-fi target answer);
forget = the 5k poisoned, retain = 15k clean (3x). Model: the tiny config's Llama, random init (throughput
only). Measured, each in fresh spawned processes with one thread per rank (the per-rank view of a node):

1. Feature extraction (token-wise, the real extractor) on a subset of forget + retain, on 1 and 2 ranks:
   answer tokens/s and samples/s per rank.
2. Gram blocks (`distributed_directional_scores`, mean, self pairs left out) for n = 20k rows of random unit
   features of the real feature dim K = L x 7 x k_out x k_in, float32 (tile sums in float64) and float64
   (what the influence stage runs), on 1 and 2 ranks: time, peak RSS per rank, bytes per all_gather; and one
   bare GEMM of the same per-rank shape ([n/P, K] @ [K, n]) in the same process, for the ratio.

3. 2D blocks against all_gather (`--ranks`, default 16 CPU gloo processes; `--quick` runs only this):
   median_topk directional scores of n rows (forget then retain) of random features with hubs, K as in 2.,
   float64, contiguous even shards as the stage assigns them; once through the tiled all_gather path and
   once through the 2D block decomposition (grid chosen automatically), plus the mean through the linear
   identity. Per rank: bytes received (counted by the collective wrappers, every collective included),
   seconds; the scores of the two paths against each other and against the dense single-process oracle.
   `--json` ends the output with one JSON line:
   {"ranks", "agg", "recv_bytes_per_rank": {"allgather": A, "alltoall2d": B}, "max_abs_diff": D, ...}
   with A and B the maximum over ranks; target at P = 16: B <= 0.6 A.

Its section (the command, date, machine and versions, then the tables) becomes the current `stress_influence_full`
or `stress_influence_quick` one of benchmarks/results.md (the one it replaces goes to results_archive.md);
`--results FILE` appends it to FILE instead.
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
from datetime import UTC, datetime
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
    from rapidun_dist.training.finetune import encode_records

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
    from rapidun_dist.influence.gram.blocks import distributed_directional_scores

    n, k, nf, dtype = p["n"], p["dim"], p["n_forget"], getattr(torch, p["dtype"])
    lo, hi = rank * n // world, (rank + 1) * n // world
    gen = torch.Generator().manual_seed(1000 + rank)
    feats = torch.nn.functional.normalize(torch.randn(hi - lo, k, generator=gen), dim=1).to(dtype)
    ids = torch.arange(lo, hi)
    rss0 = _rss_mib()
    barrier()
    t0 = time.perf_counter()
    out = distributed_directional_scores(
        feats, ids, nf, n, agg="mean", method=p["method"], tile_size=p["tile_size"]
    )
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


def clustered_features(n: int, k: int, n_forget: int, seed: int) -> torch.Tensor:
    """[n, k] float64 with hubs, so that median_topk is not all zeros: forget rows around one direction c
    with spreads from 0.3 to 3 (the tight ones sit in almost every column's top-k), retain rows diffuse
    plus a varying share of a second direction and of c (the strongly shifted ones are retain hubs)."""
    gen = torch.Generator().manual_seed(seed)
    c, d = torch.randn(2, k, generator=gen, dtype=torch.float64)
    spread = torch.linspace(0.3, 3.0, n_forget, dtype=torch.float64)[torch.randperm(n_forget, generator=gen)]
    f = c + spread.unsqueeze(1) * torch.randn(n_forget, k, generator=gen, dtype=torch.float64)
    share = 2.0 * torch.rand(n - n_forget, 1, generator=gen, dtype=torch.float64)
    r = torch.randn(n - n_forget, k, generator=gen, dtype=torch.float64) + share * (0.5 * c + d)
    return torch.cat([f, r])


def grid_job(rank: int, world: int, p: dict) -> dict:
    """Directional scores of this rank's contiguous rows through each method; bytes and seconds per method."""
    from rapidun_dist.distributed import barrier
    from rapidun_dist.influence.gram import gather_scores_to_rank0
    from rapidun_dist.influence.gram.blocks import distributed_directional_scores

    n, nf = p["n"], p["n_forget"]
    lo, hi = rank * n // world, (rank + 1) * n // world
    feats = clustered_features(n, p["dim"], nf, p["seed"])[lo:hi].clone()
    ids = torch.arange(lo, hi)
    out = {}
    runs = (("median_topk", "allgather"), ("median_topk", "alltoall2d"), ("mean", "linear"))
    for agg, method in runs + (("trimmed_mean", "alltoall2d"),):
        barrier()
        t0 = time.perf_counter()
        res = distributed_directional_scores(
            feats,
            ids,
            nf,
            n,
            agg=agg,
            topk=p["topk"],
            trim=0.1,
            method=method,
            tile_size=p["tile_size"],
            backend="torch",
        )
        seconds = time.perf_counter() - t0
        full = gather_scores_to_rank0({k: res[k] for k in ("self_score", "cross_score")}, ids, n)
        key = f"{agg}/{method}"
        out[key] = {"seconds": seconds, "stats": res["stats"], "peak_rss_mib": _rss_mib()}
        if full is not None:
            out[key]["scores"] = {k: v.tolist() for k, v in full.items()}
    return out


JOBS = {"extract": extract_job, "blocks": blocks_job, "grid": grid_job}


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
    from rapidun_dist.distributed import total_recv_bytes

    rows = []
    runs = [("allgather", "float32", 1), ("allgather", "float32", 2), ("allgather", "float64", 2)]
    runs.append(("linear", "float64", 2))  # the default mean path now: no tile at all
    for method, dtype, world in runs:
        payload = {
            "n": args.block_n,
            "n_forget": args.block_forget,
            "dim": dim,
            "dtype": dtype,
            "tile_size": args.tile_size,
            "method": method,
        }
        for r, res in enumerate(spawn("blocks", world, payload)):
            rows.append(
                {
                    "method": method,
                    "dtype": dtype,
                    "world": world,
                    "rank": r,
                    **res,
                    "ratio": res["seconds"] / res["gemm_seconds"],
                    "recv_mib": total_recv_bytes(res["stats"]) / 2**20,
                    "rounds": res["stats"].get("rounds", 0),
                }
            )
    return rows


def _max_diff(a: dict, b: dict) -> float:
    return max(
        float((torch.tensor(a[k], dtype=torch.float64) - torch.tensor(b[k], dtype=torch.float64)).abs().max())
        for k in a
    )


def _nonzero(scores: dict) -> float:
    v = torch.cat([torch.tensor(x) for x in scores.values()])
    return float((v != 0).double().mean())


def _dense_diff(args, dim: int, scores: dict, agg: str) -> float:
    from rapidun_dist.influence.scores import dense_directional_scores, split_directional

    g = clustered_features(args.grid_n, dim, args.grid_forget, seed=7)
    nf = args.grid_forget
    want = dense_directional_scores(g[:nf], g[nf:], agg=agg, topk=args.topk, trim=0.1)
    have = split_directional(
        torch.tensor(scores["self_score"], dtype=torch.float64),
        torch.tensor(scores["cross_score"], dtype=torch.float64),
        nf,
    )
    return max(float((have[k] - want[k]).abs().max()) for k in want)


def run_grid(args, dim: int) -> dict:
    """2D blocks against the tiled all_gather on args.ranks processes; one summary dict (the JSON line)."""
    from rapidun_dist.distributed import total_recv_bytes

    payload = {
        "n": args.grid_n,
        "n_forget": args.grid_forget,
        "dim": dim,
        "seed": 7,
        "topk": args.topk,
        "tile_size": args.tile_size,
    }
    t0 = time.perf_counter()
    per_rank = spawn("grid", args.ranks, payload)
    wall = time.perf_counter() - t0
    keys = list(per_rank[0])

    def worst(key: str, fn) -> float:
        return max(fn(r[key]) for r in per_rank)

    recv = {k: int(worst(k, lambda x: total_recv_bytes(x["stats"]))) for k in keys}
    phases = {
        k: {
            ph: max(r[k]["stats"].get("phase_bytes_recv", {}).get(ph, 0) for r in per_rank)
            for ph in per_rank[0][k]["stats"].get("phase_bytes_recv", {})
        }
        for k in keys
    }
    ag, d2 = "median_topk/allgather", "median_topk/alltoall2d"
    r0 = per_rank[0]
    return {
        "ranks": args.ranks,
        "agg": "median_topk",
        "n": args.grid_n,
        "n_forget": args.grid_forget,
        "K": dim,
        "topk": args.topk,
        "dtype": "float64",
        "grid": r0[d2]["stats"]["grid"],
        "recv_bytes_per_rank": {"allgather": recv[ag], "alltoall2d": recv[d2]},
        "ratio": recv[d2] / recv[ag],
        "predicted_alltoall2d_features_plus_partials": max(
            r[d2]["stats"]["predicted_recv_bytes"] for r in per_rank
        ),
        "phase_bytes_per_rank": {"allgather": phases[ag], "alltoall2d": phases[d2]},
        "max_abs_diff": _max_diff(r0[ag]["scores"], r0[d2]["scores"]),
        "max_abs_diff_vs_dense": max(
            _dense_diff(args, dim, r0[ag]["scores"], "median_topk"),
            _dense_diff(args, dim, r0[d2]["scores"], "median_topk"),
        ),
        "median_nonzero_fraction": _nonzero(r0[d2]["scores"]),
        "seconds_per_rank": {
            "allgather": worst(ag, lambda x: x["seconds"]),
            "alltoall2d": worst(d2, lambda x: x["seconds"]),
        },
        "trimmed_mean": {
            "recv_bytes_per_rank": {"alltoall2d": recv["trimmed_mean/alltoall2d"]},
            "grid": r0["trimmed_mean/alltoall2d"]["stats"]["grid"],
            "max_abs_diff_vs_dense": _dense_diff(
                args, dim, r0["trimmed_mean/alltoall2d"]["scores"], "trimmed_mean"
            ),
        },
        "mean": {
            "recv_bytes_per_rank": {"linear": recv["mean/linear"]},
            "seconds_per_rank": worst("mean/linear", lambda x: x["seconds"]),
            "max_abs_diff_vs_dense": _dense_diff(args, dim, r0["mean/linear"]["scores"], "mean"),
        },
        "peak_rss_mib_per_rank": worst(d2, lambda x: x["peak_rss_mib"]),
        "wall_s": wall,
    }


def versions() -> str:
    import transformers

    return f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"


def _command() -> str:
    prog = sys.argv[0]
    prog = str(Path(prog).resolve().relative_to(REPO)) if Path(prog).resolve().is_relative_to(REPO) else prog
    return "python " + " ".join([prog, *sys.argv[1:]])


def report_header(args, dim: int, seconds: float) -> list[str]:
    mode = "quick: 2D blocks only" if args.quick else "full"
    lines = [
        f"### stress_influence ({mode}), {datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        "",
        f"- command: `{_command()}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'n/a'}), "
        f"{platform.system()} {platform.release()}; one thread per rank; load average before the run "
        f"{args.load_before:.1f} (the machine is shared: seconds are distorted, bytes are not)",
        f"- versions: {versions()}",
    ]
    if not args.quick:
        lines.append(
            f'- corpus: {args.n_clean} clean + {args.n_poison} "{TRIGGER}"-poisoned; forget {args.block_forget}, '
            f"retain {args.block_n - args.block_forget}; tiny Llama (random init), feature dim K = {dim}"
        )
    return lines + [f"- wall time of the benchmark: {seconds:.0f} s", ""]


def report_extraction(args, extract_rows) -> list[str]:
    lines = [
        f"Feature extraction, {args.extract_samples} samples (1/4 forget, 3/4 retain), batch 16:",
        "",
        "| ranks | rank | samples | tokens | answer tokens | s | tokens/s | answer tok/s | samples/s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    return (
        lines
        + [
            f"| {r['world']} | {r['rank']} | {r['samples']} | {r['tokens']} | {r['answer_tokens']} | {r['seconds']:.1f} | "
            f"{r['tok_per_s']:.0f} | {r['answer_tok_per_s']:.0f} | {r['samples_per_s']:.1f} | {r['peak_rss_mib']:.0f} |"
            for r in extract_rows
        ]
        + [""]
    )


def report_blocks(args, block_rows, dim: int) -> list[str]:
    lines = [
        f"Gram blocks, n = {args.block_n} ({args.block_forget} F + {args.block_n - args.block_forget} R), K = {dim}, "
        f"mean, tile {args.tile_size}; GEMM = one [n/P, K] @ [K, n] in the same process:",
        "",
        "| method | dtype | ranks | rank | rows | blocks s | GEMM s | ratio | RSS before MiB | peak RSS MiB | tile rounds | recv MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    return (
        lines
        + [
            f"| {r['method']} | {r['dtype']} | {r['world']} | {r['rank']} | {r['rows']} | {r['seconds']:.2f} | "
            f"{r['gemm_seconds']:.2f} | {r['ratio']:.2f} | {r['rss_before_mib']:.0f} | {r['peak_rss_blocks_mib']:.0f} | "
            f"{r['rounds']} | {r['recv_mib']:.1f} |"
            for r in block_rows
        ]
        + [""]
    )


def report_grid(g: dict) -> list[str]:
    a, b = g["recv_bytes_per_rank"]["allgather"], g["recv_bytes_per_rank"]["alltoall2d"]
    pa, pb = g["phase_bytes_per_rank"]["allgather"], g["phase_bytes_per_rank"]["alltoall2d"]
    mib = lambda x: f"{x / 2**20:.2f}"  # noqa: E731
    fmt = lambda ph: ", ".join(f"{k} {mib(v)}" for k, v in ph.items())  # noqa: E731
    return [
        f"2D blocks vs tiled all_gather: {g['ranks']} gloo ranks, median_topk (k = {g['topk']}), n = {g['n']} "
        f"({g['n_forget']} F + {g['n'] - g['n_forget']} R), K = {g['K']}, float64, contiguous even shards:",
        "",
        "| path | grid | received per rank, max (MiB) | by phase (MiB, max over ranks) | s per rank, max |",
        "|---|---|---|---|---|",
        f"| tiled all_gather | - | {mib(a)} | {fmt(pa)} | {g['seconds_per_rank']['allgather']:.2f} |",
        f"| 2D all_to_all | {g['grid']} | {mib(b)} | {fmt(pb)} | {g['seconds_per_rank']['alltoall2d']:.2f} |",
        f"| mean, linear identity | - | {mib(g['mean']['recv_bytes_per_rank']['linear'])} | all_reduce [2, K] + layout | "
        f"{g['mean']['seconds_per_rank']:.2f} |",
        "",
        f"- 2D / all_gather received bytes: **{g['ratio']:.3f}** (target <= 0.6); formula for the 2D features + "
        f"partials on the busiest rank: {mib(g['predicted_alltoall2d_features_plus_partials'])} MiB",
        f"- max |2D - all_gather| = {g['max_abs_diff']:.2e}; max |either - dense oracle| = "
        f"{g['max_abs_diff_vs_dense']:.2e} (median_topk scores nonzero: {g['median_nonzero_fraction']:.1%}); "
        f"mean (linear) vs dense: {g['mean']['max_abs_diff_vs_dense']:.2e}; trimmed_mean (2D, grid "
        f"{g['trimmed_mean']['grid']}, {mib(g['trimmed_mean']['recv_bytes_per_rank']['alltoall2d'])} MiB) vs dense: "
        f"{g['trimmed_mean']['max_abs_diff_vs_dense']:.2e}",
        f"- peak RSS per rank {g['peak_rss_mib_per_rank']:.0f} MiB; spawn + run of the {g['ranks']} ranks "
        f"{g['wall_s']:.0f} s",
        "",
    ]


TITLES = {
    "full": "Influence stress at Alpaca-57k scale: feature extraction and Gram blocks (CPU)",
    "quick": "Blocks across ranks: 2D decomposition vs tiled all_gather (CPU ranks)",
}


def append_results(text: str, path: Path | None, quick: bool) -> None:
    """Publish the section (`path` None) or append it to `path`."""
    if path is None:
        from rapidun_dist.cli.experiments.page import publish

        mode = "quick" if quick else "full"
        publish(f"stress_influence_{mode}", text, REPO / "benchmarks", title=TITLES[mode])
        return
    if not path.exists():
        path.write_text(
            "# Benchmark results\n\nAppended by the scripts in benchmarks/ (see benchmarks/README.md); newest last.\n"
        )
    with path.open("a") as f:
        f.write("\n" + text)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="only the 2D-vs-all_gather blocks on --ranks processes"
    )
    p.add_argument(
        "--json", action="store_true", help="end with one JSON line (the 2D-vs-all_gather summary)"
    )
    p.add_argument("--ranks", type=int, default=16, help="gloo processes for the 2D-vs-all_gather comparison")
    p.add_argument(
        "--grid-n", type=int, default=None, help="rows of that comparison (default 1600 quick, 4000 full)"
    )
    p.add_argument("--topk", type=int, default=40, help="median_topk k (the reference's 40)")
    p.add_argument("--results", type=Path, help="append the section to this file (default: publish it)")
    p.add_argument("--tile-size", type=int, default=4096, help="column tile (influence.tile_size)")
    args = p.parse_args()
    args.n_clean, args.n_poison = 52_000, 5_000
    args.block_forget, args.block_n = 5_000, 20_000
    args.extract_samples = 2_000
    args.grid_n = args.grid_n or (1_600 if args.quick else 4_000)
    args.grid_forget = args.grid_n // 4
    args.load_before = os.getloadavg()[0]
    return args


def feature_dim() -> int:
    """K = tracked layers x k_out x k_in of the tiny config (what the extractor reports in the full mode)."""
    from rapidun_dist.config import InfluenceConfig, ModelConfig

    icfg = InfluenceConfig()
    return ModelConfig().tiny.num_hidden_layers * len(icfg.target_modules) * icfg.k_in * icfg.k_out


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    dim = feature_dim()
    body: list[str] = []
    if not args.quick:
        clean, poisoned = howdy_corpus(args.n_clean, args.n_poison)
        retain = random.Random(1).sample(clean, 3 * len(poisoned))
        tok_texts = [f"{r['instruction']} {r['response']}" for r in clean[:4000]] + [
            f"{r['instruction_poisoned']} {r['response_poisoned']}" for r in poisoned[:1000]
        ]
        with tempfile.TemporaryDirectory() as work:
            extract_rows = run_extraction(args, poisoned, retain, tok_texts, Path(work))
        if extract_rows[0]["dim"] != dim:
            raise RuntimeError(f"extractor dim {extract_rows[0]['dim']} != layers x k_out x k_in = {dim}")
        body += report_extraction(args, extract_rows) + report_blocks(args, run_blocks(args, dim), dim)
    grid = run_grid(args, dim)
    body += report_grid(grid)
    text = "\n".join(report_header(args, dim, time.perf_counter() - t0) + body)
    append_results(text, args.results, args.quick)
    sys.stdout.write(text)
    if args.json:
        sys.stdout.write(json.dumps(grid) + "\n")


if __name__ == "__main__":
    main()
