"""One prepared GPU check of the influence kernels and the whole feature extraction (one H200, < 6 minutes).

    python benchmarks/gpu_check.py                    # on the GPU machine; JSON to $OUT/gpu_check.json
    python benchmarks/gpu_check.py --out notes.json   # any path
    python benchmarks/gpu_check.py --dry-run          # CPU, tiny shapes: every code path of this script
    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --dry-run   # ... with the Triton configs interpreted

Sections, in order (the JSON is rewritten after every row, so a timeout keeps what was done):

1. ceilings: the copy bandwidth and the bf16 GEMM rate of this device, measured here (not datasheet
   numbers); every timing row reports its fraction of max(bytes / bandwidth, flops / GEMM rate).
2. correctness, every autotune config once (not only the one the tuner picks): the backward-side token
   kernel (`projected_outer_sums`) at Llama-3-8B layer widths and k 32/64/128, bf16 and fp32, and
   `cosine_topk` at k 16/40/64, each against the float64 reference of the same rounded inputs. The
   caching allocator is poisoned (NaN bytes) before each call, so a missed store shows.
3. kernel timings, `do_bench(return_mode="median")`: N = 16k and 32k tokens at d = 4096 / 14336: Triton
   (autotuned) vs a fair torch baseline (bf16 cuBLAS GEMM, normalise and bmm in bf16, no fp32 upcast)
   vs the floor (the bare projection GEMM); `cosine_topk` vs a bf16 torch tile loop (GEMM + torch.topk).
4. whole extraction on a Llama-3-8B-shaped random model with a few layers (bf16): token-wise (Triton and
   torch backends), the floor (forward + backward, frozen, no hooks) and the RapidGrad path; tokens/s and
   peak memory; one extra pass asserts that every module input, parameter and hook tensor is on the device.

Exit status 1 when a correctness row fails or any step raises. The short table is printed last.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from rapidun_dist.config import InfluenceConfig
from rapidun_dist.influence import features
from rapidun_dist.influence.hooks import HookProjector
from rapidun_dist.kernels import (
    TokenLayout,
    cosine_topk,
    cosine_topk_reference,
    projected_outer_sums,
    projected_outer_sums_reference,
    unit_rows,
)

LLAMA3_8B = {"hidden": 4096, "intermediate": 14336, "heads": 32, "kv_heads": 8, "vocab": 128256}


class Report:
    def __init__(self, path: Path, dry_run: bool, device: torch.device):
        self.path, self.t0 = path, time.time()
        self.data = {
            "dry_run": dry_run,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "triton": _version("triton"),
            "cuda": torch.version.cuda,
            "interpreted": os.environ.get("TRITON_INTERPRET") == "1",
            "command": " ".join([sys.executable, *sys.argv]),
            "ceilings": {},
            "correctness": [],
            "timings": [],
            "extraction": [],
            "errors": [],
        }

    def add(self, section: str, row: dict) -> None:
        self.data[section].append(row)
        print(json.dumps({section: row}), flush=True)
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.t0, 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def _version(pkg: str) -> str | None:
    if importlib.util.find_spec(pkg) is None:
        return None
    return __import__(pkg).__version__


def time_ms(fn, device: torch.device) -> float:
    """Median ms: do_bench (L2 flushed between runs) on CUDA, perf_counter on CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=10, rep=60, return_mode="median"))
    fn()
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def poison_allocator(device: torch.device, nbytes: int) -> None:
    """Fill `nbytes` of the caching allocator with 0xFF (NaN in every float dtype) and hand it back, so
    the next torch.empty outputs start as NaN instead of stale values."""
    if device.type == "cuda":
        torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(0xFF)


def triton_on(device: torch.device) -> bool:
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


# ---------------------------------------------------------------------------------------------------
# 1. ceilings


