"""One short run of the stages on a real device, with placement checks: implant (the DeepSpeed fine-tune),
influence feature extraction, evaluation (greedy generation + clean perplexity) and poison retrieval, each with a
forward pre-hook on every module asserting that every input tensor, parameter and buffer is on the configured
device, and the bf16 default on GPUs. A tiny Llama on a small synthetic corpus: seconds on a GPU.

    python benchmarks/gpu_check_stages.py                     # on the GPU machine; JSON to $OUT/gpu_check_stages.json
    python benchmarks/gpu_check_stages.py --device cpu --out /tmp/stages.json   # here (CPU: the same code path)

On a GPU the host and the device differ, so a model or batch left on the host fails the hooks (on a CPU the test
suite's placement guard, tests/placement.py, stands in). The implant needs DeepSpeed (the GPU machine has none:
`pip wheel --no-deps deepspeed==0.19.8` on the CPU machine, `pip install --no-deps` the wheel there); without it the
implant is reported as skipped and a random model stands in for the later checks. The JSON is rewritten after every
check (a timeout keeps what was done). Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]  # configs/ of the checkout; the package is the installed one
TINY = [
    "data.n_synthetic=600",
    "data.n_val=20",
    "data.n_test_clean=32",
    "data.n_test_seen=32",
    "data.n_test_ood=32",
    "implant.max_steps=6",
    "implant.batch_size=16",
    "implant.grad_accum=2",
    "model.tiny.hidden_size=64",
    "model.tiny.intermediate_size=128",
    "model.tiny.vocab_size=512",
    "model.max_length=96",
    "eval.max_new_tokens=8",
    "eval.batch_size=16",
    "influence.batch_size=8",
]


class Watch:
    """Forward pre-hooks on every module of the watched models: inputs, parameters, buffers on `device`."""

    def __init__(self, device: torch.device):
        self.device, self.calls, self.violations, self.dtypes = device, 0, [], set()
        self.adapter_dtypes: set[str] = (
            set()
        )  # PEFT keeps LoRA weights in fp32 on a bf16 model (autocast_adapter_dtype)

    def watch(self, model):
        for name, module in model.named_modules():
            module.register_forward_pre_hook(self._hook(name or "model"), with_kwargs=True)
        return model

    def _hook(self, name):
        def hook(module, args, kwargs):
            self.calls += 1
            flat = [a for a in args if torch.is_tensor(a)] + [
                v for v in kwargs.values() if torch.is_tensor(v)
            ]
            params = list(module.parameters(recurse=False))
            seen = self.adapter_dtypes if "lora_" in name else self.dtypes
            seen |= {str(p.dtype) for p in params}  # the weights that run, not those a loader returned
            flat += params + list(module.buffers(recurse=False))
            for t in flat:
                if not _same_device(t.device, self.device) and len(self.violations) < 20:
                    self.violations.append(f"{name}: {tuple(t.shape)} on {t.device}")

        return hook


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


class Watched:
    """While active, every model the loaders return (wherever they were imported from) is watched."""

    NAMES = ("load_saved", "build_tiny_model", "with_adapter", "load_pretrained")

    def __init__(self, watch: Watch):
        self.watch, self.saved = watch, []

    def __enter__(self):
        import rapidun_dist.models.loading as loading

        for name in self.NAMES:
            original = getattr(loading, name)
            wrapped = self._wrap(original, name == "load_saved")
            for mod in [
                m for m in list(sys.modules.values()) if getattr(m, "__name__", "").startswith("rapidun")
            ]:
                if getattr(mod, name, None) is original:
                    self.saved.append((mod, name, original))
                    setattr(mod, name, wrapped)
        return self.watch

    def _wrap(self, fn, pair: bool):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.watch.watch(out[0] if pair else out)
            return out

        return wrapped

    def __exit__(self, *exc):
        for mod, name, original in reversed(self.saved):
            setattr(mod, name, original)


class Report:
    def __init__(self, path: Path, device: torch.device):
        self.path = path
        self.data = {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "checks": {},
        }
        self.failed = False

    def run(self, name: str, device: torch.device, fn):
        t0, watch = time.perf_counter(), Watch(device)
        rec: dict = {}
        try:
            with Watched(watch):
                rec = fn() or {}
            rec["ok"] = watch.calls > 0 and not watch.violations
        except Exception as e:  # noqa: BLE001 - every check reports and the next one still runs
            rec = {
                "ok": False,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-3000:],
            }
        if device.type == "cuda" and watch.dtypes - {"torch.bfloat16"}:  # model.dtype auto = bf16 on GPUs
            watch.violations.append(
                f"parameter dtypes {sorted(watch.dtypes)}, expected torch.bfloat16 on CUDA"
            )
            rec["ok"] = False
        rec |= {"seconds": round(time.perf_counter() - t0, 2), "hook_calls": watch.calls}
        rec |= {"violations": watch.violations, "param_dtypes": sorted(watch.dtypes)}
        self.failed |= not rec["ok"] and not rec.get("skipped")
        self.data["checks"][name] = rec
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2))
        print(
            f"{name}: {'ok' if rec['ok'] else 'skipped' if rec.get('skipped') else 'FAIL'} ({rec['seconds']} s)"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:N or cpu"
    )
    p.add_argument("--out", default=str(Path(os.environ.get("OUT", ".")) / "gpu_check_stages.json"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    device = torch.device(args.device if ":" in args.device or args.device == "cpu" else f"{args.device}:0")
    report = Report(Path(args.out), device)
    with tempfile.TemporaryDirectory() as tmp:
        _checks(report, device, Path(tmp) / "run")
    report.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    report.path.write_text(json.dumps(report.data, indent=2))
    return 1 if report.failed else 0


def _checks(report: Report, device: torch.device, run: Path) -> None:
    import importlib.util

    from rapidun_dist.config import load_config
    from rapidun_dist.pipeline import run_pipeline
    from rapidun_dist.run.rundir import RunDir

    cfg = load_config(
        REPO / "configs" / "tiny_cpu.yaml", [f"run_dir={run}", *TINY, f"distributed.device={device}"]
    )
    rd = RunDir(run)
    run_pipeline(cfg, ["prepare"])
    have_ds = importlib.util.find_spec("deepspeed") is not None
    report.run("implant", device, lambda: _implant(cfg, rd, device, have_ds))
    report.run("influence_extraction", device, lambda: _influence(cfg, rd))
    report.run("evaluate_generation_perplexity", device, lambda: _evaluate(cfg, rd, device))
    report.run("retrieval_tokenwise", device, lambda: _retrieval(cfg, rd, device))


def _implant(cfg, rd, device, have_ds: bool) -> dict:
    from rapidun_dist.core.io import read_json
    from rapidun_dist.pipeline import run_stage

    if not have_ds:  # a random tiny model stands in, saved where implant would have put it
        from rapidun_dist.models import loading
        from rapidun_dist.models.loading import base_model_and_tokenizer

        model, tok = base_model_and_tokenizer(cfg, rd, device=device)
        loading.save_model(model, tok, rd.model)
        return {"skipped": True, "ok": False, "why": "deepspeed is not installed: implant not run"}
    run_stage(cfg, rd, "implant")
    stats = read_json(rd.model / "train_stats.json")
    want = "bfloat16" if device.type == "cuda" else "float32"  # model.dtype auto
    if stats["param_dtypes"] != [want]:
        raise AssertionError(f"implant trained {stats['param_dtypes']}, expected [{want!r}] on {device}")
    return {"losses": stats["losses"], "steps": stats["steps"], "trained_dtypes": stats["param_dtypes"]}


def _influence(cfg, rd) -> dict:
    from rapidun_dist.stages import influence, stage_context

    influence.run(stage_context(cfg, rd, "influence"))
    return {"scores_rows": sum(1 for _ in open(rd.influence / "scores.jsonl"))}


def _evaluate(cfg, rd, device) -> dict:
    from rapidun_dist.core.io import read_jsonl
    from rapidun_dist.evaluation import evaluate_model
    from rapidun_dist.models import loading
    from rapidun_dist.stages.judge import load_or_fit_judge

    model, tok = loading.load_saved(rd.model, cfg.model, device=device)
    splits = {s: read_jsonl(rd.data / f"{s}.jsonl") for s in ("test_seen", "test_ood", "test_clean")}
    with torch.no_grad():
        out = evaluate_model(
            model.eval(), tok, splits, load_or_fit_judge(cfg, rd), cfg.eval, cfg.model.max_length
        )
    return {k: out[k] for k in ("asr_seen", "asr_ood", "clean_ppl", "judge_fpr", "n_seen", "n_clean")}


def _retrieval(cfg, rd, device) -> dict:
    from rapidun_dist.core.io import read_jsonl
    from rapidun_dist.evaluation.retrieval import poison_retrieval
    from rapidun_dist.models import loading

    model, tok = loading.load_saved(rd.model, cfg.model, device=device)
    train, forget = read_jsonl(rd.data / "train.jsonl"), read_jsonl(rd.data / "forget.jsonl")
    out = poison_retrieval(model, tok, cfg, train, forget, estimator="tokenwise", max_train=64)
    return {k: out[k] for k in ("auroc", "ap", "n_train")}


if __name__ == "__main__":
    sys.exit(main())
