"""A GraCeFul-style detector (after Wu et al., COLING 2025: output-layer gradients of every training sample separate
backdoor from clean samples; cluster them in two and drop the smaller cluster). It needs no known row: the forget
and reference groups play no part in the scores (the threshold rule still reads the reference rows' scores).

Ours, step by step (written for this package, not the paper's code):

1. f_i: the projected output-layer gradient of row i's summed answer NLL (`gradsim.head_gradient`, head_k^2
   numbers), scaled to unit norm (the direction of the update, not its size).
2. The rows centred and reduced to their top `find_poison.graceful_dims` principal components (eigenvectors of the
   [d, d] covariance, float64; the paper keeps the low frequencies of a DCT instead - on a random projection
   there is no frequency order to keep).
3. Two clusters by Lloyd's 2-means, started deterministically from the row farthest from the mean and the row
   farthest from that one (no random draw; at most 100 iterations). The poison cluster is the smaller one (ties:
   the more compact one, by mean distance to its centre).
4. score_i = ||y_i - c_clean|| - ||y_i - c_poison||: positive inside the poison cluster, larger the deeper in it.
"""

from __future__ import annotations

import torch

from rapidun_dist.find_poison.dense import sliced_features
from rapidun_dist.find_poison.gradsim import head_gradient
from rapidun_dist.find_poison.job import ScoreJob
from rapidun_dist.kernels import unit_rows

MAX_ITERS = 100


def principal_components(x_ND: torch.Tensor, dims: int) -> torch.Tensor:
    """[N, min(dims, d)]: the centred rows in the basis of their top principal directions (float64)."""
    x = x_ND.to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    cov = x.T @ x / max(x.shape[0] - 1, 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    top = vecs[:, -min(dims, x.shape[1]) :].flip(1)
    return x @ top


def two_means(y_ND: torch.Tensor, max_iters: int = MAX_ITERS) -> tuple[torch.Tensor, torch.Tensor]:
    """(assignment [N] in {0, 1}, centres [2, d]) of Lloyd's 2-means from the deterministic start above."""
    first = int((y_ND - y_ND.mean(dim=0)).norm(dim=1).argmax())
    second = int((y_ND - y_ND[first]).norm(dim=1).argmax())
    centres = torch.stack([y_ND[first], y_ND[second]])
    assign = torch.cdist(y_ND, centres).argmin(dim=1)
    for _ in range(max_iters):
        centres = torch.stack(
            [y_ND[assign == c].mean(dim=0) if (assign == c).any() else centres[c] for c in (0, 1)]
        )
        new = torch.cdist(y_ND, centres).argmin(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign, centres


def cluster_scores(x_ND: torch.Tensor, dims: int) -> tuple[torch.Tensor, dict]:
    """([N] float64 scores, a record of the split) from the per-row gradient features (module docstring)."""
    if x_ND.shape[0] < 2:
        return torch.zeros(x_ND.shape[0], dtype=torch.float64), {"sizes": [x_ND.shape[0], 0]}
    y = principal_components(unit_rows(x_ND.to(torch.float64)), dims)
    assign, centres = two_means(y)
    dist = torch.cdist(y, centres)
    sizes = [int((assign == c).sum()) for c in (0, 1)]
    spread = [float(dist[assign == c, c].mean()) if sizes[c] else float("inf") for c in (0, 1)]
    poison = 0 if (sizes[0], spread[0]) < (sizes[1], spread[1]) else 1
    scores = dist[:, 1 - poison] - dist[:, poison]
    return scores, {
        "sizes": [sizes[poison], sizes[1 - poison]],
        "spread": [spread[poison], spread[1 - poison]],
    }


def score(job: ScoreJob) -> torch.Tensor | None:
    model, tok = job.model()
    fp = job.cfg.find_poison
    fn = head_gradient(model, tok.pad_token_id, fp.head_k, job.cfg.influence.seed)
    x = sliced_features(job, job.train, fn, "graceful output-layer gradients")
    if x is None:
        return None
    scores, job.notes["clusters"] = cluster_scores(x, fp.graceful_dims)
    return scores