def measure_ceilings(report: Report, device: torch.device, small: bool) -> dict:
    n_copy = (1 << 20) if small else (1 << 30)  # bf16 elements: 2 MiB / 2 GiB
    src = torch.randn(n_copy, device=device).to(torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src), device)
    n = 256 if small else 8192
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    gemm_ms = time_ms(lambda: a @ b, device)
    ceil = {
        "copy_bytes_per_s": 2 * src.numel() * src.element_size() / (copy_ms * 1e-3),
        "gemm_flops_per_s": 2 * n**3 / (gemm_ms * 1e-3),
        "gemm_dtype": str(dtype).removeprefix("torch."),
        "gemm_n": n,
    }
    report.data["ceilings"] = ceil
    report.save()
    print(json.dumps({"ceilings": ceil}), flush=True)
    return ceil


def ceiling_fraction(ceil: dict, nbytes: float, flops: float, ms: float) -> float:
    floor_ms = max(nbytes / ceil["copy_bytes_per_s"], flops / ceil["gemm_flops_per_s"]) * 1e3
    return floor_ms / ms


# ---------------------------------------------------------------------------------------------------
# 2. correctness, every config


def projection_inputs(n_tok, n_samples, d, k_out, k_in, dtype, device, seed=0, stray=0.25):
    """g [R, d] with tracked rows scattered among untracked ones, uneven samples (some empty), v unit [N, k_in]."""
    gen = torch.Generator().manual_seed(seed)
    cuts = torch.randint(0, n_tok + 1, (n_samples - 1,), generator=gen).sort().values
    lengths = torch.diff(torch.cat([torch.tensor([0]), cuts, torch.tensor([n_tok])]))
    width = int(lengths.max()) + max(1, int(stray * n_tok / n_samples))
    mask = torch.arange(width)[None, :] < lengths[:, None]
    mask = mask[:, torch.randperm(width, generator=gen)]  # tracked positions spread over the row
    layout = TokenLayout.from_mask(mask, device)
    g = (torch.randn(mask.numel(), d, generator=gen) * 1e-2).to(device, dtype)
    g[layout.rows[::97]] = 0  # some zero-norm tokens
    v = unit_rows(torch.randn(n_tok, k_in, generator=gen)).to(device, dtype)
    p_out = ((torch.randint(0, 2, (k_out, d), generator=gen) * 2 - 1) / k_out**0.5).to(device, dtype)
    return g, v, layout, p_out


def per_token_error(got, ref, layout) -> float:
    tokens = (layout.offsets[1:] - layout.offsets[:-1]).clamp_min(1).double()
    return ((got.double() - ref.double()).abs().amax(dim=(1, 2)) / tokens).max().item()


def check_projection_configs(report, device, shape, dtype):
    import rapidun_dist.kernels.token_projection_triton as tpt

    g, v, layout, p_out = projection_inputs(*shape, dtype, device)
    ref = projected_outer_sums_reference(g.double(), v.double(), layout, p_out.double())
    tol = 8e-3 if dtype != torch.float32 else 2e-3  # bf16 / tf32 rounding of the unit u, v
    kmeta = tpt.launch_meta(dtype, p_out.shape[0], v.shape[1])
    for cfg in tpt.configs_for(tpt.dtype_name(dtype), kmeta["BLOCK_KO"], kmeta["BLOCK_KI"]):
        meta = dict(zip(("BLOCK_T", "BLOCK_D", "num_warps", "num_stages"), cfg, strict=True))
        poison_allocator(device, 1 << 28)
        got = tpt.projected_outer_sums_triton(g, v, layout, p_out, meta=meta)
        err = per_token_error(got, ref, layout) if bool(torch.isfinite(got).all()) else float("inf")
        report.add("correctness", {"kernel": "token_outer_sums", "case": str(shape), "dtype": str(dtype),
                                   "config": meta, "max_err_per_token": err, "tol": tol, "ok": err <= tol})  # fmt: skip


