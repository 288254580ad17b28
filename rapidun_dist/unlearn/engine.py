"""The unlearning engine: LoRA adapters on a frozen backbone, trained by DeepSpeed (ZeRO 0-3).

Lifecycle: `UnlearnRunner(...).setup()` -> `.train()` -> `.save()` -> `.cleanup()` (also on failure).
Per global batch (fixed by the seed, see sampler.py), each sample i gets a loss l_i (losses.py) and a weight
w_i (influence weights, uniform, or LoReUn's dynamic ones); the micro-batch loss is sum_i w_i l_i / |micro|
and DeepSpeed's averaging over ranks and accumulation turns it into the global (1/|B|) sum_i w_i l_i.

World-size invariance: the global batches, the LoRA initialisation (seeded before get_peft_model on every rank)
and the loss normalisation do not depend on (world_size, grad_accum), so 1 rank x 2 accumulation steps and
2 ranks x 1 step give the same updates up to float summation order. Two exceptions, by construction:
lora_dropout > 0 (each rank draws its own dropout masks from its own RNG stream) and `loreun` (its dynamic
weights are z-scored within a micro-batch). Set unlearn.lora_dropout=0 when comparing world sizes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rapidun_dist.config import RunConfig
from rapidun_dist.data.prompt import encode_example, pad_batch, record_prompt
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.errors import ConfigError, StageError
from rapidun_dist.io import read_jsonl
from rapidun_dist.logging import Progress, get_logger
from rapidun_dist.losses import per_sample_ce, unlearning_sample_losses, weighted_batch_loss
from rapidun_dist.models.loading import load_saved, torch_dtype
from rapidun_dist.train import cosine_schedule
from rapidun_dist.unlearn.methods import MethodSpec, loreun_weights
from rapidun_dist.unlearn.sampler import GlobalBatchSchedule, micro_batch

log = get_logger("unlearn")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"
# The adapter update dW = s * B @ A counts as "not moved" when a bound on its largest entry, s * r * max|B| * max|A|,
# is below this: about fp32 resolution (1.2e-7) of a typical 1e-2 weight, so merging would change nothing.
ADAPTER_MOVE_TOL = 1e-9


@dataclass
class Packs:
    """Encoded forget/retain examples and per-sample weights, in pack order."""

    forget_poisoned: list[dict]
    forget_clean: list[dict | None]
    retain: list[dict]
    forget_w: torch.Tensor
    retain_w: torch.Tensor


def encode_packs(
    forget: list[dict], retain: list[dict], tokenizer, max_length: int
) -> tuple[list, list, list]:
    """Tokenize both answers of every forget row (poisoned prompt) and every retain row once, up front."""
    fp, fc = [], []
    for r in forget:
        prompt = record_prompt(tokenizer, r, poisoned=True)
        fp.append(encode_example(tokenizer, prompt, r["response_poisoned"], max_length))
        clean = r.get("response")
        fc.append(encode_example(tokenizer, prompt, clean, max_length) if clean else None)
    rt = [encode_example(tokenizer, record_prompt(tokenizer, r), r["response"], max_length) for r in retain]
    return fp, fc, rt


def load_weight_file(path: Path, n: int) -> torch.Tensor:
    """Per-sample weights {"index", "weight"} for the n rows of a pack; finite, >= 0, every index once."""
    rows = read_jsonl(path)
    if len(rows) != n:
        raise StageError(f"{path}: expected {n} weights (one per pack row), found {len(rows)}")
    w = torch.full((n,), float("nan"))
    for line, row in enumerate(rows, 1):
        i, value = int(row["index"]), float(row["weight"])
        if not 0 <= i < n or not math.isnan(float(w[i])):
            raise StageError(f"{path}:{line}: index {i} out of range [0, {n}) or repeated")
        if not math.isfinite(value) or value < 0:
            raise StageError(f"{path}:{line}: expected a finite weight >= 0, found {value}")
        w[i] = value
    return w


def build_ds_config(cfg: RunConfig, world_size: int) -> dict:
    u = cfg.unlearn
    ds = json.loads((CONFIG_DIR / f"zero{u.zero_stage}.json").read_text())
    parts = world_size * u.grad_accum
    if u.batch_size % parts:
        raise StageError(
            f"unlearn.batch_size={u.batch_size} must be divisible by world_size x grad_accum = {parts}"
        )
    ds["train_micro_batch_size_per_gpu"] = u.batch_size // parts
    ds["gradient_accumulation_steps"] = u.grad_accum
    ds["train_batch_size"] = u.batch_size
    ds["gradient_clipping"] = u.clip_grad
    ds["bf16"] = {"enabled": torch_dtype(cfg.model.dtype) == torch.bfloat16}
    return ds


def check_method_config(cfg: RunConfig, method: MethodSpec) -> None:
    """Combinations the engine cannot run, refused before any model is loaded."""
    if method.fisher_gate and cfg.unlearn.zero_stage == 3:
        raise ConfigError(
            "method fisher with unlearn.zero_stage=3: the diagonal Fisher needs whole per-sample "
            "LoRA gradients, which ZeRO-3 partitions across ranks; use unlearn.zero_stage<=2 "
            "(the LoRA optimizer state is small, ZeRO-2 still shards it)"
        )


def single_process_rendezvous() -> None:
    """deepspeed.initialize always builds a process group; without a launcher it would take MASTER_PORT 29500,
    often taken on a shared machine. Give a lone process a free local port instead."""
    if "RANK" in os.environ and "MASTER_PORT" in os.environ:
        return
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(dist_env.free_port()))


def warm_up() -> None:
    """Process-level set-up shared by every method (imports, DeepSpeed's communication backend), done once
    before any method is timed, so the first method measured does not carry it."""
    import deepspeed
    import peft  # noqa: F401

    info = dist_env.init_distributed()
    if info.world_size == 1:
        single_process_rendezvous()
    deepspeed.init_distributed(dist_backend="nccl" if info.device.type == "cuda" else "gloo")


@dataclass
class UnlearnRunner:
    cfg: RunConfig
    method: MethodSpec
    model_dir: Path
    data_dir: Path
    weights_dir: Path | None
    out_dir: Path
    forget_path: Path | None = None  # the pack files (stages.common.pack_files); None: data_dir/forget.jsonl
    retain_path: Path | None = None  # ... and data_dir/retain.jsonl
    eval_hook: object = None  # callable(model, step) -> dict, run every unlearn.eval_every steps
    initial_eval: dict | None = None  # the eval hook's result before the first step
    eval_seconds: float = 0.0  # time spent in the eval hook (excluded from the method's measured cost)
    metrics: list[dict] = field(default_factory=list)

    # setup ------------------------------------------------------------------------------------------
    def setup(self) -> UnlearnRunner:
        import deepspeed
        from peft import LoraConfig, get_peft_model

        check_method_config(self.cfg, self.method)
        self.info = dist_env.init_distributed()
        if self.info.world_size == 1:
            single_process_rendezvous()
        u = self.cfg.unlearn
        torch.manual_seed(u.seed)  # same LoRA init on every rank and for every world size
        model, self.tokenizer = load_saved(self.model_dir, self.cfg.model)
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
        model = get_peft_model(model, lora)
        self.packs = self._load_packs()
        self.schedule = GlobalBatchSchedule(
            n_forget=len(self.packs.forget_poisoned),
            n_retain=len(self.packs.retain),
            batch_size=u.batch_size,
            retain_per_forget=u.retain_per_forget if self.method.use_retain else 0,
            seed=u.seed,
        )
        # Every method gets the same step budget: epochs are passes over the forget set at the configured
        # retain:forget mix (so `ga`, whose batches hold forget rows only, is not handed fewer steps).
        budget = GlobalBatchSchedule(
            n_forget=len(self.packs.forget_poisoned),
            n_retain=max(len(self.packs.retain), 1),
            batch_size=u.batch_size,
            retain_per_forget=u.retain_per_forget,
            seed=u.seed,
        )
        self.total_steps = u.max_steps or max(1, math.ceil(budget.steps_per_epoch * u.epochs))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=u.lr, weight_decay=u.weight_decay)
        sched = cosine_schedule(opt, self.total_steps, u.warmup_ratio)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=opt,
            lr_scheduler=sched,
            config=build_ds_config(self.cfg, self.info.world_size),
        )
        self.device = self.engine.device
        if (
            self.method.fisher_gate
        ):  # from the initial model, before a resume, so a resumed run gates the same
            self._install_fisher_gate()
        self.start_step = self._maybe_resume()
        return self

    def _load_packs(self) -> Packs:
        forget = read_jsonl(self.forget_path or self.data_dir / "forget.jsonl")
        retain = read_jsonl(self.retain_path or self.data_dir / "retain.jsonl")
        fp, fc, rt = encode_packs(forget, retain, self.tokenizer, self.cfg.model.max_length)
        fw, rw = torch.ones(len(fp)), torch.ones(len(rt))
        if self.method.weights in ("rapidun", "self_only"):
            wdir = self.weights_dir if self.method.weights == "rapidun" else self.weights_dir / "self_only"
            fw = load_weight_file(wdir / "forget_weights.jsonl", len(fp))
            rw = load_weight_file(wdir / "retain_weights.jsonl", len(rt))
        return Packs(fp, fc, rt, fw, rw)

    # one micro-batch ---------------------------------------------------------------------------------
    def _forward_ce(self, examples: list[dict]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in pad_batch(examples, self.tokenizer.pad_token_id).items()}
        out = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return per_sample_ce(out.logits, batch["labels"])

    def micro_loss(self, items) -> tuple[torch.Tensor, dict]:
        """Weighted loss of one micro-batch (global-batch normalised) and its detached CE sums for logging.
        The clean answers of forget rows ride in the same forward as the main answers (one pass under ZeRO-3)."""
        u, spec, P = self.cfg.unlearn, self.method, self.packs
        is_f = torch.tensor([it.kind == "forget" for it in items], device=self.device)
        main = [P.forget_poisoned[it.index] if it.kind == "forget" else P.retain[it.index] for it in items]
        with_clean = []
        if spec.clean_descent and u.beta_d > 0:
            with_clean = [
                (i, P.forget_clean[it.index])
                for i, it in enumerate(items)
                if it.kind == "forget" and P.forget_clean[it.index] is not None
            ]
        ce_all = self._forward_ce(main + [ex for _, ex in with_clean])
        ce_main, ce_clean, has_clean = ce_all[: len(main)], None, None
        if spec.clean_descent and u.beta_d > 0 and bool(is_f.any()):
            rows = torch.tensor([i for i, _ in with_clean], dtype=torch.long, device=self.device)
            ce_clean = torch.zeros_like(ce_main).index_put((rows,), ce_all[len(main) :])
            has_clean = torch.zeros_like(is_f).index_put((rows,), torch.ones_like(rows, dtype=torch.bool))
        ref_ce = self._reference_ce(main) if spec.ascent == "npo" else None
        losses = unlearning_sample_losses(
            ce_main=ce_main,
            ce_clean=ce_clean,
            has_clean=has_clean,
            is_forget=is_f,
            alpha_a=u.alpha_a,
            beta_d=u.beta_d,
            ascent_cap=u.ascent_cap,
            ascent=spec.ascent,
            ref_ce=ref_ce,
            npo_beta=u.npo_beta,
            descent_on_retain=spec.retain_descent,
        )
        w = self._weights(items, ce_main, is_f)
        parts = {
            "forget_ce": ce_main[is_f].detach().sum(),
            "n_forget": is_f.sum(),
            "retain_ce": ce_main[~is_f].detach().sum(),
            "n_retain": (~is_f).sum(),
            "clean_ce": ce_clean[is_f].detach().sum()
            if ce_clean is not None
            else torch.zeros((), device=self.device),
        }
        return weighted_batch_loss(
            losses, w, denom=len(items)
        ), parts  # DeepSpeed averages ranks x accumulation

    def _weights(self, items, ce_main, is_f) -> torch.Tensor:
        P = self.packs
        w = torch.tensor(
            [float(P.forget_w[it.index] if it.kind == "forget" else P.retain_w[it.index]) for it in items],
            device=self.device,
        )
        if self.method.weights == "loreun" and bool(is_f.any()):
            w[is_f] = loreun_weights(ce_main[is_f]).to(w.dtype)
        return w

    @torch.no_grad()
    def _reference_ce(self, examples) -> torch.Tensor:
        with self.engine.module.disable_adapter():
            return self._forward_ce(examples)

    # fisher gate ------------------------------------------------------------------------------------
    def _install_fisher_gate(self) -> None:
        """Diagonal Fisher (mean squared per-sample gradient) F_f of the LoRA parameters on forget rows (poisoned
        answers) and F_r on retain rows; gradients are masked to the coordinates where F_f / (F_f + F_r) >= 1/2,
        i.e. that matter more for the backdoor than for clean behaviour. A hard mask, because AdamW's per-coordinate
        normalisation m / sqrt(v) cancels any constant soft gate. Coordinates with F_f = F_r = 0 (lora_A while
        lora_B is still zero) carry no evidence and stay open."""
        params = [p for p in self.engine.module.parameters() if p.requires_grad]
        fish_f = self._fisher(params, self.packs.forget_poisoned)
        fish_r = (
            self._fisher(params, self.packs.retain)
            if self.packs.retain
            else [torch.zeros_like(f) for f in fish_f]
        )
        self._gates = [
            torch.where(ff + fr > 0, (ff >= fr).float(), torch.ones_like(ff))
            for ff, fr in zip(fish_f, fish_r, strict=True)
        ]
        kept = sum(float(g.sum()) for g in self._gates) / max(1, sum(g.numel() for g in self._gates))
        log.info(f"fisher gate: {kept:.1%} of the LoRA coordinates open")
        for p, gate in zip(params, self._gates, strict=True):
            p.register_hook(lambda g, gate=gate: g * gate.to(g.dtype))

    def _fisher(self, params, examples, limit: int = 64) -> list[torch.Tensor]:
        """Per-sample squared gradients through the bare module (the engine's forward would arm its backward
        bookkeeping, which torch.autograd.grad never completes). Same rows and model on every rank."""
        acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        module, pad = self.engine.module, self.tokenizer.pad_token_id
        for ex in examples[:limit]:
            batch = {k: v.to(self.device) for k, v in pad_batch([ex], pad).items()}
            out = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            grads = torch.autograd.grad(
                per_sample_ce(out.logits, batch["labels"]).sum(), params, allow_unused=True
            )
            for a, g in zip(acc, grads, strict=True):
                if g is not None:
                    a += g.float() ** 2
        return [a / max(1, min(limit, len(examples))) for a in acc]

    # loop ---------------------------------------------------------------------------------------------
    def train(self) -> list[dict]:
        """The step loop (kept whole on purpose: batches, backward, step, metrics, stop rules, checkpoints)."""
        u = self.cfg.unlearn
        batches = self.schedule.batches(self.total_steps)
        progress = Progress(self.total_steps - self.start_step, f"unlearn[{self.method.name}]", unit="step")
        self.train_seconds, eval_seconds = 0.0, 0.0
        if u.eval_every and self.eval_hook and self.start_step == 0:  # the curve's starting point, not timed
            te = time.perf_counter()
            self.initial_eval = {"step": 0, **self.eval_hook(self.engine.module, 0)}
            self.eval_seconds += time.perf_counter() - te
        t0 = time.perf_counter()
        for step in range(self.start_step, self.total_steps):
            totals, lr = {}, self.engine.get_lr()[0]  # the rate this step uses (the scheduler steps after it)
            for a in range(u.grad_accum):
                items = micro_batch(
                    batches[step],
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
            row = self._log_row(step + 1, totals) | {"lr": lr, "grad_norm": grad_norm}
            if not math.isfinite(row["loss"]) or (grad_norm is not None and not math.isfinite(grad_norm)):
                raise StageError(
                    f"unlearning diverged at step {step + 1}: loss={row['loss']}, grad_norm={grad_norm} "
                    f"(lower unlearn.lr or unlearn.ascent_cap)"
                )
            if (
                u.eval_every
                and ((step + 1) % u.eval_every == 0 or step + 1 == self.total_steps)
                and self.eval_hook
            ):
                te = time.perf_counter()
                row.update(self.eval_hook(self.engine.module, step + 1))
                eval_seconds += time.perf_counter() - te
            self.metrics.append(row)
            self._append_metrics(row)
            progress.update(loss=row["loss"], forget_ce=row["forget_ce"])
            if u.save_every and (step + 1) % u.save_every == 0:
                self.save_checkpoint(step + 1)
            if u.stop_forget_ce is not None and row["forget_ce"] >= u.stop_forget_ce:
                log.info(
                    f"stop rule: forget poisoned CE {row['forget_ce']:.3f} >= {u.stop_forget_ce} at step {step + 1}"
                )
                break
        self.train_seconds = time.perf_counter() - t0 - eval_seconds
        self.eval_seconds += eval_seconds
        self._check_adapter_moved()
        return self.metrics

    def _log_row(self, step: int, totals: dict) -> dict:
        local = torch.stack([totals[k] for k in sorted(totals)]).to(self.device)
        vals = torch.stack(dist_env.all_gather_tensor(local, expected_shape=tuple(local.shape))).sum(0)
        g = dict(zip(sorted(totals), vals.tolist(), strict=True))
        world = self.info.world_size
        return {
            "step": step,
            "loss": g["loss"] / world,
            "forget_ce": g["forget_ce"] / max(g["n_forget"], 1),
            "retain_ce": g["retain_ce"] / max(g["n_retain"], 1),
            "clean_ce": g["clean_ce"] / max(g["n_forget"], 1),
            "adapter_norm": self.adapter_norm(),
        }

    def _local_grad_norm(self) -> float | None:
        """Gradient norm before clipping from the adapters' .grad: the all-reduced, complete gradient under ZeRO-0
        (the engine keeps no norm there). ZeRO 1-3 (and bf16) partition or move gradients into their own buffers
        and report the global norm through `engine.get_global_grad_norm()` after the step, which takes precedence."""
        grads = [p.grad for p in self.engine.module.parameters() if p.requires_grad and p.grad is not None]
        return math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads)) if grads else None

    def adapter_norm(self) -> float:
        return (
            math.sqrt(
                sum(
                    float(p.detach().float().pow(2).sum())
                    for n, p in self.engine.module.named_parameters()
                    if "lora_" in n and p.numel() > 0
                )
            )
            if self.cfg.unlearn.zero_stage < 3
            else self._gathered_norm()
        )

    def _gathered_norm(self) -> float:
        import deepspeed

        params = [p for n, p in self.engine.module.named_parameters() if "lora_" in n]
        with deepspeed.zero.GatheredParameters(params):
            return math.sqrt(sum(float(p.detach().float().pow(2).sum()) for p in params))

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

    # checkpoints ------------------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def save_checkpoint(self, step: int) -> None:
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=f"step{step}", client_state={"step": step})

    def _maybe_resume(self) -> int:
        latest = self.ckpt_dir / "latest"
        if not latest.exists():
            if self.info.rank == 0 and (self.out_dir / "metrics.jsonl").exists():
                (self.out_dir / "metrics.jsonl").unlink()
            return 0
        _, client = self.engine.load_checkpoint(str(self.ckpt_dir))
        step = int(client["step"])
        if self.info.rank == 0:
            self._truncate_metrics(step)
        log.info(f"resumed from {self.ckpt_dir} at step {step}")
        return step

    def _truncate_metrics(self, step: int) -> None:
        path = self.out_dir / "metrics.jsonl"
        if path.exists():
            rows = [r for r in read_jsonl(path) if r["step"] <= step]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    # save / cleanup ---------------------------------------------------------------------------------
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
        if not keep_checkpoints and self.info.rank == 0:
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        return adapter

    def _save_merged(self) -> None:
        from peft import PeftModel

        from rapidun_dist.models.loading import save_model

        base, tok = load_saved(self.model_dir, self.cfg.model)
        merged = PeftModel.from_pretrained(base, str(self.out_dir / "adapter")).merge_and_unload()
        save_model(merged, tok, self.out_dir / "merged")

    def cleanup(self) -> None:
        """Release the engine (its ZeRO-3 hooks and buffers); the process group stays for the next method."""
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None and hasattr(engine, "destroy"):
            engine.destroy()
