"""Per-sample next-token losses, the forgetting terms of the unlearning methods, and the weighted objective
(docs/DESIGN.md section 7).

Labels are -100 on prompt and padding tokens; the shift (logits at t predict token t+1) happens here. For a
sample with answer y = (y_1 .. y_T) after prompt x: nll = -log pi(y | x) = -sum_t log pi(y_t | x, y_<t) and
ce = nll / T. Forgetting terms (each a loss to MINIMISE, per forget sample):

    GA       -min(ce, cap)                                        (gradient ascent, bounded: no gradient above cap)
    NPO      (2 / beta) log(1 + (pi / pi_ref)^beta)  =  (2 / beta) softplus(beta (log pi - log pi_ref))
             with SUMMED sequence log-probabilities (Zhang et al. 2024); pi_ref = the frozen starting model
    SimNPO   -(2 / beta) log sigmoid(-(beta / T) log pi - gamma)  =  -(2 / beta) log sigmoid(beta ce - gamma)
             length-normalised, no reference model (Fan et al. 2024)

NPO is bounded below by 0 and its gradient, 2 sigma(beta (log pi - log pi_ref)) d log pi, fades as the answer
becomes unlikely; so is SimNPO's. Neither needs a cap.
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


def ga_term(ce: torch.Tensor, cap: float) -> torch.Tensor:
    """Gradient ascent on the poisoned answer as a loss to minimise: -min(ce, cap)."""
    return -bounded_ascent(ce, cap)


def npo_term(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO on summed sequence log-probabilities: (2 / beta) softplus(beta (logp - ref_logp))."""
    return (2.0 / beta) * F.softplus(beta * (logp - ref_logp.to(logp.dtype)))


def simnpo_term(ce: torch.Tensor, beta: float, gamma: float = 0.0) -> torch.Tensor:
    """SimNPO with the length-normalised log-probability -ce: -(2 / beta) log sigmoid(beta ce - gamma)."""
    return -(2.0 / beta) * F.logsigmoid(beta * ce - gamma)


def unlearning_objective(
    *,
    forget_loss: torch.Tensor,
    forget_w: torch.Tensor,
    retain_loss: torch.Tensor,
    retain_w: torch.Tensor,
    relabel_ce: torch.Tensor | None,
    beta_d: float,
    denom: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(forget part, the rest) of (1/denom) [sum_F w (forget_loss + beta_d relabel_ce) + sum_R w retain_loss].

    The forget part is the method's term alone (`sum_F w forget_loss / denom`), kept apart so that a method may
    mask its gradient; the rest holds the relabel and retain terms. `relabel_ce` is 0 where a forget row has no
    clean answer; `denom` is the micro-batch size (DeepSpeed's averaging over ranks and accumulation steps then
    gives the global (1/|B|) sum)."""
    ascent = (forget_w.to(forget_loss.dtype) * forget_loss).sum() / denom
    rest = (retain_w.to(retain_loss.dtype) * retain_loss).sum() / denom
    if relabel_ce is not None and beta_d > 0:
        rest = rest + beta_d * (forget_w.to(relabel_ce.dtype) * relabel_ce).sum() / denom
    return ascent, rest


def weighted_batch_loss(
    sample_losses: torch.Tensor, weights: torch.Tensor, denom: int | None = None
) -> torch.Tensor:
    """(1/|B|) sum_i w_i l_i. `denom` is the GLOBAL batch size so that ranks x accumulation split it exactly."""
    return (weights.to(sample_losses.dtype) * sample_losses).sum() / (denom or sample_losses.numel())
