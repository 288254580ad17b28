"""Triton kernel for the per-row streaming top-k of cosines (contract and math: cosine_topk.py).

Grid (row tile, column split). A program holds BLOCK_N rows and walks its share of the columns in tiles
of BLOCK_M: S = Q C^T with tensor-core dots over K in chunks of BLOCK_K (fp32 accumulation; bf16/fp16
operands as given, fp32 as "tf32x3", three tf32 products that keep fp32 accuracy so near-ties rank as
in the float64 reference), scaled by the inverse row and column norms (a torch pre-pass, 0 for zero
vectors). Invalid pairs (self pairs by id, padding) are masked; the valid ones add to the row sums and
counts. The n x m matrix is never stored.

Streaming top-k: each (value, column) pair is packed into one int64 key, the order-preserving bits of the
fp32 value above the complement of the column's id rank, so "larger key" means "larger value, then
smaller id", and keys are unique within a row. Each program keeps an unsorted set of its rows' best KP
keys and folds every tile into it with `_merge_topk` (as many rounds as the tile has new candidates:
after the first tiles, usually none). Not tl.sort/tl.topk: a sorted merge keeps a second [BN, KP] int64
tensor live (it spilled under Triton 3.6), and their xor-reduction network takes seconds per call in the
interpreter, which would keep every config from being checked on a CPU. Column splits write their
top KP, sums and counts as partials [S, n, ...]; the launcher orders and merges them with one torch.topk
over the keys (deterministic, no atomics) and unpacks values and ids.

- k <= 64 (KP = next power of two of k, at least 16); larger k: the reference ("auto") or a ValueError.
- Dtypes: q, c fp32/bf16/fp16 sharing one dtype; returns (vals fp32, ids int64, sums fp32, counts int64).
  float64 raises TypeError (use backend="torch", or "auto" which picks the reference for float64).
- In the interpreter dot operands are upcast to fp32 and one fixed config runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rapidun_dist.kernels._contracts import PAD_ID, TRITON_MAX_K
from rapidun_dist.kernels._contracts import check_topk_inputs as _check_inputs
from rapidun_dist.kernels._triton_utils import INTERPRETING, check_float_inputs, program_target, tuned

MAX_K = TRITON_MAX_K
MIN_KEY = -(2**63)
LOW31 = 0x7FFFFFFF
SPLIT_GRANULE = 128


@triton.jit
def _pack(s, rank):
    """int64 keys ordered like (s descending, rank ascending); s fp32 (-0 taken as +0), rank in [0, 2^31)."""
    s = tl.where(s == 0.0, 0.0, s)
    bits = s.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return (ordered.to(tl.int64) << 32) | (0x7FFFFFFF - rank).to(tl.int64)


@triton.jit
def _merge_topk(best, keys, KP: tl.constexpr):
    """Fold a tile's `keys` [BN, BM] into the running top-KP set `best` [BN, KP] (unsorted): each round moves
    every row's largest remaining tile key into the slot of its smallest kept key when it is larger. Rounds
    = the most tile keys above a row's current minimum, so a tile with few new candidates costs few rounds;
    keys are unique within a row, so a moved key is masked exactly. Only `best` and `keys` stay live."""
    kp = tl.arange(0, KP)[None, :]
    rounds = tl.max(tl.sum((keys > tl.min(best, axis=1)[:, None]).to(tl.int32), axis=1), axis=0)
    for _ in range(rounds):
        top = tl.max(keys, axis=1)
        low = tl.min(best, axis=1)
        slot = tl.argmin(best, axis=1)
        take = (kp == slot[:, None]) & (top > low)[:, None]
        best = tl.where(take, top[:, None], best)
        keys = tl.where(keys == top[:, None], -(2**63), keys)
    return best


@triton.jit
def _tile_cosines(q_ptr, c_ptr, rows, cols, r_mask, c_mask, K, stride_q, stride_c,
                  BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                  UPCAST: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    # int64 row offsets: row * stride passes 2^31 from row 9,363 at K = 229,376 (Llama-3-8B, k_in = k_out = 32)
    q_rows = q_ptr + rows.to(tl.int64)[:, None] * stride_q
    c_rows = c_ptr + cols.to(tl.int64)[:, None] * stride_c
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_mask = kk < K
        a = tl.load(q_rows + kk[None, :], mask=r_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(c_rows + kk[None, :], mask=c_mask[:, None] & k_mask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _cosine_topk_kernel(q_ptr, c_ptr, inv_q_ptr, inv_c_ptr, q_ids_ptr, c_ids_ptr, rank_ptr,
                        keys_ptr, sums_ptr, counts_ptr, n, m, K, chunk, stride_q, stride_c,
                        HAS_IDS: tl.constexpr, KP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_mask = rows < n
    inv_q = tl.load(inv_q_ptr + rows, mask=r_mask, other=0.0)
    if HAS_IDS:
        q_ids = tl.load(q_ids_ptr + rows, mask=r_mask, other=0)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, m)
    best = tl.full((BLOCK_N, KP), -(2**63), dtype=tl.int64)
    sums = tl.zeros((BLOCK_N,), dtype=tl.float32)
    counts = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for j0 in range(lo, hi, BLOCK_M):
        cols = j0 + tl.arange(0, BLOCK_M)
        c_mask = cols < hi
        s = _tile_cosines(q_ptr, c_ptr, rows, cols, r_mask, c_mask, K, stride_q, stride_c,
                          BLOCK_N, BLOCK_M, BLOCK_K, UPCAST, PRECISION)  # fmt: skip
        inv_c = tl.load(inv_c_ptr + cols, mask=c_mask, other=0.0)
        s = s * inv_q[:, None] * inv_c[None, :]
        valid = r_mask[:, None] & c_mask[None, :]
        if HAS_IDS:
            c_ids = tl.load(c_ids_ptr + cols, mask=c_mask, other=0)
            valid = valid & (q_ids[:, None] != c_ids[None, :])
        sums += tl.sum(tl.where(valid, s, 0.0), axis=1)
        counts += tl.sum(valid.to(tl.int32), axis=1)
        rank = tl.load(rank_ptr + cols, mask=c_mask, other=0)
        keys = tl.where(valid, _pack(s, rank), -(2**63))
        best = _merge_topk(best, keys, KP)  # zero rounds when no row has a new candidate
    out_rows = (split * n + rows).to(tl.int64)
    kp = tl.arange(0, KP)
    tl.store(keys_ptr + out_rows[:, None] * KP + kp[None, :], best, mask=r_mask[:, None])
    tl.store(sums_ptr + out_rows, sums, mask=r_mask)
    tl.store(counts_ptr + out_rows, counts, mask=r_mask)


# (BLOCK_N, BLOCK_M, BLOCK_K, num_warps, num_stages) per dtype; BLOCK_N = 64 rows so the dot has M = 64
# (wgmma). Every entry compiles for sm_90 with HGMMA and without spills at KP in {16, 32, 64} for its dtype,
# under Triton 3.6 (the GPU machine's) and 3.9 (kernels/benchmarks/aot_sm90.py). Pruned after compiling:
# 4 warps, BLOCK_M = 128 and 16 warps (all spill), BLOCK_K = 128 (spills under 3.6), fp32 with BLOCK_K = 64
# (tf32x3 splits each operand in two; spills under 3.6); KP = 128 spilled in every config, hence MAX_K = 64.
_BY_DTYPE = {
    "bfloat16": [(64, 64, 64, 8, 3), (64, 64, 32, 8, 3), (64, 64, 64, 8, 2), (64, 64, 32, 8, 4)],
    "float32": [(64, 64, 32, 8, 3), (64, 64, 32, 8, 4), (64, 64, 16, 8, 4)],
}
_BY_DTYPE["float16"] = _BY_DTYPE["bfloat16"]


def _config(bn: int, bm: int, bk: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


CONFIGS = [_config(*c) for c in dict.fromkeys(_BY_DTYPE["bfloat16"] + _BY_DTYPE["float32"])]


def configs_for(dtype: str) -> list[tuple]:
    """The (BLOCK_N, BLOCK_M, BLOCK_K, warps, stages) entries allowed for one dtype name."""
    return _BY_DTYPE[dtype]


def _prune(configs, named_args, **kwargs):
    allowed = set(configs_for(str(named_args["q_ptr"].dtype).removeprefix("torch.")))
    keep = [c for c in configs if (*c.kwargs.values(), c.num_warps, c.num_stages) in allowed]
    return keep or configs[:1]


INTERP_CONFIG = {"BLOCK_N": 64, "BLOCK_M": 64, "BLOCK_K": 64}
_KERNEL, _INTERP_META = tuned(
    _cosine_topk_kernel, CONFIGS, ["K", "KP", "HAS_IDS"], INTERP_CONFIG, prune=_prune
)
_PRECISION = {torch.float32: "tf32x3", torch.bfloat16: "ieee", torch.float16: "ieee"}


def _inverse_norms(z: torch.Tensor) -> torch.Tensor:
    norm = z.float().norm(dim=1)
    return torch.where(
        norm > 0, 1.0 / norm.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(norm)
    )


def _column_ranks(c_ids: torch.Tensor | None, m: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rank [m] int32: the tie-break order of each column, ids_by_rank [m] int64: the id at each rank)."""
    if c_ids is None:
        ids = torch.arange(m, device=device)
        return ids.int(), ids
    order = c_ids.argsort(stable=True)
    rank = torch.empty(m, dtype=torch.int32, device=device)
    rank[order] = torch.arange(m, dtype=torch.int32, device=device)
    return rank, c_ids[order].long()


