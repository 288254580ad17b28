"""The unlearning engine: LoRA adapters on a frozen backbone, trained by DeepSpeed (ZeRO 0-3), for any method.

Lifecycle: `UnlearnRunner(...).setup()` -> `.train()` -> `.save()` -> `.cleanup()` (also on failure).
The engine knows no method by name: `rapidun_dist.unlearn.methods.build_method` gives it an object that owns its
loss terms, weights and hooks (methods/base.py states the objective). Per step, every method sees the same global
batch (sampler.py: a function of the seed only), so every method visits the same forget rows the same number of
times; a method without a retain term skips the retain rows of those batches.

Stopping (budget.py): at most the step budget (unlearn.max_steps or unlearn.epochs); every unlearn.val_every steps
the validation splits are measured (validation.py, not counted as unlearning time) and the run stops once the
backdoor signal is gone (adaptive budget) or the clean-PPL ratio passes unlearn.max_ppl_ratio (restoring the best
earlier adapter); also on the forget-CE threshold; and on a preemption request (checkpoint, then StageError).

The DeepSpeed stack is the package's one (training/): the config builder and start-up (training/engine.py, through
unlearn/model.py), the micro-batches (training/batches.py) and the resume protocol with its `ready.json` marker
(training/checkpoint.py); this module keeps the unlearning loop.

World-size invariance: the global batches, the LoRA initialisation (seeded before get_peft_model on every rank),
the loss normalisation and every hook's computation (fixed batches over whole packs) do not depend on
(world_size, grad_accum), so 1 rank x 2 accumulation steps and 2 ranks x 1 step give the same updates up to float
summation order. Exception: lora_dropout > 0 (each rank draws its own masks); set unlearn.lora_dropout=0 when
comparing world sizes.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rapidun_dist.config import RunConfig
from rapidun_dist.core.errors import StageError
from rapidun_dist.core.io import read_jsonl, save_safetensors
from rapidun_dist.core.logging import Progress, get_logger
from rapidun_dist.data.prompt import pad_batch
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.training.batches import micro_batch
from rapidun_dist.training.checkpoint import READY, Checkpoints
from rapidun_dist.training.engine import start_engine, total_steps
from rapidun_dist.training.losses import per_sample_nll, unlearning_objective
from rapidun_dist.unlearn.budget import Decision, StopRule, ValPoint
from rapidun_dist.unlearn.methods import BatchShape, ForgetTerms, build_method, check_zero_stage
from rapidun_dist.unlearn.model import build_ds_config, load_backbone
from rapidun_dist.unlearn.packs import Packs, encode_packs
from rapidun_dist.unlearn.sampler import GlobalBatchSchedule

log = get_logger("unlearn")
# The adapter update dW = s * B @ A counts as "not moved" when a bound on its largest entry, s * r * max|B| * max|A|,
# is below this: about fp32 resolution (1.2e-7) of a typical 1e-2 weight, so merging would change nothing.
ADAPTER_MOVE_TOL = 1e-9


def warm_up() -> None:
    """Process-level set-up shared by every method (imports, the process group - one of one rank too, on a free
    port - and DeepSpeed's communication backend), done once before any method is timed, so the first method
    measured does not carry it."""
    import deepspeed
    import peft  # noqa: F401

    info = dist_env.init_distributed()
    dist_env.ensure_process_group(info)
    deepspeed.init_distributed(dist_backend="nccl" if info.device.type == "cuda" else "gloo")


def _preempt_requested() -> bool:
    from rapidun_dist.distributed import preempt

    return bool(preempt.requested())


@dataclass
class UnlearnRunner:
    cfg: RunConfig
    method: str
    model_dir: Path
    data_dir: Path
    weights_dir: Path | None
    out_dir: Path
    forget_path: Path | None = None  # the pack files (run.layout.pack_files); None: data_dir/forget.jsonl
    retain_path: Path | None = None  # ... and data_dir/retain.jsonl
    eval_hook: object = (
        None  # ASR curve on test prompts, callable(model, step) -> dict: a plot only, no decision
    )
    validator: object = None  # validation.Validator-like (.signal, .asr(model), .ppl(model), .describe())
    relabels: dict[int, str] | None = None  # self-relabel answers of forget rows without a clean answer
    fingerprint: str = ""  # the unlearn stage's fingerprint: a checkpoint of another config is not resumed
    initial_eval: dict | None = None  # the eval hook's result before the first step
    metrics: list[dict] = field(default_factory=list)

    # setup ------------------------------------------------------------------------------------------
    def setup(self) -> UnlearnRunner:
        """Model (zero.Init under ZeRO-3), LoRA, packs, the shared batch schedule, DeepSpeed, the method's setup
        hook, the stop rule, the starting model's validation PPL, and a resume if a ready checkpoint of this
        config exists."""
        u = self.cfg.unlearn
        check_zero_stage(self.method, u.zero_stage)
        self.info = dist_env.init_distributed(config=self.cfg.distributed)
        dist_env.ensure_process_group(self.info)  # zero.Init (ZeRO-3 loading) and DeepSpeed need one
        self.seconds = {"validation": 0.0, "curve_eval": 0.0, "method_hooks": 0.0}
        ds_config = build_ds_config(self.cfg, self.info.world_size)
        model = self._lora_model(ds_config)
        self.packs = self._load_packs()
        self.schedule = GlobalBatchSchedule(
            n_forget=len(self.packs.forget_poisoned),
            n_retain=len(self.packs.retain),
            batch_size=u.batch_size,
            retain_per_forget=u.retain_per_forget,
            seed=u.seed,
        )
        self.total_steps = total_steps(self.schedule.steps_per_epoch, u.epochs, u.max_steps, rounding="ceil")
        self.engine = start_engine(
            model,
            ds_config,
            self.info,
            lr=u.lr,
            weight_decay=u.weight_decay,
            total=self.total_steps,
            warmup_ratio=u.warmup_ratio,
        )
        self.device = self.engine.device
        self._trainable_only = False
        self.engine.module.register_state_dict_post_hook(lambda *a: self._drop_frozen_entries(*a))
        shape = BatchShape(
            size=u.batch_size, n_forget=self.schedule.f_per_batch, n_retain=self.schedule.r_per_batch
        )
        self.m = build_method(self.method, u, shape, len(self.packs.forget_poisoned), len(self.packs.retain))
        self.m.setup(self)
        self.rule = self._stop_rule()
        self.base_ppl = self._timed("validation", self._base_ppl)
        self.best_adapter: dict[str, torch.Tensor] | None = None
        self.ckpts = Checkpoints(
            self.ckpt_dir,
            self.fingerprint,
            self.info,
            u.zero_stage,
            marker=READY,
            desc=f"unlearn[{self.method}]",
        )
        self.start_step = self._maybe_resume()
        log.info(
            f"unlearn[{self.method}]: {self.total_steps} steps at most, budget {self.rule.mode}, "
            f"{sum(s == 'self_relabel' for s in self.packs.clean_source)} self-relabelled forget rows"
        )
        return self

    def _lora_model(self, ds_config: dict):
        """The frozen backbone (partitioned at load under ZeRO-3) with LoRA adapters, initialised from the seed
        alone (the same on every rank and for every world size)."""
        from peft import LoraConfig, get_peft_model

        u = self.cfg.unlearn
        torch.manual_seed(u.seed)
        model, self.tokenizer, self._zero3 = load_backbone(
            self.cfg, self.model_dir, ds_config, self.info.device
        )
        model.requires_grad_(False)
        if self.cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        lora = LoraConfig(
            r=u.lora_r,
            lora_alpha=u.lora_alpha,
            lora_dropout=u.lora_dropout,
            target_modules=list(u.target_modules),
            task_type="CAUSAL_LM",
        )
        with torch.device(self.info.device):  # the adapters are created on the rank's device, not the default
            return get_peft_model(model, lora)

    def _stop_rule(self) -> StopRule:
        u = self.cfg.unlearn
        return StopRule(
            budget=u.budget,
            stop_asr=u.stop_asr,
            max_ppl_ratio=u.max_ppl_ratio,
            patience=u.patience,
            confirm=u.stop_confirm,
            has_signal=bool(u.val_every and self.validator is not None and self.validator.signal),
            no_signal_reason="no backdoor signal, val_seen is empty"
            if u.val_every
            else "unlearn.val_every=0, no validation",
        )

    def _load_packs(self) -> Packs:
        forget = read_jsonl(self.forget_path or self.data_dir / "forget.jsonl")
        retain = read_jsonl(self.retain_path or self.data_dir / "retain.jsonl")
        relabels = self.relabels if self.cfg.unlearn.self_relabel else None
        return encode_packs(forget, retain, self.tokenizer, self.cfg.model.max_length, relabels)

    def _timed(self, key: str, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[key] += time.perf_counter() - t0

    # services for the methods' hooks (methods/base.py MethodContext) ----------------------------------
    def trainable_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.engine.module.parameters() if p.requires_grad]

    def _nll(self, examples: list[dict], module=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed answer NLL, answer tokens) per example, through the DeepSpeed engine (or `module`)."""
        batch = {k: v.to(self.device) for k, v in pad_batch(examples, self.tokenizer.pad_token_id).items()}
        run = module if module is not None else self.engine
        out = run(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return per_sample_nll(out.logits, batch["labels"])

    @torch.no_grad()
    def forget_nll_all(self, *, adapter: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Every forget row's poisoned answer: (summed NLL, tokens), eval mode, fixed batches (the same on every
        rank and for every world size; collective-safe under ZeRO-3). adapter=False: the frozen starting model."""
        module = self.engine.module
        was_training = module.training
        module.eval()
        size, rows = self.cfg.eval.batch_size, self.packs.forget_poisoned
        nll, tok = [], []
        try:
            with module.disable_adapter() if not adapter else contextlib.nullcontext():
                for s in range(0, len(rows), size):
                    n, t = self._nll(rows[s : s + size], module=module)
                    nll.append(n.detach().double().cpu())
                    tok.append(t.cpu())
        finally:
            module.train(was_training)
        return torch.cat(nll), torch.cat(tok)

    def pack_features(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Token-wise features (`influence.*`, the influence stage's definition) of every forget row's poisoned
        answer and every retain row, under the current adapter (eval mode): (forget [nf, K], retain [nr, K] float64
        on the CPU, the extractor's spec). Fixed batches of influence.batch_size rows in pack order; rank r computes
        batches r, r + P, ... and every rank runs the same number of passes (a ballast batch fills the last round,
        so ZeRO-3's gathers stay in step); one all-reduce of the [n, K] rows (zeros elsewhere) gives every rank the
        same features for every world size."""
        from rapidun_dist.influence.features import TokenwiseExtractor

        module = self.engine.module
        if getattr(self, "_extractor", None) is None:  # projections built (and cast) once per run
            base = module.get_base_model()  # layer names as in the influence stage: the same projections
            self._extractor = TokenwiseExtractor(base, self.cfg.influence, pad_id=self.tokenizer.pad_token_id)
        ext, rows = self._extractor, self.packs.forget_poisoned + self.packs.retain
        size, world, rank = self.cfg.influence.batch_size, self.info.world_size, self.info.rank
        batches = [(s, min(s + size, len(rows))) for s in range(0, len(rows), size)]
        out = torch.zeros(len(rows), ext.dim, dtype=torch.float64, device=self.device)
        was_training = module.training
        module.eval()
        try:
            for k in range(math.ceil(len(batches) / world)):
                b = k * world + rank
                lo, hi = batches[b] if b < len(batches) else batches[0]
                feats = ext(rows[lo:hi])
                if b < len(batches):
                    out[lo:hi] = feats.to(torch.float64)
        finally:
            module.train(was_training)
        out = dist_env.all_reduce_sum_(out).cpu()
        nf = len(self.packs.forget_poisoned)
        return out[:nf], out[nf:], ext.spec()

    def per_sample_grad_sq(self, kind: str, limit: int) -> list[torch.Tensor]:
        """Mean squared per-sample gradient of each trainable tensor over up to `limit` rows of `kind`, through
        the bare module (the engine's forward would arm its backward bookkeeping, which autograd.grad never
        completes). The same rows and parameters on every rank (ZeRO 0-2 replicate the adapter)."""
        rows = self.packs.forget_poisoned if kind == "forget" else self.packs.retain
        params = self.trainable_params()
        acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        module = self.engine.module
        for ex in rows[:limit]:
            nll, n_tok = self._nll([ex], module=module)
            grads = torch.autograd.grad((nll / n_tok.clamp_min(1)).sum(), params, allow_unused=True)
            for a, g in zip(acc, grads, strict=True):
                if g is not None:
                    a += g.float() ** 2
        return [a / max(1, min(limit, len(rows))) for a in acc]

    # one micro-batch ---------------------------------------------------------------------------------
    def micro_loss(self, items) -> tuple[torch.Tensor, dict]:
        """The micro-batch's share of the global objective (methods/base.py) and its detached CE sums.

        One forward through the engine holds the poisoned answers of the forget rows, the retain rows (if the
        method uses them) and the clean answers of forget rows that have one (relabel on): one pass,
        collective-safe under ZeRO-3. A micro-batch with nothing the method uses still runs one row at weight 0,
        so every rank's backward reaches every adapter tensor."""
        u, P, m = self.cfg.unlearn, self.packs, self.m
        f_idx = [it.index for it in items if it.kind == "forget"]
        r_idx = [it.index for it in items if it.kind == "retain"] if m.uses_retain else []
        relabel = u.relabel and u.beta_d > 0
        c_pos = [k for k, i in enumerate(f_idx) if relabel and P.forget_clean[i] is not None]
        masks = m.ascent_mask() if f_idx else None
        poisoned = [P.forget_poisoned[i] for i in f_idx]
        examples = ([] if masks is not None else poisoned) + [P.retain[j] for j in r_idx]
        examples += [P.forget_clean[f_idx[k]] for k in c_pos]
        if not examples:  # ballast: one row of the micro-batch at weight 0
            it = items[0]
            examples = [P.forget_poisoned[it.index] if it.kind == "forget" else P.retain[it.index]]
        nll, n_tok = self._nll(examples)
        main_nll, nf, nr, dev = nll, len(f_idx), len(r_idx), nll.device
        if masks is not None:  # the forget rows in their own pass (own graph), whose gradient is masked
            nll_f, tok_f = self._nll(poisoned, module=self.engine.module)
        else:
            nll_f, tok_f = nll[:nf], n_tok[:nf]
            nll, n_tok = nll[nf:], n_tok[nf:]
        ce_f, ce = nll_f / tok_f.clamp_min(1), nll / n_tok.clamp_min(1)  # ce: retain rows, then clean answers
        terms = ForgetTerms(
            index=torch.tensor(f_idx, dtype=torch.long, device="cpu"), nll=nll_f, n_tokens=tok_f, ce=ce_f
        )
        relabel_ce = torch.zeros(nf, dtype=ce.dtype, device=dev)
        if c_pos:
            relabel_ce = relabel_ce.index_put((torch.tensor(c_pos, device=dev),), ce[nr : nr + len(c_pos)])
        ascent, rest = unlearning_objective(
            forget_loss=m.forget_loss(terms) if nf else ce_f,
            forget_w=m.forget_w[f_idx].to(dev),
            retain_loss=m.retain_loss(ce[:nr]) if nr else ce[:0],
            retain_w=m.retain_w[r_idx].to(dev),
            relabel_ce=relabel_ce,
            beta_d=u.beta_d,
            denom=len(items),
        )
        rest = rest + 0.0 * main_nll.sum()  # every adapter tensor stays in the engine's graph (ballast rows)
        ascent = self._masked_ascent(ascent, masks) if masks is not None else ascent
        zero = torch.zeros((), device=dev)
        parts = {
            "forget_ce": ce_f.detach().sum() if nf else zero,
            "n_forget": torch.tensor(float(nf), device=dev),
            "retain_ce": ce[:nr].detach().sum() if nr else zero,
            "n_retain": torch.tensor(float(nr), device=dev),
            "clean_ce": ce[nr : nr + len(c_pos)].detach().sum() if c_pos else zero,
            "n_clean": torch.tensor(float(len(c_pos)), device=dev),
        }
        return (ascent + rest if nf else rest), parts

    def _masked_ascent(self, ascent: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
        """`ascent` (computed through the bare module) with its gradient multiplied by `masks`, value unchanged:
        the gradient is taken apart (autograd.grad, which never touches .grad or DeepSpeed's hooks), masked, and
        re-entered as a zero-valued surrogate whose gradient it is, so DeepSpeed still sees one loss and one
        backward. The relabel and retain terms keep their whole gradient. ZeRO 0-2 only (whole parameters)."""
        if self.cfg.unlearn.zero_stage == 3:
            raise StageError(f"method {self.method}: an ascent mask needs whole parameters (ZeRO 0-2)")
        params = self.trainable_params()
        grads = torch.autograd.grad(ascent, params, allow_unused=True)
        surrogate = sum(
            ((mk.to(p.dtype) * g).detach() * p).sum()
            for p, g, mk in zip(params, grads, masks, strict=True)
            if g is not None
        )
        return ascent.detach() + surrogate - surrogate.detach()

    # loop ---------------------------------------------------------------------------------------------
    def train(self) -> list[dict]:
        """The step loop (kept whole on purpose: batches, backward, step, hooks, metrics, validation, stop rules,
        preemption, checkpoints, in the order a resumed run must replay them)."""
        u = self.cfg.unlearn
        batches = self.schedule.batches(self.total_steps)
        progress = Progress(self.total_steps - self.start_step, f"unlearn[{self.method}]", unit="step")
        self.stop = {
            "reason": "budget_exhausted",
            "step": self.total_steps,
            "detail": "the step budget is spent",
        }
        if u.eval_every and self.eval_hook and self.start_step == 0:  # the curve's starting point, not timed
            self.initial_eval = {
                "step": 0,
                **self._timed("curve_eval", self.eval_hook, self.engine.module, 0),
            }
        t0, decision = time.perf_counter(), Decision(stop=False)
        excluded0 = self.seconds["validation"] + self.seconds["curve_eval"]
        for step in range(self.start_step, self.total_steps):
            done = step + 1
            row = self._optimizer_step(batches[step], done)
            self._timed("method_hooks", self.m.after_step, self, done)
            last = done == self.total_steps
            if u.eval_every and self.eval_hook and (done % u.eval_every == 0 or last):
                row.update(self._timed("curve_eval", self.eval_hook, self.engine.module, done))
            if u.val_every and (done % u.val_every == 0 or last):
                decision = self._validate(done, row)
            if u.stop_forget_ce is not None and row["forget_ce"] >= u.stop_forget_ce and not decision.stop:
                decision = Decision(
                    stop=True,
                    reason="forget_ce_threshold",
                    detail=f"forget poisoned CE {row['forget_ce']:.3f} >= unlearn.stop_forget_ce={u.stop_forget_ce}",
                )
            if u.max_seconds is not None and not decision.stop and not last:
                decision = self._time_budget(done, time.perf_counter() - t0)
            if decision.stop:
                self.stop = {"reason": decision.reason, "step": done, "detail": decision.detail}
                log.info(f"unlearn[{self.method}]: stop at step {done}: {decision.detail}")
            if decision.stop or last:
                row["stop"] = self.stop
            # Every rank agrees (any rank's request counts); a run that stops here anyway just finishes.
            preempted = dist_env.all_reduce_max(int(_preempt_requested())) > 0 and not decision.stop
            self.metrics.append(row)
            self._append_metrics(row)
            progress.update(loss=row["loss"], forget_ce=row["forget_ce"])
            if preempted:  # checkpoint, then stop
                self.ckpts.stop(done, self.save_checkpoint)
            # No checkpoint at a stopping step: a run killed before it finishes replays to the same decision.
            if u.save_every and done % u.save_every == 0 and not decision.stop:
                self.save_checkpoint(done)
            if decision.stop:
                break
        excluded = self.seconds["validation"] + self.seconds["curve_eval"] - excluded0
        self.train_seconds = time.perf_counter() - t0 - excluded
        if decision.restore_step is not None:
            self._restore_best(decision.restore_step)
        self._check_adapter_moved()
        return self.metrics

    def _time_budget(self, done: int, elapsed: float) -> Decision:
        """Stop once the loop's wall time passes unlearn.max_seconds; the ranks agree (any rank past it counts)."""
        cap = self.cfg.unlearn.max_seconds
        if dist_env.all_reduce_max(int(elapsed > cap)) == 0:
            return Decision(stop=False)
        return Decision(
            stop=True,
            reason="time_budget",
            detail=f"{elapsed:.1f} s of unlearning passed unlearn.max_seconds={cap:g} at step {done}",
        )

    def _optimizer_step(self, batch, done: int) -> dict:
        u, totals = self.cfg.unlearn, {}
        lr = self.engine.get_lr()[0]  # the rate this step uses (the scheduler steps after it)
        pre_norm = None
        for a in range(u.grad_accum):
            items = micro_batch(
                batch,
                rank=self.info.rank,
                world_size=self.info.world_size,
                accum_step=a,
                grad_accum=u.grad_accum,
            )
            loss, parts = self.micro_loss(items)
            self.engine.backward(loss)
            pre_norm = self._local_grad_norm() if a == u.grad_accum - 1 else None
            self.engine.step()
            parts["loss"] = loss.detach() / u.grad_accum
            for k, v in parts.items():
                totals[k] = totals.get(k, 0) + v.float()
        engine_norm = self.engine.get_global_grad_norm()
        grad_norm = float(engine_norm) if engine_norm is not None else pre_norm
        row = self._log_row(done, totals) | {"lr": lr, "grad_norm": grad_norm}
        if not math.isfinite(row["loss"]) or (grad_norm is not None and not math.isfinite(grad_norm)):
            raise StageError(
                f"unlearning diverged at step {done}: loss={row['loss']}, grad_norm={grad_norm} "
                f"(lower unlearn.lr or unlearn.ascent_cap)"
            )
        return row

    def _log_row(self, step: int, totals: dict) -> dict:
        local = torch.stack([totals[k] for k in sorted(totals)]).to(self.device)
        vals = torch.stack(dist_env.all_gather_tensor(local, expected_shape=tuple(local.shape))).sum(0)
        g = dict(zip(sorted(totals), vals.tolist(), strict=True))
        return {
            "step": step,
            "loss": g["loss"] / self.info.world_size,
            "forget_ce": g["forget_ce"] / max(g["n_forget"], 1),
            "retain_ce": g["retain_ce"] / max(g["n_retain"], 1),
            "clean_ce": g["clean_ce"] / max(g["n_clean"], 1),
            "n_forget": int(g["n_forget"]),
            "adapter_norm": self.adapter_norm(),
        }

    # validation ---------------------------------------------------------------------------------------
    def _base_ppl(self) -> float | None:
        """The starting model's val_clean perplexity (adapter disabled): the denominator of every PPL ratio."""
        if self.validator is None or not self.cfg.unlearn.val_every:
            return None
        with self.engine.module.disable_adapter():
            return self.validator.ppl(self.engine.module)

    def _measure(self, step: int) -> ValPoint:
        t0 = time.perf_counter()
        module = self.engine.module
        ppl = self.validator.ppl(module) if self.validator is not None else None
        asr = self.validator.asr(module) if self.validator is not None else None
        ratio = ppl / self.base_ppl if ppl is not None and self.base_ppl else None
        return ValPoint(step=step, asr=asr, ppl=ppl, ppl_ratio=ratio, seconds=time.perf_counter() - t0)

    def _validate(self, step: int, row: dict) -> Decision:
        """Measure (every rank takes part), then rank 0's point decides: broadcast, and every rank applies the
        same rule to it, so every rank takes the same decision. Not unlearning time (seconds['validation'])."""
        point = self._timed("validation", self._measure, step)
        point = dist_env.broadcast_object(point if self.info.rank == 0 else None)
        decision = self.rule.observe(point)
        row.update({"val_asr": point.asr, "val_ppl": point.ppl, "val_ppl_ratio": point.ppl_ratio})
        if decision.new_best and (self.rule.max_ppl_ratio is not None or self.rule.patience):
            self.best_adapter = self._adapter_state()
        return decision

    def _adapter_state(self) -> dict[str, torch.Tensor]:
        import deepspeed

        named = [(n, p) for n, p in self.engine.module.named_parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(
            [p for _, p in named], enabled=self.cfg.unlearn.zero_stage == 3
        ):
            return {n: p.detach().float().cpu().clone() for n, p in named}

    def _restore_best(self, step: int) -> None:
        """Put the adapter of validation step `step` (the best within the damage limit) back into the model."""
        import deepspeed

        if self.best_adapter is None:
            return
        named = [(n, p) for n, p in self.engine.module.named_parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(
            [p for _, p in named], modifier_rank=0, enabled=self.cfg.unlearn.zero_stage == 3
        ):
            with torch.no_grad():
                for n, p in named:
                    p.copy_(self.best_adapter[n].to(p.dtype))
        self.stop["restored_step"] = step
        log.info(f"unlearn[{self.method}]: restored the adapter of step {step}")

    # adapter checks -----------------------------------------------------------------------------------
    def _local_grad_norm(self) -> float | None:
        """Gradient norm before clipping from the adapters' .grad: the all-reduced, complete gradient under ZeRO-0
        (the engine keeps no norm there). ZeRO 1-3 (and bf16) partition or move gradients into their own buffers
        and report the global norm through `engine.get_global_grad_norm()` after the step, which takes precedence."""
        grads = [p.grad for p in self.engine.module.parameters() if p.requires_grad and p.grad is not None]
        return math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads)) if grads else None

    def adapter_norm(self) -> float:
        import deepspeed

        params = [p for n, p in self.engine.module.named_parameters() if "lora_" in n]
        with deepspeed.zero.GatheredParameters(params, enabled=self.cfg.unlearn.zero_stage == 3):
            return math.sqrt(sum(float(p.detach().float().pow(2).sum()) for p in params if p.numel() > 0))

    def adapter_update_bounds(self) -> dict[str, float]:
        """Per LoRA module, s * r * max|B| * max|A| >= max |dW_ij| for dW = s * B @ A (s = lora_alpha / r)."""
        import deepspeed

        named = dict(self.engine.module.named_parameters())
        names = [n for n in named if "lora_B" in n]
        pairs = [(n, named[n], named[n.replace("lora_B", "lora_A")]) for n in names]
        u = self.cfg.unlearn
        s_times_r = float(u.lora_alpha)  # s = lora_alpha / r
        with deepspeed.zero.GatheredParameters(
            [t for _, b, a in pairs for t in (b, a)], enabled=u.zero_stage == 3
        ):
            return {
                n: s_times_r * float(b.detach().abs().max()) * float(a.detach().abs().max())
                for n, b, a in pairs
            }

    def _check_adapter_moved(self) -> None:
        bounds = self.adapter_update_bounds()
        moved = sum(v > ADAPTER_MOVE_TOL for v in bounds.values())
        if moved == 0:
            raise StageError(
                f"the LoRA adapter did not move: after {len(self.metrics)} steps every update "
                f"s*B@A is below {ADAPTER_MOVE_TOL:g} in every entry (largest bound "
                f"{max(bounds.values(), default=0.0):.3g}); check unlearn.lr={self.cfg.unlearn.lr:g}, "
                "unlearn.target_modules and that the loss reaches the adapters"
            )
        if moved < len(bounds):
            log.warning(f"only {moved}/{len(bounds)} LoRA modules moved by more than {ADAPTER_MOVE_TOL:g}")

    def _append_metrics(self, row: dict) -> None:
        if self.info.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    # checkpoints (training/checkpoint.py: the shared protocol, marker ready.json) --------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def save_checkpoint(self, step: int) -> None:
        """DeepSpeed's shards (trainable state only), the method's and the stop rule's state, then ready.json."""
        self._trainable_only = True
        try:
            self.ckpts.save(
                self.engine,
                step,
                exclude_frozen=True,
                extra_meta={"method": self.method, "rule": self.rule.state()},
                write_extra=self._write_extra_state,
            )
        finally:
            self._trainable_only = False

    def _write_extra_state(self, tag_dir: Path) -> None:
        """Rank 0, beside DeepSpeed's shards: the method's own tensors and the best adapter so far."""
        state = self.m.state_dict()
        if state:
            save_safetensors(tag_dir / "method_state.safetensors", state)
        if self.best_adapter is not None:
            save_safetensors(tag_dir / "best_adapter.safetensors", self.best_adapter)

    def _drop_frozen_entries(self, module, state_dict, prefix, local_metadata) -> None:
        """While a checkpoint is written: keep only trainable tensors. `exclude_frozen_parameters` drops frozen
        parameters by name but keeps aliases of tied ones (lm_head.weight tied to the embeddings is a whole
        vocab x hidden matrix); the adapter's own save (PEFT) is unaffected."""
        if not self._trainable_only:
            return
        keep = {prefix + n for n, p in module.named_parameters() if p.requires_grad}
        for key in [k for k in state_dict if k not in keep]:
            del state_dict[key]

    def _maybe_resume(self) -> int:
        """The shared protocol decides (a ready checkpoint of this config, complete shards, a world size it can
        resume at) and loads DeepSpeed's state; then the method's and the stop rule's state, and metrics.jsonl
        cut back to the resumed step (removed on a fresh start)."""
        plan = self.ckpts.resume(self.engine, strict=False)
        if plan.tag is None:
            if self.info.rank == 0 and (self.out_dir / "metrics.jsonl").exists():
                (self.out_dir / "metrics.jsonl").unlink()
            return 0
        self._load_extra_state(self.ckpt_dir / plan.tag, plan.meta)
        if self.info.rank == 0:
            self._truncate_metrics(plan.step)
        return plan.step

    def _load_extra_state(self, tag_dir: Path, meta: dict) -> None:
        from safetensors.torch import load_file

        method_state = tag_dir / "method_state.safetensors"
        self.m.load_state_dict(load_file(str(method_state)) if method_state.is_file() else {})
        best = tag_dir / "best_adapter.safetensors"
        self.best_adapter = load_file(str(best)) if best.is_file() else None
        self.rule.load_state(meta.get("rule") or {})

    def _truncate_metrics(self, step: int) -> None:
        path = self.out_dir / "metrics.jsonl"
        if path.exists():
            rows = [r for r in read_jsonl(path) if r["step"] <= step]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    # save / summary / cleanup -------------------------------------------------------------------------
    def save(self, *, keep_checkpoints: bool = False) -> Path:
        """Gather the adapter (ZeRO-3 too) and save it as PEFT safetensors in out_dir/adapter (atomic rename)."""
        import deepspeed

        model = self.engine.module
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        adapter = self.out_dir / "adapter"
        with deepspeed.zero.GatheredParameters(params, enabled=self.cfg.unlearn.zero_stage == 3):
            if self.info.rank == 0:
                tmp = self.out_dir / ".adapter.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                model.save_pretrained(str(tmp), safe_serialization=True)
                shutil.rmtree(adapter, ignore_errors=True)
                tmp.rename(adapter)
                if self.cfg.unlearn.merge:
                    self._save_merged()
        dist_env.barrier()
        if not keep_checkpoints:
            self.ckpts.remove()
        return adapter

    def _save_merged(self) -> None:
        from rapidun_dist.models.loading import load_saved, release_memory, save_model, with_adapter

        device = None if self._zero3 is not None else self.info.device  # ZeRO-3: the whole model may not fit
        base, tok = load_saved(self.model_dir, self.cfg.model, device=device)
        merged = with_adapter(base, self.out_dir / "adapter", device=device).merge_and_unload()
        save_model(merged, tok, self.out_dir / "merged")
        del base, merged
        release_memory()

    def summary(self) -> dict:
        """What the run did and why it stopped (the stage adds timings and the fingerprint)."""
        sources = self.packs.clean_source
        path = self.out_dir / "metrics.jsonl"
        rows = read_jsonl(path) if path.exists() else self.metrics  # all steps, also those before a resume
        return {
            "method": self.method,
            "steps": rows[-1]["step"] if rows else 0,
            "max_steps": self.total_steps,
            "forget_visits": sum(r["n_forget"] for r in rows),
            "budget": self.rule.mode,
            "stop": self.stop,
            "validation": {
                **(self.validator.describe() if self.validator is not None else {"signal": None}),
                "every": self.cfg.unlearn.val_every,
                "base_ppl": self.base_ppl,
                "points": [asdict(p) for p in self.rule.points],
            },
            "relabel": {
                "on": self.cfg.unlearn.relabel,
                "clean_answers": {s: sources.count(s) for s in ("data", "self_relabel", "none")},
            },
            "method_info": self.m.describe(),
            "final": self.metrics[-1] if self.metrics else {},
            "initial_eval": self.initial_eval,
        }

    def cleanup(self) -> None:
        """Release the engine (its ZeRO-3 hooks and buffers, optimizer and model), the method's tensors and
        transformers' ZeRO-3 config, then collect and empty the CUDA cache; the process group stays for the next
        method. What `summary()` reads (packs, method, stop rule, metrics) is kept until the runner is dropped."""
        from rapidun_dist.models.loading import release_memory

        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None and hasattr(engine, "destroy"):
            engine.destroy()
        self.best_adapter = None
        z3, self._zero3 = getattr(self, "_zero3", None), None
        if z3 is not None:
            z3.release()
        del engine
        release_memory()
