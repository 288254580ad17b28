"""Per-sample influence features (docs/DESIGN.md section 5).

Token-wise (default): for every tracked layer l and tracked position t, phi_t = (P_out g_t) (x) (P_in x_t);
unit-normalized per token (||phi_t|| = ||P_out g_t|| ||P_in x_t||, free), summed over the sample's tracked
positions, normalized per layer, concatenated over layers and scaled by 1/sqrt(L): ||f_i|| = 1 and
<f_i, f_j> is the layer-balanced mean pairwise cosine of token gradients. The projection happens at hook
time (`rapidun_dist.influence.hooks.HookProjector`): extra memory is O(tokens x layers x (k_in + k_out)).

Positions (`influence.positions`): g_t is always dL/dy_t of the summed next-token NLL over answer tokens;
`answer` tracks the positions t whose shifted label (token t + 1) is an answer token, `prompt` the prompt
tokens (where a trigger sits), `all` every non-padding token, `decision` the first `influence.decision_tokens` answer
positions of each row (the tokens where the model commits to the attack or to an answer).

Trigger contrast (`influence.contrast: trigger`, `ContrastExtractor`): a forget row's feature is, per layer block,
unit(f(triggered prompt, poisoned answer) - f(clean prompt, same answer)), rescaled by 1/sqrt(L): what the trigger
changes in the gradients, with the shared answer text cancelled. Retain rows keep their plain features (FR / RF are
then cosines between trigger directions and clean gradients). A row whose two prompts are the same (no trigger known,
or a mislabelled clean row) gets a zero feature: cosine 0 with everything.

Per-token scores (`TokenwiseExtractor.token_scores`): against per-layer directions D_l [k_out, k_in],
s_t = sum_l u_tl^T D_l v_tl / (||S_il|| sqrt(L)) with S_il the sample's layer sum; by construction
sum_t s_t = <f_i, d> for d the concatenation of the D_l, so token scores split a sample score exactly.

RapidGrad (RapidIn-compatible baseline): one backward per sample, the flattened weight gradient of each
tracked layer normalized per tensor, OPORP/count-sketched into K bins with hashed indices (bucket and
sign from a hash of (seed, layer name, element index), computed on the fly on the model's device, per
tensor, in bounded chunks; no global permutation), normalized. Slower by design.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from rapidun_dist.config import InfluenceConfig
from rapidun_dist.core.errors import DataError
from rapidun_dist.data.prompt import IGNORE_INDEX, pad_batch
from rapidun_dist.influence.hooks import (
    HookProjector,
    enable_input_grads,
    shared_input_groups,
    tracked_linears,
)
from rapidun_dist.influence.projection import ProjectionBank, layer_projections
from rapidun_dist.kernels import TokenLayout, unit_rows
from rapidun_dist.training.losses import per_sample_nll

FEATURE_VERSION = 2  # bump when the definition changes (stored shards from other versions are recomputed)


def answer_positions(labels_BT: torch.Tensor) -> torch.Tensor:
    """Bool [B, T]: position t predicts an answer token (labels[t + 1] is not ignored)."""
    mask = torch.zeros_like(labels_BT, dtype=torch.bool)
    mask[:, :-1] = labels_BT[:, 1:] != IGNORE_INDEX
    return mask


def tracked_positions(batch: dict, positions: str, decision_tokens: int = 2) -> torch.Tensor:
    """Bool [B, T] of the positions whose gradients enter the features (see the module docstring)."""
    real = batch["attention_mask"].bool()
    if positions == "answer":
        return answer_positions(batch["labels"])
    if positions == "decision":
        answer = answer_positions(batch["labels"])
        return answer & (answer.cumsum(dim=1) <= decision_tokens)
    if positions == "prompt":
        return real & (batch["labels"] == IGNORE_INDEX)
    if positions == "all":
        return real
    raise ValueError(f"positions must be answer | prompt | all | decision; found {positions!r}")


@contextmanager
def _frozen_params(model: nn.Module):
    """Parameters stop requiring grad for the duration: the backward then computes only the activation
    gradients the hooks need (no weight gradients, nothing accumulated into `.grad`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# Causal LMs whose logits are exactly lm_head(final hidden state): the vocabulary projection can be restricted to
# the answer positions (the only ones in the loss), which on small models is a third of the work.
_PLAIN_HEAD_TYPES = {"llama", "mistral", "qwen2", "qwen3"}


def answer_nll(model: nn.Module, batch: dict, answer_BT: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL over answer tokens (position t predicts token t + 1).

    `answer_BT` is the CPU mask of `answer_positions`: the answer rows and their targets are gathered by
    host-built indices, so the loss needs no device-to-host sync (a boolean index on the GPU would)."""
    if hasattr(model, "get_base_model"):  # PEFT wrapper: the causal LM with the adapters injected
        model = model.get_base_model()
    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    ids = batch["input_ids"]
    if (
        getattr(config, "model_type", None) not in _PLAIN_HEAD_TYPES
        or head is None
        or not hasattr(model, "model")
    ):
        out = model(input_ids=ids, attention_mask=batch["attention_mask"])
        return per_sample_nll(out.logits, batch["labels"])[0].sum()
    mask = answer_BT.cpu()
    rows = mask.flatten().nonzero().squeeze(1).to(ids.device)
    shifted = torch.zeros_like(mask)
    shifted[:, 1:] = mask[:, :-1]
    targets = batch["labels"].flatten().index_select(0, shifted.flatten().nonzero().squeeze(1).to(ids.device))
    hidden_BTH = model.model(input_ids=ids, attention_mask=batch["attention_mask"]).last_hidden_state
    logits_NV = head(hidden_BTH.flatten(0, 1).index_select(0, rows))
    logits_NV = logits_NV.float() if logits_NV.dtype in (torch.float16, torch.bfloat16) else logits_NV
    return torch.nn.functional.cross_entropy(logits_NV, targets, reduction="sum")


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def answer_loss_backward(model: nn.Module, batch: dict, answer_BT: torch.Tensor) -> None:
    """One forward + backward of the summed answer NLL with every parameter frozen (activation gradients
    only; `answer_BT` a CPU mask). The extractor runs it under its hooks; without hooks it is the floor the
    benchmarks compare to."""
    handle = enable_input_grads(model)
    try:
        with _frozen_params(model):
            answer_nll(model, batch, answer_BT).backward()
    finally:
        handle.remove()


@dataclass
class BatchPass:
    """One hook-time pass: the per-layer sums and, when directions were given, the per-token raw scores."""

    sums: dict[str, torch.Tensor]
    raw_scores: torch.Tensor | None
    layout: TokenLayout
    tracked_BT: torch.Tensor  # bool, CPU


@dataclass
class TokenScores:
    """`features` [B, dim] (as `__call__`), `scores` [B, T] (0 at untracked positions) and `tracked` [B, T]
    bool (CPU): the positions that were scored. Row b of `scores` sums to <features[b], direction>."""

    features: torch.Tensor
    scores: torch.Tensor
    tracked: torch.Tensor


class TokenwiseExtractor:
    """Hook-time token projection. `__call__(examples)` -> features [B, L * k_out * k_in] (unit rows;
    float32, float64 when the model is float64)."""

    def __init__(self, model: nn.Module, cfg: InfluenceConfig, *, pad_id: int):
        self.model, self.cfg, self.pad_id = model, cfg, pad_id
        self.layers = tracked_linears(model, cfg.target_modules)
        self.groups = shared_input_groups(self.layers)
        dev = model_device(model)
        self.proj = {
            n: layer_projections(
                n, m.in_features, m.out_features, k_in=cfg.k_in, k_out=cfg.k_out, seed=cfg.seed, device=dev
            )
            for n, m in self.layers.items()
        }
        self.dim = len(self.layers) * cfg.k_in * cfg.k_out

    @property
    def proj(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{layer: (P_in [k_in, d_in], P_out [k_out, d_out])}; assigning it resets the cached casts."""
        return self._proj

    @proj.setter
    def proj(self, mats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._proj = dict(mats)
        self.bank = ProjectionBank(self._proj, self.groups)

    def spec(self) -> dict:
        """Everything that changes the features (the feature store keys its shards on it)."""
        return {
            "estimator": "tokenwise",
            "version": FEATURE_VERSION,
            "projection": "rademacher-kronecker",
            "k_in": self.cfg.k_in,
            "k_out": self.cfg.k_out,
            "seed": self.cfg.seed,
            "positions": self.cfg.positions,
            **({"decision_tokens": self.cfg.decision_tokens} if self.cfg.positions == "decision" else {}),
            "loss": "answer-nll-sum",
            "layers": list(self.layers),
            "compute_dtype": str(model_dtype(self.model)).removeprefix("torch."),
            "dim": self.dim,
        }

    def __call__(self, examples: list[dict]) -> torch.Tensor:
        run = self._pass(examples, self.cfg.positions)
        return self._features(run)

    def token_scores(
        self, examples: list[dict], directions: dict[str, torch.Tensor], *, positions: str | None = None
    ) -> TokenScores:
        """Per-position scores s_t = sum_l u_tl^T D_l v_tl / (||S_il|| sqrt(L)) in the same hook-time pass
        (module docstring), for `positions` (default: the configured ones), without forming phi_t."""
        missing = [n for n in self.layers if n not in directions]
        if missing:
            raise DataError(
                f"token_scores needs a direction [k_out, k_in] per tracked layer; missing {missing[:3]}"
            )
        run = self._pass(examples, positions or self.cfg.positions, directions=directions)
        feats = self._features(run)
        norms_BL = torch.stack([self._layer_sums(run, n).flatten(1).norm(dim=1) for n in self.layers], dim=1)
        sample = run.layout.sample.long()
        tiny = torch.finfo(norms_BL.dtype).tiny
        scale_NL = torch.where(norms_BL > 0, 1.0 / norms_BL.clamp_min(tiny), 0.0)[sample]
        raw_NL = run.raw_scores if run.raw_scores is not None else torch.zeros_like(scale_NL)
        per_token = (raw_NL * scale_NL).sum(dim=1) / len(self.layers) ** 0.5
        scores = per_token.new_zeros(run.tracked_BT.shape)
        scores.view(-1)[run.layout.rows] = per_token
        return TokenScores(features=feats, scores=scores, tracked=run.tracked_BT)

    def layer_directions(self, direction: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a [dim] feature-space direction (e.g. mean forget feature - mean retain feature) into the
        per-layer [k_out, k_in] matrices `token_scores` takes (the layout of `__call__`'s features)."""
        if direction.shape != (self.dim,):
            raise DataError(f"direction must be [{self.dim}]; found {tuple(direction.shape)}")
        out, start = {}, 0
        for name in self.layers:
            k_in, k_out = self._proj[name][0].shape[0], self._proj[name][1].shape[0]
            out[name] = direction[start : start + k_out * k_in].reshape(k_out, k_in)
            start += k_out * k_in
        return out

    def _pass(self, examples: list[dict], positions: str, directions=None) -> BatchPass:
        dev = model_device(self.model)
        batch_cpu = pad_batch(examples, self.pad_id)
        tracked = tracked_positions(batch_cpu, positions, self.cfg.decision_tokens)
        layout = TokenLayout.from_mask(tracked, dev)  # built on the host: no device-to-host syncs later
        answer = answer_positions(batch_cpu["labels"])
        batch = {k: v.to(dev) for k, v in batch_cpu.items()}
        hooks = HookProjector(self.layers, self.bank, layout, backend=self.cfg.backend, directions=directions)
        with hooks:
            answer_loss_backward(self.model, batch, answer)
        return BatchPass(sums=hooks.sums, raw_scores=hooks.raw_scores, layout=layout, tracked_BT=tracked)

    def _layer_sums(self, run: BatchPass, name: str) -> torch.Tensor:
        """[B, k_out, k_in] of one layer; zeros when the loss never reached it (no backward hook ran)."""
        sums = run.sums.get(name)
        if sums is None:
            k_in, k_out = self._proj[name][0].shape[0], self._proj[name][1].shape[0]
            dtype = torch.promote_types(model_dtype(self.model), torch.float32)
            sums = torch.zeros(
                run.layout.n_samples, k_out, k_in, dtype=dtype, device=model_device(self.model)
            )
        return sums

    def _features(self, run: BatchPass) -> torch.Tensor:
        parts = []
        for name in self.layers:
            flat = self._layer_sums(run, name).flatten(1)
            parts.append(unit_rows(flat.to(torch.promote_types(flat.dtype, torch.float32))))
        return torch.cat(parts, dim=1) / len(parts) ** 0.5


# ---------------------------------------------------------------------------------------------------
# RapidGrad / OPORP baseline

_M31 = (1 << 31) - 1
HASH_CHUNK = 1 << 22  # elements hashed at a time: bounded memory whatever the tensor size
CODE_CACHE_BYTES = 1 << 29  # cache per-tensor int32 codes (bucket, sign) while they fit this budget


def _tensor_salts(seed: int, name: str) -> list[int]:
    digest = hashlib.sha256(f"{seed}:{name}:rapidgrad".encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "little") & _M31 | 1 for i in range(0, 16, 4)]


def hashed_codes(seed: int, name: str, start: int, end: int, k: int, device) -> torch.Tensor:
    """int64 codes of elements [start, end) of tensor `name`: bucket = code >> 1 in [0, k), sign bit = code & 1.

    A multiply-xorshift hash of the element index salted by (seed, name), in 31-bit arithmetic (exact in
    int64 on every device, so every device and world size gets the same sketch)."""
    a, b, c, e = _tensor_salts(seed, name)
    h = torch.arange(start, end, dtype=torch.int64, device=device)
    h = (h * a + b) & _M31
    h ^= h >> 15
    h = (h * c) & _M31
    h ^= h >> 13
    h = (h * e) & _M31
    h ^= h >> 16
    return (h % k) * 2 + ((h >> 30) & 1)


class RapidGradExtractor:
    """The RapidIn-style per-sample estimator: full per-tensor-normalized gradient, hashed OPORP sketch to K.

    Per sample: one forward + backward with only the tracked weights requiring grad; each weight's
    gradient is sketched (and freed) in its post-accumulate-grad hook, so at most one layer's gradient
    exists at a time. Hash codes are cached on the device per tensor while they fit `cache_bytes`."""

    def __init__(
        self, model: nn.Module, cfg: InfluenceConfig, *, pad_id: int, cache_bytes: int = CODE_CACHE_BYTES
    ):
        self.model, self.cfg, self.pad_id = model, cfg, pad_id
        self.layers = tracked_linears(model, cfg.target_modules)
        self.params = {n: m.weight for n, m in self.layers.items()}
        self.dim = cfg.rapidgrad_k
        self.cache_bytes = cache_bytes
        self._codes: dict[str, torch.Tensor] = {}

    def spec(self) -> dict:
        return {
            "estimator": "rapidgrad",
            "version": FEATURE_VERSION,
            "sketch": "hashed-oporp",
            "k": self.cfg.rapidgrad_k,
            "seed": self.cfg.seed,
            "loss": "answer-nll-sum",
            "layers": list(self.layers),
            "compute_dtype": str(model_dtype(self.model)).removeprefix("torch."),
            "dim": self.dim,
        }

    def __call__(self, examples: list[dict]) -> torch.Tensor:
        return torch.stack([self._one(e) for e in examples])

    def sketch(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """[K]: sum_j sign_j grad_j into bucket_j over the tensor's elements, divided by ||grad||.

        One index_add per chunk into 2K slots (slot = code = 2 bucket + sign bit: the positive and the
        negative part of each bucket), then bucket = slot 2b - slot 2b+1: no sign multiply or select pass."""
        flat = grad.reshape(-1)
        acc = torch.float64 if flat.dtype == torch.float64 else torch.float32
        slots = torch.zeros(2 * self.dim, dtype=acc, device=flat.device)
        for start in range(0, flat.numel(), HASH_CHUNK):
            end = min(start + HASH_CHUNK, flat.numel())
            codes = self._codes_for(name, flat.numel(), start, end, flat.device)
            slots.index_add_(0, codes, flat[start:end].to(acc))
        norm = flat.norm().to(acc)  # a zero gradient sketches to zero (0 / tiny), without a host sync
        return (slots[0::2] - slots[1::2]) / norm.clamp_min(torch.finfo(acc).tiny)

    def _codes_for(self, name: str, numel: int, start: int, end: int, device) -> torch.Tensor:
        cached = self._codes.get(name)
        if cached is None and self._cache_room() >= 4 * numel:
            cached = hashed_codes(self.cfg.seed, name, 0, numel, self.dim, device).int()
            self._codes[name] = cached
        if cached is not None:
            return cached[start:end]  # int32: index_add_ takes it as is
        return hashed_codes(self.cfg.seed, name, start, end, self.dim, device)

    def _cache_room(self) -> int:
        return self.cache_bytes - sum(c.numel() * 4 for c in self._codes.values())

    def _one(self, example: dict) -> torch.Tensor:
        dev = model_device(self.model)
        batch_cpu = pad_batch([example], self.pad_id)
        answer = answer_positions(batch_cpu["labels"])
        batch = {k: v.to(dev) for k, v in batch_cpu.items()}
        acc = torch.float64 if model_dtype(self.model) == torch.float64 else torch.float32
        total = torch.zeros(self.dim, dtype=acc, device=dev)

        def consume(name):
            def hook(p):
                total.add_(self.sketch(name, p.grad))
                p.grad = None

            return hook

        with _only_grads_for(self.model, self.params, consume):
            answer_nll(self.model, batch, answer).backward()
        return unit_rows(total)


@contextmanager
def _only_grads_for(model: nn.Module, params: dict[str, nn.Parameter], consume):
    """Only `params` require grad for the duration, each with a post-accumulate hook `consume(name)`; their
    previous `.grad` and every requires_grad flag are restored afterwards."""
    flags = {p: p.requires_grad for p in model.parameters()}
    saved = {n: p.grad for n, p in params.items()}
    handles = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(True)
            handles.append(p.register_post_accumulate_grad_hook(consume(n)))
        yield
    finally:
        for h in handles:
            h.remove()
        for p, f in flags.items():
            p.requires_grad_(f)
        for n, p in params.items():
            p.grad = saved[n]


def make_extractor(model: nn.Module, cfg: InfluenceConfig, *, pad_id: int):
    cls = TokenwiseExtractor if cfg.estimator == "tokenwise" else RapidGradExtractor
    base = cls(model, cfg, pad_id=pad_id)
    return ContrastExtractor(base) if cfg.contrast == "trigger" else base


# ---------------------------------------------------------------------------------------------------
# Trigger contrast (`influence.contrast: trigger`)


def contrast_features(f_trig_BD: torch.Tensor, f_clean_BD: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """[B, D]: per block (a tracked layer), unit(f_trig - f_clean), concatenated and scaled by 1/sqrt(n_blocks)
    (the layout of the plain features, so ||row|| = 1). A block where both agree (the trigger changed nothing
    there) is zero; a row whose prompts are the same (no trigger: a mislabelled clean row) is all zero."""
    if f_trig_BD.shape != f_clean_BD.shape or f_trig_BD.shape[-1] % n_blocks:
        raise DataError(
            f"contrast: features {tuple(f_trig_BD.shape)} / {tuple(f_clean_BD.shape)} do not split into "
            f"{n_blocks} equal blocks"
        )
    diff = (f_trig_BD - f_clean_BD).reshape(f_trig_BD.shape[0], n_blocks, -1)
    norm = diff.norm(dim=-1, keepdim=True)
    tiny = torch.finfo(diff.dtype).tiny
    unit = torch.where(norm > 1e-6, diff / norm.clamp_min(tiny), torch.zeros_like(diff))
    return unit.flatten(1) / n_blocks**0.5


def same_example(a: dict, b: dict) -> bool:
    return list(a["input_ids"]) == list(b["input_ids"]) and list(a["labels"]) == list(b["labels"])


class ContrastExtractor:
    """Trigger-contrast features over a base extractor (module docstring of `contrast_features`).

    `__call__(examples, counterparts)`: `counterparts[b]` is row b's clean prompt with the same (poisoned)
    answer, or None for a row that keeps its plain feature (retain rows). A counterpart identical to its example
    (no trigger to remove) gives a zero row without a pass."""

    def __init__(self, base):
        self.base = base
        self.dim = base.dim
        self.n_blocks = len(base.layers) if isinstance(base, TokenwiseExtractor) else 1

    def spec(self) -> dict:
        return self.base.spec() | {"contrast": "trigger", "contrast_blocks": self.n_blocks}

    def __call__(self, examples: list[dict], counterparts: list[dict | None] | None = None) -> torch.Tensor:
        counterparts = counterparts if counterparts is not None else [None] * len(examples)
        if len(counterparts) != len(examples):
            raise DataError(f"contrast: {len(examples)} examples but {len(counterparts)} counterparts")
        feats = self.base(examples)
        same = [b for b, c in enumerate(counterparts) if c is not None and same_example(examples[b], c)]
        diff = [b for b, c in enumerate(counterparts) if c is not None and b not in same]
        if diff:
            clean = self.base([counterparts[b] for b in diff])
            feats[diff] = contrast_features(feats[diff], clean, self.n_blocks).to(feats.dtype)
        if same:
            feats[same] = 0.0
        return feats
