"""Shared by the sections of benchmarks/gpu_proof.sh: the section record, the software in use, timers.

A section writes OUT/<name>.json as it goes (rewritten atomically after every check), so a section killed by
its timeout keeps what it did; `status` is "pass" only when every check ran and passed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]  # the checkout: configs/ and launch/ are read from here
PACKAGES = ("torch", "triton", "transformers", "peft", "accelerate", "deepspeed", "pydantic", "rapidun_dist")


def software() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found | {"cuda": torch.version.cuda}


def describe(device: torch.device) -> dict:
    if device.type != "cuda":
        return {
            "device": str(device),
            "name": "cpu",
            "interpreted": os.environ.get("TRITON_INTERPRET") == "1",
        }
    props = torch.cuda.get_device_properties(device)
    return {"device": str(device), "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "sms": props.multi_processor_count}  # fmt: skip


class Section:
    def __init__(self, out_dir: Path, name: str, *, dry_run: bool, device: torch.device):
        self.path, self.t0 = Path(out_dir) / f"{name}.json", time.time()
        self.data = {"section": name, "status": "running", "dry_run": dry_run, **describe(device),
                     "software": software(), "checks": {}, "figures": {}}  # fmt: skip
        self.save()

    def save(self) -> None:
        self.data["seconds"] = round(time.time() - self.t0, 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".part")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)

    def check(self, name: str, ok: bool, **info) -> bool:
        self.data["checks"][name] = {"ok": bool(ok), **info}
        self.save()
        print(f"[{self.data['section']}] {name}: {'ok' if ok else 'FAIL'} {json.dumps(info, default=str)[:400]}",
              flush=True)  # fmt: skip
        return bool(ok)

    def figure(self, name: str, value) -> None:
        self.data["figures"][name] = value
        self.save()

    def step(self, name: str, fn, *args, **kwargs):
        """Run one part; an exception fails check `name` (with its traceback) and the section goes on."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - one broken part must not hide the others
            self.check(name, False, error=f"{type(exc).__name__}: {exc}"[:2000],
                       traceback=traceback.format_exc()[-3000:])  # fmt: skip
            return None

    def finish(self) -> int:
        checks = self.data["checks"].values()
        self.data["status"] = "pass" if checks and all(c["ok"] for c in checks) else "fail"
        self.save()
        return 0 if self.data["status"] == "pass" else 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_ms(fn, device: torch.device, *, reps: int = 3) -> float:
    """Median wall time of `reps` calls after one warm-up (for calls too long for do_bench's many repeats)."""
    fn()
    samples = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return sorted(samples)[len(samples) // 2]


def peak_gib(fn, device: torch.device) -> tuple[object, float | None]:
    """(fn(), peak GPU memory in GiB above what was allocated before; None off CUDA)."""
    if device.type != "cuda":
        return fn(), None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    sync(device)
    return out, round((torch.cuda.max_memory_allocated(device) - base) / 2**30, 3)
