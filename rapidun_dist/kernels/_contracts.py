"""What each kernel and its PyTorch reference share: limits, the token layout, input checks.

The reference modules (`cosine_topk.py`, `token_projection.py`) dispatch to their Triton files, and the Triton
files read their limits and checks from here, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rapidun_dist.kernels._dispatch import debug_checks

PAD_ID = -1
TRITON_MAX_K = (
    64  # the kernel keeps the running top-k in registers (cosine_topk_triton.py); larger k: reference
)


def check_topk_inputs(q, c, k, q_ids, c_ids) -> None:
    if q.dim() != 2 or c.dim() != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"q [n, K] and c [m, K] must share K; found {tuple(q.shape)} and {tuple(c.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1; found {k}")
    if q_ids is not None and q_ids.shape != (q.shape[0],):
        raise ValueError(f"q_ids must be [n={q.shape[0]}]; found {tuple(q_ids.shape)}")
    if c_ids is not None and c_ids.shape != (c.shape[0],):
        raise ValueError(f"c_ids must be [m={c.shape[0]}]; found {tuple(c_ids.shape)}")


MAX_TRITON_K = 128  # one [k_out, k_in] accumulator tile per program


@dataclass(frozen=True)
class TokenLayout:
    """Which rows of a [R, d] activation are tracked tokens, grouped by sample.

    rows [N] int64 (row of token n, ascending within each sample), sample [N] int32 (its sample),
    pos [N] int64 (its index within the sample), offsets [B + 1] int64 (sample b owns tokens
    offsets[b]:offsets[b + 1]); n_tokens, n_samples, max_count (longest sample) and n_rows (R) are host
    ints, so no kernel launch reads them back from the device.
    """

    rows: torch.Tensor
    sample: torch.Tensor
    pos: torch.Tensor
    offsets: torch.Tensor
    n_tokens: int
    n_samples: int
    max_count: int
    n_rows: int

    @classmethod
    def from_mask(cls, mask_BT: torch.Tensor, device: torch.device | str | None = None) -> TokenLayout:
        """Tracked = True entries of a [B, T] bool mask (a CPU tensor: the layout is built on the host)."""
        if mask_BT.dim() != 2 or mask_BT.dtype != torch.bool:
            raise ValueError(
                f"mask must be a [B, T] bool tensor; found {mask_BT.dtype} {tuple(mask_BT.shape)}"
            )
        mask = mask_BT.to("cpu")  # explicitly host-side: the layout is built on the host
        counts = mask.sum(1)
        flat = mask.flatten().nonzero().squeeze(1)
        return cls._build(flat, counts, mask.numel(), device)

    @classmethod
    def from_offsets(cls, offsets: torch.Tensor, device: torch.device | str | None = None) -> TokenLayout:
        """Token-major inputs: sample b owns rows offsets[b]:offsets[b + 1] of an [N, d] tensor."""
        off = offsets.to("cpu").long()
        if off.dim() != 1 or off.numel() < 1 or int(off[0]) != 0 or bool((off[1:] < off[:-1]).any()):
            raise ValueError(
                f"offsets must be a non-decreasing 1-D tensor starting at 0; found {off.tolist()}"
            )
        n = int(off[-1])
        return cls._build(torch.arange(n, device="cpu"), off[1:] - off[:-1], n, device)

    @classmethod
    def _build(cls, rows: torch.Tensor, counts: torch.Tensor, n_rows: int, device) -> TokenLayout:
        host = torch.device("cpu")  # built on the host whatever the process default device is
        offsets = torch.zeros(counts.numel() + 1, dtype=torch.long, device=host)
        offsets[1:] = counts.cumsum(0)
        sample = torch.repeat_interleave(torch.arange(counts.numel(), device=host), counts)
        pos = torch.arange(rows.numel(), device=host) - offsets[:-1][sample]
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return cls(
            rows=rows.long().to(dev),
            sample=sample.int().to(dev),
            pos=pos.to(dev),
            offsets=offsets.to(dev),
            n_tokens=int(rows.numel()),
            n_samples=int(counts.numel()),
            max_count=int(counts.max()) if counts.numel() else 0,
            n_rows=int(n_rows),
        )

    def validate(self) -> None:
        """Full consistency check (device-to-host syncs: debug mode only, see `_dispatch.debug_checks`)."""
        ok = (
            self.rows.numel() == self.sample.numel() == self.pos.numel() == self.n_tokens
            and self.offsets.numel() == self.n_samples + 1
            and int(self.offsets[0]) == 0
            and int(self.offsets[-1]) == self.n_tokens
            and bool((self.offsets[1:] >= self.offsets[:-1]).all())
        )
        if ok and self.n_tokens:
            expect = torch.repeat_interleave(
                torch.arange(self.n_samples, device=self.offsets.device), self.offsets[1:] - self.offsets[:-1]
            )
            ok = (
                torch.equal(self.sample.long(), expect)
                and int(self.rows.min()) >= 0
                and int(self.rows.max()) < self.n_rows
            )
        if not ok:
            raise ValueError(
                f"inconsistent TokenLayout (N={self.n_tokens}, B={self.n_samples}, R={self.n_rows})"
            )


def check_projection_inputs(g, v, layout: TokenLayout, p_out) -> None:
    if g.dim() != 2 or v.dim() != 2 or p_out.dim() != 2:
        raise ValueError(
            f"g [R, d_out], v [N, k_in] and p_out [k_out, d_out] must be 2-D; found {tuple(g.shape)}, "
            f"{tuple(v.shape)}, {tuple(p_out.shape)}"
        )
    if g.shape[0] != layout.n_rows or v.shape[0] != layout.n_tokens:
        raise ValueError(
            f"layout expects g with {layout.n_rows} rows and v with {layout.n_tokens}; found {g.shape[0]} and {v.shape[0]}"
        )
    if p_out.shape[1] != g.shape[1]:
        raise ValueError(f"p_out must be [k_out, {g.shape[1]}]; found {tuple(p_out.shape)}")
    if debug_checks():
        layout.validate()
