"""GPU tests (`pytest -m gpu`; skipped without CUDA, deselected by default): the Triton kernels against float64 on
fresh random inputs, bf16 by default on CUDA, every tensor of a stage on the device, and the implant's recorded
dtypes. On the GPU machine: `python3 -m pytest -m gpu tests/gpu` with the package installed (benchmarks/README.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rapidun_dist.kernels import (
    TokenLayout,
    cosine_topk,
    cosine_topk_reference,
    merge_topk,
    projected_outer_sums,
    projected_outer_sums_reference,
    unit_rows,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
ROOT = Path(__file__).resolve().parents[2]
DEVICE = "cuda"
SMALL = [
    "data.n_synthetic=400",
    "data.n_val=20",
    "data.n_test_clean=20",
    "data.n_test_seen=12",
    "data.n_test_ood=12",
    "model.tiny.hidden_size=64",
    "model.tiny.intermediate_size=128",
    "model.tiny.vocab_size=400",
    "model.max_length=64",
    "implant.max_steps=4",
    "methods=[rapidun]",
]


def _gen() -> torch.Generator:
    seed = int(os.environ.get("RAPIDUN_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"seed = {seed}")
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 8e-3), (torch.float32, 2e-3)])
@pytest.mark.parametrize("d, k", [(4096, 32), (14336, 64), (576, 128)])
def test_projection_kernel_vs_float64(dtype, tol, d, k):
    gen = _gen()
    mask = torch.rand(24, 96, generator=gen) < 0.6
    layout = TokenLayout.from_mask(mask, DEVICE)
    g = (torch.randn(mask.numel(), d, generator=gen) * 1e-2).to(DEVICE, dtype)
    v = unit_rows(torch.randn(layout.n_tokens, k, generator=gen)).to(DEVICE, dtype)
    p_out = (torch.randn(k, d, generator=gen) / k**0.5).to(DEVICE, dtype)
    got = projected_outer_sums(g, v, layout, p_out)  # auto: the Triton kernel on CUDA
    ref = projected_outer_sums_reference(g.double(), v.double(), layout, p_out.double())
    tokens = (layout.offsets[1:] - layout.offsets[:-1]).clamp_min(1).double()
    err = ((got.double() - ref).abs().amax(dim=(1, 2)) / tokens).max().item()
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert err <= tol, err


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 1e-4), (torch.float32, 1e-5)])
def test_cosine_topk_kernel_vs_float64(dtype, tol):
    gen = _gen()
    c = torch.randn(3000, 1024, generator=gen)
    q = torch.cat([c[:100] * 2, torch.randn(156, 1024, generator=gen)])
    ids = torch.randperm(3000, generator=gen)
    q_ids, c_ids = ids[torch.arange(256) % 3000].to(DEVICE), ids.to(DEVICE)
    q, c = q.to(DEVICE, dtype), c.to(DEVICE, dtype)
    vals, got_ids, sums, counts = cosine_topk(q, c, 40, q_ids=q_ids, c_ids=c_ids)
    rv, ri, rs, rc = cosine_topk_reference(q.double(), c.double(), 40, q_ids=q_ids, c_ids=c_ids)
    assert (vals.double() - rv).abs().max() <= tol
    assert (sums.double() - rs).abs().max() <= tol * 3000 and torch.equal(counts, rc)
    gap = (rv[:, :-1] - rv[:, 1:]).abs()
    distinct = torch.cat([gap[:, :1], torch.minimum(gap[:, 1:], gap[:, :-1]), gap[:, -1:]], 1) > 4 * tol
    assert torch.equal(got_ids[distinct], ri[distinct])


def test_cosine_topk_full_size_rows_past_2_31():
    """The Llama-3-8B configs' K = 229,376: rows from 9,363 on start past 2^31 elements (int64 offsets)."""
    gen = torch.Generator(device=DEVICE).manual_seed(int.from_bytes(os.urandom(4), "little"))
    m, K = 9472, 7 * 32 * 32 * 32
    c = torch.randn(m, K, generator=gen, device=DEVICE, dtype=torch.bfloat16)
    far = torch.arange(9400, 9408, device=DEVICE)
    q = torch.cat([c[far], torch.randn(8, K, generator=gen, device=DEVICE, dtype=torch.bfloat16)])
    vals, ids, _, _ = cosine_topk(q, c, 16)
    ref_v = ref_i = None
    for j0 in range(0, m, 2048):  # the float64 reference in row chunks (the whole c in float64: 17 GB)
        cols = torch.arange(j0, min(j0 + 2048, m), device=DEVICE)
        v, i, _, _ = cosine_topk_reference(q.double(), c[j0 : j0 + 2048].double(), 16, c_ids=cols)
        ref_v, ref_i = (v, i) if ref_v is None else merge_topk(ref_v, ref_i, v, i, 16)
    assert torch.equal(ids[:8, 0], far)
    assert (vals.double() - ref_v).abs().max() <= 1e-4
    assert torch.equal(ids[:8], ref_i[:8])


def test_bf16_by_default_and_every_tensor_on_the_device():
    from rapidun_dist.config import InfluenceConfig, TinyModelConfig
    from rapidun_dist.influence import features
    from rapidun_dist.models.loading import build_tiny_model, torch_dtype

    dtype = torch_dtype("auto", DEVICE)
    assert dtype == torch.bfloat16
    model = build_tiny_model(TinyModelConfig(), vocab_size=300, max_length=64, device=DEVICE).to(dtype)
    seen = []

    def pre(module, args):
        for t in [*args, *module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if torch.is_tensor(t):
                assert t.device.type == "cuda", f"{type(module).__name__}: {t.device}"
        seen.append(module)

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    gen = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(4):
        ids = torch.randint(1, 300, (40,), generator=gen).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * 20 + ids[20:]})
    feats = features.make_extractor(model, InfluenceConfig(k_in=16, k_out=16), pad_id=0)(examples)
    for h in handles:
        h.remove()
    assert seen and feats.device.type == "cuda" and torch.isfinite(feats).all()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_implant_trains_and_records_bf16(tmp_path):
    """The implanted model trains in bf16 on CUDA (model.dtype auto), and train_stats.json says so."""
    pytest.importorskip("deepspeed")
    from rapidun_dist.config import load_config
    from rapidun_dist.core.io import read_json
    from rapidun_dist.pipeline import run_pipeline

    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", [f"run_dir={tmp_path / 'run'}", *SMALL])
    rd = run_pipeline(cfg, ["prepare", "implant"])
    stats = read_json(rd.model / "train_stats.json")
    assert stats["param_dtypes"] == ["bfloat16"]
    assert all(torch.isfinite(torch.tensor(stats["losses"])))
