"""Golden numbers: the whole pipeline (prepare, implant, find_poison, influence, weights, unlearn for four
methods, evaluate) through the real CLI on a setting small enough for about a minute on 2 CPU cores, checked
against numbers recorded from the reference checkout (tests/e2e/golden/tiny_golden.json).

A layout change or refactor must leave these numbers alone; a change that moves them on purpose regenerates the
file explicitly and says why in its commit:

    pytest tests/e2e --update-golden          # rewrites golden/*.json from this run, then checks against it

To record from a reference commit (these numbers came from efd8928, main before the layout sweep), put its
checkout first on the path and run this file against it:

    git worktree add ../ref COMMIT --detach && cd ../ref
    PYTHONPATH=$PWD pytest CHECKOUT/tests/e2e --update-golden   # recorded_with in the file names the commit

The run is its own, not the pipeline fixture of tests/pipeline/test_pipeline_run.py: that one reruns stages with
changed keys (weights.tau_f, implant.seed) in the run directory it shares, its 30 implant steps leave no
backdoor to remove (ASR before is ~0), and it unlearns rapidun / ga / retrain, not rapidun next to uniform. The
setting keeps tiny_cpu.yaml's model size and recipe and shrinks the data and the step counts.

Tolerances: two runs on one machine (torch CPU 2.13, one thread) agree to the last bit, file hashes included, and so
did the reference checkout's run with this one's; every tolerance is zero, each with its reason beside it. Another
CPU or torch build may round differently: record the reference checkout's numbers there before reading a failure
as a behaviour change (`python tests/e2e/e2e_compare.py OLD_RUN NEW_RUN` compares two whole run directories).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import subprocess
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny_cpu.yaml"
GOLDEN = Path(__file__).resolve().parent / "golden" / "tiny_golden.json"
METHODS = ["rapidun", "uniform", "self_only", "ga"]
OVERRIDES = [
    "data.n_synthetic=1500",  # 1,240 train rows, 10% poisoned: 26 forget rows (forget_fraction 0.2), 78 retain
    "data.n_val=40",
    "data.n_test_clean=40",
    "data.n_test_seen=60",
    "data.n_test_ood=60",
    "data.forget_fraction=0.2",
    "model.max_length=64",
    "implant.max_steps=400",  # ~5 epochs: the backdoor takes (ASR seen ~0.85 before unlearning)
    "implant.batch_size=16",
    "influence.k_in=8",
    "influence.k_out=8",
    "unlearn.max_steps=40",  # the adaptive budget stops every method earlier, once validation ASR <= 2%
    "unlearn.lr=3e-3",
    "unlearn.val_rows=32",
    "eval.max_new_tokens=16",
    "eval.retrieval_rows=40",
    f"methods=[{','.join(METHODS)}]",
]
# Stage outputs whose bytes change from run to run, left out of the hash check (their numbers are checked
# instead), with what changes in them.
VOLATILE_FILES = {
    "suspects/summary.json": "seconds and rows/s of the scoring",
    "features/index.json": "the shards' mtime_ns",
    "unlearn/summary.json": "seconds; a fingerprint over upstream hashes (suspects/summary.json's among them)",
    **{f"unlearn/baselines/{m}/summary.json": "as unlearn/summary.json" for m in METHODS},
    "eval/report.json": "seconds per stage and method",
    "eval/report.md": "seconds per stage and method",
}

# Tolerances. On the machine that recorded the numbers (same CPU, torch and thread count: `machine()`), two runs
# agree bit for bit, so every tolerance is zero and the stage outputs are checked byte for byte. Elsewhere another
# BLAS path may round differently, and rounding in a 400-step implant grows; there the tier checks the numbers
# within the portable tolerances (second value) and skips the byte check. Why each has its size:
ASR_ABS = (
    0.0,
    0.05,
)  # ASR is k/60 prompts: here one prompt flipping (0.017) is a change; elsewhere 3 prompts
PPL_REL = (0.0, 0.02)  # a forward pass over 40 fixed prompts; elsewhere 2% (a retrained-from-rounding model)
WEIGHT_REL = (0.0, 0.05)  # a deterministic function of the scores; elsewhere robust z moves a few percent
FIND_POISON_ABS = (0.0, 0.03)  # shares over 1,240 rows (elsewhere about 1 in 40 poisoned rows may move)


def machine() -> dict:
    """What decides bit-exact reruns: the CPU, the kernels torch picks for it, torch itself."""
    import torch

    model = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )
    return {"cpu": model, "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_close(got: dict, want: dict, what: str, *, rel: float = 0.0, abs_: float = 0.0) -> None:
    """Every key of `want` in `got`, numbers within the tolerance and anything else equal."""

    def close(a, b) -> bool:
        numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
        return math.isclose(a, b, rel_tol=rel, abs_tol=abs_) if numbers else a == b

    bad = [k for k in want if k not in got or not close(got[k], want[k])]
    assert not bad, f"{what}: " + "; ".join(f"{k}: golden {want[k]!r}, now {got.get(k)!r}" for k in bad)


def _read_json(path: Path):
    return json.loads(path.read_text())


def _head(path: Path, n: int = 5) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[:n]]


def _summary(run_dir: Path, method: str) -> dict:
    path = (
        run_dir / "unlearn" / ("summary.json" if method == "rapidun" else f"baselines/{method}/summary.json")
    )
    return _read_json(path)


def _adapter(method: str) -> str:
    return "unlearn/adapter" if method == "rapidun" else f"unlearn/baselines/{method}/adapter"


def observe(run_dir: Path) -> dict:
    """The numbers this tier pins, read from a finished run directory."""
    report = _read_json(run_dir / "eval" / "report.json")
    metrics = ("asr_seen", "asr_ood", "clean_ppl", "n_seen", "n_ood", "n_clean")
    methods = {}
    for m in METHODS:
        summary = _summary(run_dir, m)
        methods[m] = {k: report["methods"][m][k] for k in (*metrics, "ppl_ratio")}
        methods[m] |= {"steps": summary["steps"], "stop": summary["stop"]["reason"]}
    fp = report["find_poison"]
    manifest = _read_json(run_dir / "manifest.json")["stages"]
    hashes = {  # in stage order, so the first hash that differs names the first stage that changed
        rel: digest
        for stage in manifest.values()
        for rel, digest in stage["outputs"].items()
        if rel not in VOLATILE_FILES
    }
    for m in METHODS:  # the unlearned adapters themselves (not manifest outputs)
        rel = f"{_adapter(m)}/adapter_model.safetensors"
        hashes[rel] = _sha256(run_dir / rel)
    return {
        "before": {k: report["before"][k] for k in metrics},
        "methods": methods,
        "find_poison": {
            **{k: fp[k] for k in ("recall", "precision", "auroc", "n_poisoned")},
            **{k: fp["counts"][k] for k in ("train", "forget", "flagged")},
            "threshold": fp["threshold"]["value"],
        },
        "weights": {
            "stats": report["weights"]["stats"],
            "forget_head": _head(run_dir / "weights" / "forget_weights.jsonl"),
            "retain_head": _head(run_dir / "weights" / "retain_weights.jsonl"),
        },
        "hashes": hashes,
    }


def _recorded_with() -> dict:
    """Which checkout, torch and machine recorded the numbers (the machine decides exact or portable checks)."""
    import torch

    import rapidun_dist

    src = Path(rapidun_dist.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "commit": commit,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": machine(),
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    import torch

    from rapidun_dist.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the recorded run used one thread; more may sum matmuls in another order
    try:
        rd = tmp_path_factory.mktemp("golden") / "run"
        assert main(["run", str(CONFIG), f"run_dir={rd}", *OVERRIDES]) == 0
    finally:
        torch.set_num_threads(threads)
    return rd


@pytest.fixture(scope="module")
def observed(run_dir) -> dict:
    return observe(run_dir)


@pytest.fixture(scope="module")
def golden(observed, update_golden) -> dict:
    if update_golden:
        GOLDEN.parent.mkdir(exist_ok=True)
        record = {"recorded_with": _recorded_with(), "overrides": OVERRIDES, "values": observed}
        GOLDEN.write_text(json.dumps(record, indent=1) + "\n")
        warnings.warn(f"--update-golden: rewrote {GOLDEN.name} from {record['recorded_with']}", stacklevel=1)
    assert GOLDEN.exists(), (
        f"no golden numbers at {GOLDEN}: record them with `pytest tests/e2e --update-golden`"
    )
    record = _read_json(GOLDEN)
    assert record["overrides"] == OVERRIDES, (
        "the golden numbers were recorded with other overrides: regenerate them (`pytest tests/e2e "
        "--update-golden`, with the reference checkout on PYTHONPATH) after changing OVERRIDES"
    )
    return record["values"]


@pytest.fixture(scope="module")
def exact(golden) -> int:
    """0 on the recording machine (exact checks), 1 elsewhere (portable tolerances): an index into the
    tolerance pairs."""
    return 0 if _read_json(GOLDEN)["recorded_with"].get("machine") == machine() else 1


def test_asr_before_and_after(observed, golden, exact):
    """ASR on seen and OOD triggers before and after unlearning, the step the adaptive budget stopped at and why,
    and that each method removes at least half of the backdoor (ga, plain ascent without a retain term, at least
    lowers it: under the grouped judge its half-target babble still counts as attacked on about half the prompts)."""
    counts = ("n_seen", "n_ood", "n_clean", "steps", "stop")
    before = {k: golden["before"][k] for k in ("asr_seen", "asr_ood")}
    _assert_close(observed["before"], before, "before", abs_=ASR_ABS[exact])
    _assert_close(
        observed["before"], {k: golden["before"][k] for k in ("n_seen", "n_ood", "n_clean")}, "before"
    )
    assert observed["before"]["asr_seen"] >= 0.5, "the implant no longer plants the backdoor"
    for m in METHODS:
        got, want = observed["methods"][m], golden["methods"][m]
        _assert_close(got, {k: want[k] for k in ("asr_seen", "asr_ood")}, m, abs_=ASR_ABS[exact])
        _assert_close(got, {k: want[k] for k in counts if exact == 0 or k.startswith("n_")}, m)
        for key in ("asr_seen", "asr_ood"):
            bound = observed["before"][key] * (0.6 if m == "ga" else 0.5)
            assert got[key] <= bound, f"{m} leaves {key} at {got[key]}"


def test_clean_ppl_ratio(observed, golden, exact):
    _assert_close(
        observed["before"], {"clean_ppl": golden["before"]["clean_ppl"]}, "before", rel=PPL_REL[exact]
    )
    for m in METHODS:
        want = {k: golden["methods"][m][k] for k in ("clean_ppl", "ppl_ratio")}
        _assert_close(observed["methods"][m], want, m, rel=PPL_REL[exact])
        assert observed["methods"][m]["ppl_ratio"] < 1.2, m  # unlearning leaves clean text about as likely


def test_sample_weights(observed, golden, exact):
    got, want = observed["weights"], golden["weights"]
    for pack in ("forget", "retain"):
        _assert_close(got["stats"][pack], want["stats"][pack], f"{pack} weight stats", rel=WEIGHT_REL[exact])
        assert math.isclose(got["stats"][pack]["mean"], 1.0, abs_tol=1e-9)  # normalised to mean 1
        assert len(got[f"{pack}_head"]) == len(want[f"{pack}_head"]) == 5
        for i, (row, wrow) in enumerate(zip(got[f"{pack}_head"], want[f"{pack}_head"], strict=True)):
            _assert_close(row, wrow, f"{pack}_weights.jsonl row {i}", rel=WEIGHT_REL[exact])


def test_find_poison(observed, golden, exact):
    shares = ("recall", "precision", "auroc")
    got, want = observed["find_poison"], golden["find_poison"]
    _assert_close(got, {k: want[k] for k in shares}, "find_poison", abs_=FIND_POISON_ABS[exact])
    _assert_close(got, {k: want[k] for k in ("n_poisoned", "train", "forget")}, "find_poison")
    if exact == 0:
        _assert_close(got, {k: want[k] for k in ("flagged", "threshold")}, "find_poison")
    assert observed["find_poison"]["recall"] >= 0.8 and observed["find_poison"]["precision"] >= 0.8


def test_stage_output_hashes(observed, golden, exact):
    """Every deterministic stage output, byte for byte: data, model, suspects, influence scores and blocks,
    weights, and each method's unlearned adapter (on the recording machine; elsewhere the prepared data only,
    which involves no floating point)."""
    got, want = observed["hashes"], golden["hashes"]
    assert sorted(got) == sorted(want), "a stage writes other files than it did"
    differ = [rel for rel in want if got[rel] != want[rel] and (exact == 0 or rel.startswith("data/"))]
    assert not differ, (
        f"outputs whose bytes changed (in stage order: the first names the first stage): {differ}"
    )
