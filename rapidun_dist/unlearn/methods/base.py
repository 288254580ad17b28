"""The method interface: what one unlearning method hands the one engine and loop (docs/DESIGN.md section 7).

A method owns its loss terms, its per-sample weights and its hooks; the engine names no method. Per micro-batch
the engine forwards the rows once and gives the method, for its forget rows, the poisoned answers' summed NLL
(-log pi(y|x)), answer-token counts and mean CE (`ForgetTerms`), and for its retain rows their mean CE. The
method returns per-sample losses to minimise. The engine then adds the protocol's relabel term (beta_d x CE of
the clean answer on the triggered prompt, `unlearn.relabel`) to every method's forget rows alike, scales each
row by the method's weight and normalises by the global batch B (so ranks x accumulation add up exactly):

    L = (1/|B|) [ sum_{i in F_B} w_i (forget_loss_i + beta_d CE_clean_i) + sum_{j in R_B} w_j retain_loss_j ]

Methods published with per-group means (GA, GradDiff, NPO, SimNPO) scale their terms by |B| / |F_B| and
|B| / |R_B| (`BatchShape.forget_scale` / `retain_scale`), which turns the sums above into their means.

Hooks, all optional: `setup(ctx)` once the engine is built (load weights, precompute reference log-probs);
`after_step(ctx, step)` after each optimizer step (refresh weights, measure a saliency); `ascent_mask()`
per-coordinate 0/1 masks applied to the gradient of the forget term only; `state_dict()` / `load_state_dict()`
the tensors a checkpoint must carry so that a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from rapidun_dist.config import UnlearnConfig
from rapidun_dist.config.methods import METHOD_SPECS


@dataclass(frozen=True)
class BatchShape:
    """The composition of every global batch (the same for every method: equal forget-row visits)."""

    size: int
    n_forget: int
    n_retain: int

    @property
    def forget_scale(self) -> float:
        """|B| / |F_B|: turns the forget rows' share of (1/|B|) sum into their mean."""
        return self.size / max(self.n_forget, 1)

    @property
    def retain_scale(self) -> float:
        return self.size / max(self.n_retain, 1)


@dataclass(frozen=True)
class ForgetTerms:
    """What the engine measured on the forget rows of one micro-batch (graph attached)."""

    index: torch.Tensor  # [n] positions in the forget pack
    nll: torch.Tensor  # [n] summed NLL of the poisoned answer = -log pi_theta(y_p | x_triggered)
    n_tokens: torch.Tensor  # [n] answer tokens
    ce: torch.Tensor  # [n] nll / n_tokens (mean CE per answer token)


class MethodContext(Protocol):
    """The services of the engine a hook may use (implemented by `UnlearnRunner`)."""

    cfg: object
    weights_dir: object
    device: torch.device
    total_steps: int

    def pack_features(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Token-wise features of every forget row's poisoned answer and every retain row under the current
        adapter: (forget [nf, K], retain [nr, K] float64 CPU, the feature spec); the same on every rank."""

    def forget_nll_all(self, *, adapter: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed NLL, answer tokens) of every forget row's poisoned answer, no grad, eval mode (CPU tensors)."""

    def per_sample_grad_sq(self, kind: str, limit: int) -> list[torch.Tensor]:
        """Mean over up to `limit` rows of `kind` ("forget": poisoned answers, "retain") of the squared
        per-sample gradient of each trainable parameter."""

    def trainable_params(self) -> list[torch.nn.Parameter]: ...


class Method:
    """Base class: uniform weights, no hooks. A subclass sets `name` (its declared properties come from the
    registry, `rapidun_dist.config.methods`) and overrides `forget_loss` and the hooks it needs."""

    name: ClassVar[str] = ""
    doc: ClassVar[str] = ""
    uses_retain: ClassVar[bool] = True
    """Descend on retain rows (False: their rows in the shared batches are skipped, the batches stay the same)."""
    ascent: ClassVar[bool] = True
    """Has a forgetting term on the poisoned answers (False: relabel and retain descent only)."""
    zero3: ClassVar[bool] = True
    """Runs under ZeRO-3 (False: refused before any model is loaded, with `zero3_reason`)."""
    zero3_reason: ClassVar[str] = ""
    uses_influence: ClassVar[bool] = False
    """Reads per-sample weights from the weights stage."""

    weights_subdir: ClassVar[str] = ""
    """Which weights the method reads (weights/ or weights/<subdir>/)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        spec = METHOD_SPECS.get(cls.__dict__.get("name", ""))
        if spec is None:
            raise TypeError(
                f"{cls.__name__}: name {cls.__dict__.get('name')!r} is not in the method registry"
            )
        cls.doc, cls.uses_retain, cls.ascent = spec.doc, spec.uses_retain, spec.ascent
        cls.zero3, cls.uses_influence, cls.weights_subdir = (
            spec.zero3,
            spec.uses_influence,
            spec.weights_subdir,
        )
        cls.zero3_reason = spec.zero3_reason

    def __init__(self, u: UnlearnConfig, shape: BatchShape, n_forget: int, n_retain: int):
        self.u, self.shape = u, shape
        self.forget_w = torch.ones(n_forget, device="cpu")  # host-side, per pack row
        self.retain_w = torch.ones(n_retain, device="cpu")

    # losses -------------------------------------------------------------------------------------------
    def forget_loss(self, t: ForgetTerms) -> torch.Tensor:
        raise NotImplementedError

    def retain_loss(self, ce: torch.Tensor) -> torch.Tensor:
        return ce

    # hooks --------------------------------------------------------------------------------------------
    def setup(self, ctx: MethodContext) -> None:
        """Once, after the engine is built and before the first step (and before a resume is loaded)."""

    def after_step(self, ctx: MethodContext, step: int) -> None:
        """After optimizer step `step` (1-based)."""

    def ascent_mask(self) -> list[torch.Tensor] | None:
        """0/1 masks, one per trainable parameter, for the gradient of the forget term (None: no mask)."""
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned (a resumed run)."""

    def describe(self) -> dict:
        """What the summary should say about this method's weights and hooks."""
        return {}


def weight_stats(w: torch.Tensor) -> dict:
    w = w.double()
    return {"min": float(w.min()), "max": float(w.max()), "std": float(w.std()) if w.numel() > 1 else 0.0}