def unpack_keys(keys: torch.Tensor, ids_by_rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 keys -> (fp32 values, int64 ids); the empty key gives (-inf, PAD_ID)."""
    empty = keys == MIN_KEY
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered >= 0, ordered, ordered ^ LOW31)
    vals = bits.view(torch.float32)
    rank = LOW31 - (keys & 0xFFFFFFFF)
    ids = ids_by_rank[rank.clamp(0, max(ids_by_rank.numel() - 1, 0))] if ids_by_rank.numel() else rank
    vals = torch.where(empty, torch.full_like(vals, float("-inf")), vals)
    return vals, torch.where(empty, torch.full_like(ids, PAD_ID), ids)


def _splits(n_row_tiles: int, m: int, block_m: int, device) -> tuple[int, int]:
    """(chunk, splits) of the columns so that about `program_target` programs run."""
    want = triton.cdiv(program_target(device), max(n_row_tiles, 1))
    splits = max(1, min(want, triton.cdiv(m, 2 * max(block_m, SPLIT_GRANULE))))
    chunk = SPLIT_GRANULE * triton.cdiv(triton.cdiv(m, splits), SPLIT_GRANULE)
    return chunk, triton.cdiv(m, chunk)


def cosine_topk_triton(q, c, k: int, *, q_ids=None, c_ids=None, meta: dict | None = None):
    """Triton version of `cosine_topk_reference`: (vals fp32 [n, k], ids int64, sums fp32 [n], counts int64).

    `meta` forces one config ({"BLOCK_N", "BLOCK_M", "BLOCK_K", "num_warps", "num_stages"})."""
    _check_inputs(q, c, k, q_ids, c_ids)
    dtype = check_float_inputs("cosine_topk", q=q, c=c)
    if k > MAX_K:
        raise ValueError(f"the Triton kernel takes k <= {MAX_K}; found {k} (use backend='torch')")
    (n, K), m, dev = q.shape, c.shape[0], q.device
    kp = max(16, triton.next_power_of_2(k))
    has_ids = q_ids is not None and c_ids is not None
    rank, ids_by_rank = _column_ranks(c_ids, m, dev)
    if n == 0 or m == 0:
        vals = torch.full((n, k), float("-inf"), device=dev)
        return (
            vals,
            torch.full((n, k), PAD_ID, dtype=torch.long, device=dev),
            q.new_zeros(n, dtype=torch.float32),
            torch.zeros(n, dtype=torch.long, device=dev),
        )
    q, c = (t if t.stride(1) == 1 else t.contiguous() for t in (q, c))
    row_block = meta["BLOCK_N"] if meta else 64
    chunk, splits = _splits(triton.cdiv(n, row_block), m, 64, dev)
    keys = torch.empty(splits, n, kp, dtype=torch.int64, device=dev)
    sums = torch.empty(splits, n, dtype=torch.float32, device=dev)
    counts = torch.empty(splits, n, dtype=torch.int32, device=dev)
    qi = q_ids.to(device=dev, dtype=torch.long) if has_ids else rank
    ci = c_ids.to(device=dev, dtype=torch.long) if has_ids else rank
    args = (q, c, _inverse_norms(q), _inverse_norms(c), qi, ci, rank, keys, sums, counts,
            n, m, K, chunk, q.stride(0), c.stride(0))  # fmt: skip
    kmeta = {"HAS_IDS": has_ids, "KP": kp, "UPCAST": INTERPRETING, "PRECISION": _PRECISION[dtype]}
    grid = lambda meta_: (triton.cdiv(n, meta_["BLOCK_N"]), splits)  # noqa: E731
    if meta is not None:
        _cosine_topk_kernel[grid({**meta})](*args, **kmeta, **meta)
    else:
        _KERNEL[grid](*args, **kmeta, **_INTERP_META)
    merged = keys.permute(1, 0, 2).reshape(n, splits * kp)
    top = merged.topk(k, dim=1).values  # sorted; keys are unique, so the order is deterministic
    vals, ids = unpack_keys(top, ids_by_rank)
    return vals, ids, sums.sum(0), counts.sum(0).long()


def aot_variants() -> list[dict]:
    """Every (config, dtype, KP, ids) this module launches on CUDA, as `triton.compile` inputs (aot_sm90.py)."""
    out = []
    for dtype, ptr in ((torch.bfloat16, "*bf16"), (torch.float32, "*fp32")):
        sig = {"q_ptr": ptr, "c_ptr": ptr, "inv_q_ptr": "*fp32", "inv_c_ptr": "*fp32", "q_ids_ptr": "*i64",
               "c_ids_ptr": "*i64", "rank_ptr": "*i32", "keys_ptr": "*i64", "sums_ptr": "*fp32",
               "counts_ptr": "*i32", "n": "i32", "m": "i32", "K": "i32", "chunk": "i32", "stride_q": "i32",
               "stride_c": "i32"}  # fmt: skip
        aligned = [a for a in sig if a not in ("n", "m")]
        for kp in (16, 32, 64):
            for cfg in configs_for(str(dtype).removeprefix("torch.")):
                bn, bm, bk, warps, stages = cfg
                meta = {"HAS_IDS": True, "KP": kp, "BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk,
                        "UPCAST": False, "PRECISION": _PRECISION[dtype]}  # fmt: skip
                out.append({
                    "kernel": "cosine_topk", "fn": _cosine_topk_kernel, "signature": sig, "constexprs": meta,
                    "aligned": aligned, "num_warps": warps, "num_stages": stages,
                    "dtype": str(dtype).removeprefix("torch."), "shape": {"k": kp},
                    "config": {"BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages},
                })  # fmt: skip
    return out
