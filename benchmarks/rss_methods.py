"""Host memory (RSS) of the unlearn stage running several methods in one process, with and without the memory
release between methods (rapidun_dist.models.loading.release_memory: gc.collect, and empty_cache on CUDA).

    python benchmarks/rss_methods.py                       # tiny config, 4 methods, both modes
    python benchmarks/rss_methods.py --methods ga,npo --steps 4 --run-dir runs/rss
    python benchmarks/rss_methods.py --run-dir runs/rss_wide --extra model.tiny.hidden_size=512 \
        model.tiny.intermediate_size=1536 model.tiny.num_hidden_layers=4   # a model whose copies show in RSS

The run dir (prepare, implant, influence, weights on configs/tiny_cpu.yaml with a smaller corpus) is built once
and reused. Each mode runs the real stage (`rapidun_dist.stages.unlearn.run`) in a fresh spawned process on its
own fork of the run dir (`RunDir.fork` of those four stages), so neither inherits the other's heap. Per method:
the peak RSS while it ran (VmHWM, reset before each method through /proc/self/clear_refs) and the RSS once the
stage has moved on to the next method (or returned). Mode `keep` replaces release_memory by a no-op (what the stage did before: the engine's `destroy` only).
Linux only (/proc).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny_cpu.yaml"
BASE_STAGES = ("prepare", "implant", "influence", "weights")  # the base run dir, built once, forked per mode
DATA = [
    "data.n_synthetic=600",
    "data.n_val=20",
    "data.n_test_clean=20",
    "data.n_test_seen=12",
    "data.n_test_ood=12",
    "implant.max_steps=10",
]


def _overrides(run_dir: Path, methods: list[str], steps: int, extra: list[str] | None = None) -> list[str]:
    unlearn = [
        f"unlearn.max_steps={steps}",
        "unlearn.eval_every=0",
        "unlearn.val_every=0",
        "unlearn.merge=false",
    ]
    return [f"run_dir={run_dir}", *DATA, f"methods=[{','.join(methods)}]", *unlearn, *(extra or [])]


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {key}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def prepare(run_dir: str, methods: list[str], steps: int, extra: list[str]) -> None:
    from rapidun_dist.config import load_config
    from rapidun_dist.pipeline import run_pipeline

    cfg = load_config(CONFIG, _overrides(Path(run_dir), methods, steps, extra))
    run_pipeline(cfg, list(BASE_STAGES))


def measure(run_dir: str, methods: list[str], steps: int, extra: list[str], release: bool) -> dict:
    """One mode in this (fresh) process: [{method, peak_mib, after_mib, seconds}] and the RSS before the first."""
    import rapidun_dist.stages.unlearn as unlearn
    from rapidun_dist.config import load_config
    from rapidun_dist.models import loading
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import stage_context

    if not release:
        loading.release_memory = lambda: None  # the stage, the engine and self-relabel import it at call time
    cfg = load_config(CONFIG, _overrides(Path(run_dir), methods, steps, extra))
    rows: list[dict] = []
    setup_peak = [0.0]  # VmHWM before the first reset: imports, warm-up, shared inputs
    real = unlearn.run_method

    def run_method(*args, **kwargs):
        if rows:  # the previous method is over and the stage has done its clean-up
            rows[-1]["after_mib"] = _status_mib("VmRSS")
        else:
            setup_peak[0] = _status_mib("VmHWM")
        rows.append({"method": args[1], "before_mib": _status_mib("VmRSS")})
        _reset_peak()
        t0 = time.perf_counter()
        out = real(*args, **kwargs)
        rows[-1] |= {"peak_mib": _status_mib("VmHWM"), "seconds": time.perf_counter() - t0}
        return out

    unlearn.run_method = run_method
    unlearn.run(stage_context(cfg, RunDir(run_dir), "unlearn"))
    rows[-1]["after_mib"] = _status_mib("VmRSS")
    peak = max([setup_peak[0], _status_mib("VmHWM")] + [r["peak_mib"] for r in rows])
    return {"rows": rows, "process_peak_mib": peak}


def _fresh(fn, *args):
    """`fn(*args)` in a new spawned process (its own heap and peak)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "rss_methods")
    ap.add_argument("--methods", default="ga,graddiff,npo,rapidun")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--extra", nargs="*", default=[], help="more config overrides (key=value)")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    base = args.run_dir / "base"
    if not (base / "weights").is_dir():
        _fresh(prepare, str(base), methods, args.steps, args.extra)
    results = {}
    from rapidun_dist.run.rundir import RunDir

    for mode in ("keep", "release"):
        run = RunDir(base).fork(args.run_dir / mode, BASE_STAGES, replace=True).root
        results[mode] = _fresh(measure, str(run), methods, args.steps, args.extra, mode == "release")
    extra = f", {' '.join(args.extra)}" if args.extra else ""
    print(
        f"RSS of the unlearn stage, {len(methods)} methods x {args.steps} steps, one process (MiB){extra}\n"
    )
    print("| method | peak keep | peak release | after keep | after release | s keep | s release |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k, r in zip(results["keep"]["rows"], results["release"]["rows"], strict=True):
        print(
            f"| {k['method']} | {k['peak_mib']:.0f} | {r['peak_mib']:.0f} | {k['after_mib']:.0f} | "
            f"{r['after_mib']:.0f} | {k['seconds']:.1f} | {r['seconds']:.1f} |"
        )
    k0, r0 = results["keep"]["rows"][0]["before_mib"], results["release"]["rows"][0]["before_mib"]
    print(f"| (before the first) | | | {k0:.0f} | {r0:.0f} | | |")
    print(
        f"\nprocess peak: keep {results['keep']['process_peak_mib']:.0f} MiB, "
        f"release {results['release']['process_peak_mib']:.0f} MiB; python {sys.version.split()[0]}"
    )


if __name__ == "__main__":
    main()