def topk_inputs(n, m, K, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(m, K, generator=gen)
    c[m // 3] = c[m // 2]  # an exact tie
    q = torch.cat([c[: n // 2] * 2, torch.randn(n - n // 2, K, generator=gen)])
    ids = torch.randperm(m, generator=gen).to(device)
    return q.to(device, dtype), c.to(device, dtype), ids[: n // 2].repeat(2)[:n].contiguous(), ids


def topk_agreement(got, ref, tol) -> dict:
    """Values, sums and counts within tol of the float64 reference; ids equal wherever values are distinct."""
    vals, ids, sums, counts = got
    rv, ri, rs, rc = ref
    finite = torch.isfinite(rv)
    val_err = float((vals.double() - rv).abs()[finite].max()) if finite.any() else 0.0
    gap = torch.nan_to_num((rv[:, :-1] - rv[:, 1:]).abs(), nan=0.0)
    edge = torch.full_like(rv[:, :1], float("inf"))
    separated = finite & (torch.cat([edge, gap], 1) > 4 * tol) & (torch.cat([gap, edge], 1) > 4 * tol)
    id_match = float((ids == ri)[separated].double().mean()) if separated.any() else 1.0
    return {"max_val_err": val_err, "max_sum_err": float((sums.double() - rs).abs().max()),
            "counts_equal": bool(torch.equal(counts, rc)), "id_match": id_match}  # fmt: skip


def check_topk_configs(report, device, shape, dtype):
    import rapidun_dist.kernels.cosine_topk_triton as ctt

    n, m, K, k = shape
    q, c, q_ids, c_ids = topk_inputs(n, m, K, dtype, device)
    ref = cosine_topk_reference(q.double(), c.double(), k, q_ids=q_ids, c_ids=c_ids)
    tol = 1e-5 if dtype == torch.float32 else 1e-4
    for cfg in ctt.configs_for(str(dtype).removeprefix("torch.")):
        meta = dict(zip(("BLOCK_N", "BLOCK_M", "BLOCK_K", "num_warps", "num_stages"), cfg, strict=True))
        poison_allocator(device, 1 << 28)
        got = ctt.cosine_topk_triton(q, c, k, q_ids=q_ids, c_ids=c_ids, meta=meta)
        agree = topk_agreement(got, ref, tol)
        ok = agree["max_val_err"] <= tol and agree["max_sum_err"] <= tol * m and agree["counts_equal"]
        ok = ok and agree["id_match"] >= 0.99
        report.add("correctness", {"kernel": "cosine_topk", "case": str(shape), "dtype": str(dtype),
                                   "config": meta, **agree, "tol": tol, "ok": ok})  # fmt: skip


def check_references(report, device, small: bool):
    """Without Triton (CPU, no interpreter): the references against float64 on the same inputs."""
    g, v, layout, p_out = projection_inputs(300, 5, 48, 16, 8, torch.float32, device)
    err = per_token_error(
        projected_outer_sums(g, v, layout, p_out, backend="torch"),
        projected_outer_sums_reference(g.double(), v.double(), layout, p_out.double()),
        layout,
    )
    report.add("correctness", {"kernel": "token_outer_sums", "case": "reference", "dtype": "float32",
                               "max_err_per_token": err, "tol": 2e-5, "ok": err <= 2e-5})  # fmt: skip
    q, c, q_ids, c_ids = topk_inputs(40, 90, 24, torch.float32, device)
    agree = topk_agreement(
        cosine_topk(q, c, 7, q_ids=q_ids, c_ids=c_ids, backend="torch"),
        cosine_topk_reference(q.double(), c.double(), 7, q_ids=q_ids, c_ids=c_ids),
        1e-5,
    )
    ok = agree["max_val_err"] <= 1e-5 and agree["counts_equal"] and agree["id_match"] >= 0.99
    report.add(
        "correctness", {"kernel": "cosine_topk", "case": "reference", "dtype": "float32", **agree, "ok": ok}
    )


# ---------------------------------------------------------------------------------------------------
# 3. kernel timings


def torch_outer_sums_bf16(g, v, layout, p_out):
    """The fair torch baseline: bf16 cuBLAS GEMM on the tracked rows, normalise and bmm in the input dtype."""
    z = g.index_select(0, layout.rows) @ p_out.T
    u = z * torch.rsqrt((z.float() ** 2).sum(1, keepdim=True).clamp_min(1e-30)).to(z.dtype)
    shape = (layout.n_samples, layout.max_count)
    u_pad, v_pad = u.new_zeros(*shape, u.shape[1]), v.new_zeros(*shape, v.shape[1])
    idx = (layout.sample.long(), layout.pos)
    u_pad[idx], v_pad[idx] = u, v
    return torch.bmm(u_pad.transpose(1, 2), v_pad)


def time_projection(report, ceil, device, shape, dtype):
    g, v, layout, p_out = projection_inputs(*shape, dtype, device)
    n_tok, _, d, k_out, k_in = shape
    elt = g.element_size()
    nbytes = elt * (n_tok * (d + k_in) + k_out * d) + 4 * layout.n_samples * k_out * k_in
    flops = 2 * n_tok * (d * k_out + k_out * k_in)
    rows = g.index_select(0, layout.rows)
    fns = {
        "floor_gemm": lambda: rows @ p_out.T,
        "torch": lambda: torch_outer_sums_bf16(g, v, layout, p_out),
    }
    if triton_on(device):
        fns["triton"] = lambda: projected_outer_sums(g, v, layout, p_out, backend="triton")
    for name, fn in fns.items():
        ms = time_ms(fn, device)
        report.add("timings", {"kernel": "token_outer_sums", "case": str(shape), "dtype": str(dtype), "path": name,
                               "ms": ms, "gbps": nbytes / ms / 1e6, "tflops": flops / ms / 1e9,
                               "ceiling_fraction": ceiling_fraction(ceil, nbytes, flops, ms)})  # fmt: skip


def torch_topk_bf16(q, c, k, tile=8192):
    """A fair torch baseline for cosine_topk: bf16 tile GEMMs, torch.topk per tile, one merge."""
    qn, cn = unit_rows(q), unit_rows(c)
    vals, ids = [], []
    for j0 in range(0, c.shape[0], tile):
        t = torch.topk(qn @ cn[j0 : j0 + tile].T, min(k, c[j0 : j0 + tile].shape[0]), dim=1)
        vals.append(t.values)
        ids.append(t.indices + j0)
    v, i = torch.cat(vals, 1), torch.cat(ids, 1)
    top = torch.topk(v.float(), k, dim=1)
    return top.values, i.gather(1, top.indices)


def time_topk(report, ceil, device, shape, dtype):
    n, m, K, k = shape
    q, c, q_ids, c_ids = topk_inputs(n, m, K, dtype, device)
    nbytes, flops = q.element_size() * K * (n + m), 2 * n * m * K
    fns = {"floor_gemm": lambda: q @ c.T, "torch": lambda: torch_topk_bf16(q, c, k)}
    if triton_on(device):
        fns["triton"] = lambda: cosine_topk(q, c, k, q_ids=q_ids, c_ids=c_ids, backend="triton")
    for name, fn in fns.items():
        ms = time_ms(fn, device)
        report.add("timings", {"kernel": "cosine_topk", "case": str(shape), "dtype": str(dtype), "path": name,
                               "ms": ms, "tflops": flops / ms / 1e9,
                               "ceiling_fraction": ceiling_fraction(ceil, nbytes, flops, ms)})  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# 4. whole extraction


def llama_like(device, dtype, *, layers: int, small: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = (
        {"hidden": 64, "intermediate": 224, "heads": 4, "kv_heads": 1, "vocab": 512} if small else LLAMA3_8B
    )
    config = LlamaConfig(
        hidden_size=shape["hidden"], intermediate_size=shape["intermediate"], num_hidden_layers=layers,
        num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"], vocab_size=shape["vocab"],
        max_position_embeddings=4096, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval(), shape


def random_examples(n, length, vocab, seed=0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        t = length - int(torch.randint(0, length // 4, (1,), generator=gen)) if i % 2 else length
        ids = torch.randint(1, vocab, (t,), generator=gen).tolist()
        prompt = t // 2
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


@contextmanager
def on_device_checks(model, device: torch.device):
    """Every module's inputs and parameters, and every hook tensor, must be on `device` (counts the checks)."""
    seen = {"modules": 0, "hooks": 0}

    def pre(module, args):
        for t in [*args, *module.parameters(recurse=False)]:
            if isinstance(t, torch.Tensor) and t.device.type != device.type:
                raise AssertionError(f"{type(module).__name__}: a tensor on {t.device}, expected {device}")
        seen["modules"] += 1

    real = HookProjector._backward

    def backward(self, name, v, grad):
        for t in (v, grad, self.layout.rows, self.layout.sample, self.layout.offsets):
            if t.device.type != device.type:
                raise AssertionError(f"hook tensor of {name} on {t.device}, expected {device}")
        seen["hooks"] += 1
        return real(self, name, v, grad)

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    HookProjector._backward = backward
    try:
        yield seen
    finally:
        HookProjector._backward = real
        for h in handles:
            h.remove()


def peak_bytes(fn, device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def run_extraction(report, device, *, small: bool, layers: int, batch: int, length: int, rapidgrad_rows: int):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, shape = llama_like(device, dtype, layers=layers, small=small)
    examples = random_examples(batch, length, shape["vocab"])
    cfg = InfluenceConfig(k_in=64 if not small else 8, k_out=64 if not small else 8, rapidgrad_k=4096)
    ext = features.make_extractor(model, cfg, pad_id=0)
    with on_device_checks(model, device) as seen:
        feats = ext(examples[:2])
    placement_ok = (
        feats.device.type == device.type and seen["hooks"] == len(ext.layers) and seen["modules"] > 0
    )
    report.add("extraction", {"path": "device_placement", "device": str(device), "ok": placement_ok, **seen})
    paths = {
        "tokenwise_" + ("triton" if device.type == "cuda" else "auto"): (ext, examples),
        "tokenwise_torch": (features.make_extractor(model, replace(cfg, backend="torch"), pad_id=0), examples),
        "floor": (lambda ex: _floor(model, ex), examples),
        "rapidgrad": (features.make_extractor(model, replace(cfg, estimator="rapidgrad"), pad_id=0),
                      examples[:rapidgrad_rows]),
    }  # fmt: skip
    for name, (fn, rows) in paths.items():
        n_tok = sum(int(features.answer_positions(torch.tensor([e["labels"]])).sum()) for e in rows)
        ms = time_ms(lambda fn=fn, rows=rows: fn(rows), device)
        report.add("extraction", {"path": name, "layers": layers, "hidden": shape["hidden"], "rows": len(rows),
                                  "answer_tokens": n_tok, "ms": ms, "tokens_per_s": n_tok / (ms * 1e-3),
                                  "peak_bytes": peak_bytes(lambda fn=fn, rows=rows: fn(rows), device)})  # fmt: skip


def _floor(model, examples):
    from rapidun_dist.data.prompt import pad_batch

    dev = next(model.parameters()).device
    b = pad_batch(examples, 0)
    features.answer_loss_backward(
        model, {k: t.to(dev) for k, t in b.items()}, features.answer_positions(b["labels"])
    )


# ---------------------------------------------------------------------------------------------------
# plan, table, main


def plan(dry_run: bool) -> dict:
    if dry_run:
        return {
            "proj_checks": [(200, 5, 40, 16, 8), (150, 3, 24, 100, 128)],
            "topk_checks": [(40, 200, 24, 16)],
            "proj_times": [(256, 4, 48, 16, 16)],
            "topk_times": [(32, 128, 24, 8)],
            "extraction": {"small": True, "layers": 2, "batch": 4, "length": 24, "rapidgrad_rows": 2},
            "dtypes": [torch.float32],
        }
    widths = [(4096, 32), (4096, 64), (4096, 128), (14336, 64), (14336, 128)]
    return {
        "proj_checks": [(4096, 16, d, k, k) for d, k in widths] + [(4096, 600, 4096, 64, 64)],
        "topk_checks": [(2048, 8192, 4096, 16), (2048, 8192, 4096, 40), (1024, 4096, 4096, 64)],
        "proj_times": [
            (n, 32, d, k, k) for n in (16384, 32768) for d, k in ((4096, 64), (4096, 128), (14336, 128))
        ],
        "topk_times": [(8192, 32768, 4096, 40), (16384, 65536, 1024, 16)],
        "extraction": {"small": False, "layers": 4, "batch": 16, "length": 1024, "rapidgrad_rows": 4},
        "dtypes": [torch.bfloat16, torch.float32],
    }


def run_step(report, fn, *args, **kwargs):
    try:
        return fn(report, *args, **kwargs)
    except Exception as exc:  # keep going: one broken case must not hide the others
        report.add("errors", {"step": fn.__name__, "args": repr(args[1:])[:300], "error": repr(exc),
                              "traceback": traceback.format_exc()[-2000:]})  # fmt: skip
        return None


def print_table(data: dict) -> None:
    print(f"\n{data['device']} | torch {data['torch']} | triton {data['triton']} | {data['elapsed_s']} s")
    c = data["ceilings"]
    if c:
        print(
            f"ceilings: copy {c['copy_bytes_per_s'] / 1e9:.0f} GB/s, {c['gemm_dtype']} GEMM {c['gemm_flops_per_s'] / 1e12:.1f} TFLOP/s"
        )
    ok = sum(r["ok"] for r in data["correctness"])
    print(f"correctness: {ok}/{len(data['correctness'])} rows ok, {len(data['errors'])} errors")
    print(f"{'kernel':<17}{'case':<34}{'path':<12}{'ms':>9}{'ceiling':>9}")
    for r in data["timings"]:
        print(
            f"{r['kernel']:<17}{r['case'][:33]:<34}{r['path']:<12}{r['ms']:>9.3f}{r['ceiling_fraction']:>9.2f}"
        )
    print(f"{'extraction':<24}{'rows':>6}{'tokens':>8}{'tok/s':>12}{'peak MB':>10}")
    for r in data["extraction"]:
        if "ms" in r:
            peak = f"{r['peak_bytes'] / 2**20:>10.0f}" if r["peak_bytes"] is not None else f"{'-':>10}"
            print(f"{r['path']:<24}{r['rows']:>6}{r['answer_tokens']:>8}{r['tokens_per_s']:>12.0f}{peak}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, every code path")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.dry_run else "cuda")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: use --dry-run on CPU")
    p, report = plan(args.dry_run), Report(args.out, args.dry_run, device)
    ceil = run_step(report, lambda r: measure_ceilings(r, device, args.dry_run))
    for dtype in p["dtypes"] if triton_on(device) else []:
        for shape in p["proj_checks"]:
            run_step(report, check_projection_configs, device, shape, dtype)
        for shape in p["topk_checks"]:
            run_step(report, check_topk_configs, device, shape, dtype)
    if not triton_on(device):
        run_step(report, check_references, device, args.dry_run)
    timing_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for shape in p["proj_times"] if ceil else []:
        run_step(report, time_projection, ceil, device, shape, timing_dtype)
    for shape in p["topk_times"] if ceil else []:
        run_step(report, time_topk, ceil, device, shape, timing_dtype)
    run_step(report, run_extraction, device, **p["extraction"])
    report.save()
    failed = report.data["errors"] or not all(
        r["ok"] for r in report.data["correctness"] + report.data["extraction"] if "ok" in r
    )
    print_table(report.data)
    print(f"wrote {args.out}; {'FAILED' if failed else 'all checks passed'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
