"""Every stage puts its model and its inputs on the configured device (`distributed.device`), checked by the
placement guard of tests/placement.py: the default device is meta, host batches are marked, and forward pre-hooks
on every module assert inputs, parameters and buffers are on the device. The first test shows the guard fails on
each kind of misplacement, so a pass means something on a CPU-only machine."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from placement import PlacementError, assert_clean, placement_guard, stage_guard, watch_loaded_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny_cpu.yaml"
SMALL = [
    "data.n_synthetic=300",
    "data.n_val=10",
    "data.n_test_clean=10",
    "data.n_test_seen=8",
    "data.n_test_ood=8",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.vocab_size=400",
    "model.max_length=64",
    "implant.max_steps=2",
    "implant.batch_size=8",
    "methods=[rapidun,retrain]",
    "unlearn.max_steps=2",
    "unlearn.eval_every=0",
    "unlearn.lora_dropout=0",
    "eval.max_new_tokens=2",
    "eval.batch_size=8",
    "eval.retrieval_rows=8",
    "influence.batch_size=4",
]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _cfg(run: Path, device: str = "cpu", extra: list[str] | None = None):
    from rapidun_dist.config import load_config

    return load_config(CONFIG, [f"run_dir={run}", *SMALL, f"distributed.device={device}", *(extra or [])])


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    """Every stage run once, unguarded (the inputs of the guarded runs below)."""
    from rapidun_dist.pipeline import run_pipeline

    run = tmp_path_factory.mktemp("device") / "run"
    run_pipeline(_cfg(run))
    return run


def _copy(src: Path, dst: Path, drop: tuple[str, ...]) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    return dst


@pytest.fixture
def guarded(monkeypatch):
    """guarded(device) -> the placement guard as a context; every model the stages load is watched."""
    import rapidun_dist.unlearn.engine  # noqa: F401 - imported before the loaders are wrapped

    return stage_guard(monkeypatch)


# the guard itself ---------------------------------------------------------------------------------------------


def _tiny_llama(**kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def test_guard_catches_each_kind_of_misplacement(monkeypatch):
    from rapidun_dist.data import prompt

    examples = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]
    with placement_guard("cpu", monkeypatch) as g:  # 1. a model built without a device: its weights on meta
        model = _tiny_llama()
        g.watch(model)
        ids = torch.tensor([[1, 2, 3]], device="cpu")
        with pytest.raises(PlacementError, match="meta"):
            model(input_ids=ids)
    with placement_guard("cpu", monkeypatch) as g:  # 2. a host batch never moved to the device
        with torch.device("cpu"):
            model = _tiny_llama()
        g.watch(model)
        batch = prompt.pad_batch(examples, 0)
        with pytest.raises(PlacementError, match="never moved"):
            model(input_ids=batch["input_ids"])
        model(input_ids=batch["input_ids"].to(torch.device("cpu")))  # moved: passes
        with pytest.raises(PlacementError, match="host batch tensor"):  # 3. host labels meet device logits
            torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0], batch["labels"][0])
        with pytest.raises(
            (PlacementError, RuntimeError, NotImplementedError)
        ):  # 4. an implicit tensor: meta
            model(input_ids=torch.tensor([[1, 2, 3]]))
    assert g.calls > 0


# the stages -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_implant_on_device(done_run, tmp_path, guarded, device):
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import implant, stage_context

    run = _copy(done_run, tmp_path / "run", ("model", "features", "unlearn", "eval"))
    with guarded(device) as g:
        implant.run(stage_context(_cfg(run, device), RunDir(run), "implant"))
    assert_clean(g)
    assert (run / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("device", DEVICES)
def test_retrain_on_device(done_run, tmp_path, guarded, device):
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.training.retrain import run_retrain

    with guarded(device) as g:
        summary = run_retrain(
            _cfg(done_run, device), RunDir(done_run), "retrain", tmp_path / "rt", fingerprint="t"
        )
    assert_clean(g)
    assert summary["steps"] == 2 and (tmp_path / "rt" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("device", DEVICES)
def test_influence_extraction_on_device(done_run, tmp_path, guarded, device):
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import influence, stage_context

    run = _copy(done_run, tmp_path / "run", ("features", "influence", "unlearn", "eval"))
    with guarded(device) as g:
        influence.run(stage_context(_cfg(run, device), RunDir(run), "influence"))
    assert_clean(g)
    assert (run / "influence" / "scores.jsonl").is_file()


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_generation_perplexity_retrieval_on_device(done_run, tmp_path, guarded, device):
    from rapidun_dist.core.io import read_json
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import evaluate, stage_context

    run = _copy(done_run, tmp_path / "run", ("eval",))
    with guarded(device) as g:
        evaluate.run(stage_context(_cfg(run, device, ["eval.retrieval_rows=0"]), RunDir(run), "evaluate"))
    assert_clean(g)
    report = read_json(run / "eval" / "report.json")
    assert report["before"]["clean_ppl"] > 1 and report["methods"]["rapidun"]["asr_seen"] is not None


@pytest.mark.parametrize("device", DEVICES)
def test_retrieval_tokenwise_on_device(done_run, guarded, device):
    from rapidun_dist.core.io import read_jsonl
    from rapidun_dist.evaluation.retrieval import poison_retrieval
    from rapidun_dist.models import loading

    cfg = _cfg(done_run, device)
    train, forget = (
        read_jsonl(done_run / "data" / "train.jsonl"),
        read_jsonl(done_run / "data" / "forget.jsonl"),
    )
    with guarded(device) as g:
        model, tok = loading.load_saved(done_run / "model", cfg.model, device=torch.device(device))
        out = poison_retrieval(model, tok, cfg, train, forget, estimator="tokenwise", max_train=8)
    assert_clean(g)
    assert 0.0 <= out["auroc"] <= 1.0


def test_retrieval_rapidgrad_on_device(done_run, guarded):
    from rapidun_dist.core.io import read_jsonl
    from rapidun_dist.evaluation.retrieval import poison_retrieval
    from rapidun_dist.models import loading

    cfg = _cfg(done_run)
    train, forget = (
        read_jsonl(done_run / "data" / "train.jsonl"),
        read_jsonl(done_run / "data" / "forget.jsonl"),
    )
    with guarded("cpu") as g:
        model, tok = loading.load_saved(done_run / "model", cfg.model, device=torch.device("cpu"))
        poison_retrieval(model, tok, cfg, train, forget, estimator="rapidgrad", max_train=8)
    assert_clean(g)


def _unlearn_under(guard_ctx, done_run, tmp_path, device):
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import stage_context, unlearn

    run = _copy(done_run, tmp_path / "run", ("unlearn", "eval"))
    with guard_ctx as g:
        unlearn.run(stage_context(_cfg(run, device, ["methods=[rapidun]"]), RunDir(run), "unlearn"))
    assert_clean(g)
    assert (run / "unlearn" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("device", DEVICES)
def test_unlearning_engine_forward_hooks(done_run, tmp_path, monkeypatch, device):
    """The engine's forward under the hooks and host-batch marking (default device left alone: see below)."""
    import rapidun_dist.unlearn.engine  # noqa: F401

    ctx = placement_guard(
        device, monkeypatch, meta_default=False, watch_models=lambda g: watch_loaded_models(g, monkeypatch)
    )
    _unlearn_under(ctx, done_run, tmp_path, device)


def test_unlearning_engine_under_meta_default(done_run, tmp_path, guarded):
    _unlearn_under(guarded("cpu"), done_run, tmp_path, "cpu")


@pytest.mark.slow
def test_gpu_check_stages_script_runs_on_cpu(tmp_path):
    """benchmarks/gpu_check_stages.py --device cpu: the GPU check's code path, every check ok (about 20 s)."""
    import json
    import os
    import subprocess

    out = tmp_path / "stages.json"
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check_stages.py"), "--device", "cpu", "--out", str(out)],
        cwd=ROOT, env=env | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    checks = json.loads(out.read_text())["checks"]
    assert set(checks) == {
        "implant",
        "influence_extraction",
        "evaluate_generation_perplexity",
        "retrieval_tokenwise",
    }
    assert all(c["ok"] and c["hook_calls"] > 0 and not c["violations"] for c in checks.values()), checks
