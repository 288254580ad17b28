"""Per-sample next-token losses and the weighted unlearning objective (DESIGN section 7).

Labels are -100 on prompt and padding tokens; the shift (logits at t predict token t+1) happens here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rapidun_dist.data.prompt import IGNORE_INDEX


def per_sample_nll(logits_BTV: torch.Tensor, labels_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token NLL, number of answer tokens) per sample, with the next-token shift."""
    logits = logits_BTV[:, :-1]
    logits = logits if logits.dtype == torch.float64 else logits.float()  # fp16/bf16 -> fp32; fp64 stays fp64
    labels = labels_BT[:, 1:]
    mask = labels != IGNORE_INDEX
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.clamp_min(0).reshape(-1), reduction="none"
    )
    nll = nll.view(labels.shape) * mask
    return nll.sum(1), mask.sum(1)


def per_sample_ce(logits_BTV: torch.Tensor, labels_BT: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE over each sample's answer tokens (0 for a sample without answer tokens)."""
    total, count = per_sample_nll(logits_BTV, labels_BT)
    return total / count.clamp_min(1)


def bounded_ascent(ce_poisoned: torch.Tensor, cap: float) -> torch.Tensor:
    """The ascent term's CE, capped: above `cap` it contributes no gradient (it cannot run away)."""
    return torch.clamp(ce_poisoned, max=cap)


def unlearning_sample_losses(
    *,
    ce_main: torch.Tensor,
    ce_clean: torch.Tensor | None,
    has_clean: torch.Tensor | None,
    is_forget: torch.Tensor,
    alpha_a: float,
    beta_d: float,
    ascent_cap: float,
    ascent: str = "ga",
    ref_ce: torch.Tensor | None = None,
    npo_beta: float = 0.1,
    descent_on_retain: bool = True,
) -> torch.Tensor:
    """Per-sample losses l_i.

    retain i: l_i = CE(y_i)                            (0 when `descent_on_retain` is off)
    forget i: l_i = beta_d CE(y_i_clean) [has clean] - alpha_a * A(CE(y_i_poisoned))

    A is the capped CE for gradient ascent ("ga") or, for "npo", the negative-preference term
    -(2/beta) log sigmoid(-beta (logp - logp_ref)) written as a loss to *minimize* (so it enters with +).
    `ce_main` holds CE(y_i) for retain rows and CE(y_i_poisoned) for forget rows.
    """
    forget = is_forget.bool()
    retain_loss = ce_main if descent_on_retain else torch.zeros_like(ce_main)
    if ascent == "npo":
        if ref_ce is None:
            raise ValueError("npo needs ref_ce (the frozen model's CE on the poisoned answers)")
        # log-ratio of per-token-mean likelihoods: logp - logp_ref = ref_ce - ce
        forget_term = -(2.0 / npo_beta) * F.logsigmoid(-npo_beta * (ref_ce - ce_main)) * alpha_a
    else:
        forget_term = -alpha_a * bounded_ascent(ce_main, ascent_cap)
    if ce_clean is not None and beta_d > 0:
        forget_term = forget_term + beta_d * ce_clean * (
            has_clean.to(ce_clean.dtype) if has_clean is not None else 1.0
        )
    return torch.where(forget, forget_term, retain_loss)


def weighted_batch_loss(
    sample_losses: torch.Tensor, weights: torch.Tensor, denom: int | None = None
) -> torch.Tensor:
    """(1/|B|) sum_i w_i l_i. `denom` is the GLOBAL batch size so that ranks x accumulation split it exactly."""
    return (weights.to(sample_losses.dtype) * sample_losses).sum() / (denom or sample_losses.numel())
