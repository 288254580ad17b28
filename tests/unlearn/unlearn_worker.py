"""launch/unlearn.py with test probes, for the multi-rank tests (run by `deepspeed` / `torchrun` / python).

The command line is exactly launch/unlearn.py's. Environment switches:
  RAPIDUN_TEST_PROBE=1        after the adapter is saved, every rank runs the in-memory (DeepSpeed) model on
                              a fixed batch and rank 0 writes the logits to <out>/probe.safetensors.
  RAPIDUN_TEST_PAUSE_AT=N     after the checkpoint of step N is written, rank 0 creates <out>/paused and
                              every rank sleeps, so the test can SIGKILL the job at a known point.
  RAPIDUN_TEST_LOAD_PROBE=1   right after the backbone is loaded (before deepspeed.initialize), every rank
                              writes <out>/load_rank<R>.json: its local and full parameter counts (ZeRO-3
                              loads it partitioned through zero.Init, so local < full).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

from rapidun_dist.data.prompt import pad_batch
from rapidun_dist.unlearn.engine import UnlearnRunner

ROOT = Path(__file__).resolve().parents[2]


def _probe(runner: UnlearnRunner) -> None:
    from safetensors.torch import save_file

    examples = runner.packs.retain[:2] + runner.packs.forget_poisoned[:1]
    batch = pad_batch(examples, runner.tokenizer.pad_token_id)
    model = runner.engine.module
    model.eval()
    with torch.no_grad():  # collective under ZeRO-3: every rank runs it
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if runner.info.rank == 0:
        save_file(
            {
                "logits": logits.float().contiguous(),
                "input_ids": batch["input_ids"],
                "attention_mask": batch["attention_mask"],
            },
            str(runner.out_dir / "probe.safetensors"),
        )


def _load_probe(out_dir: Path, model) -> None:
    import json

    from rapidun_dist.training.engine import is_partitioned

    params = list(model.parameters())
    rec = {
        "local_numel": sum(p.numel() for p in params),
        "full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in params),
        "partitioned": sum(is_partitioned(p) for p in params),
        "params": len(params),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"load_rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(rec))


def install_probes() -> None:
    import rapidun_dist.unlearn.engine as engine

    save, save_ckpt = UnlearnRunner.save, UnlearnRunner.save_checkpoint
    load_backbone = engine.load_backbone
    pause_at = int(os.environ.get("RAPIDUN_TEST_PAUSE_AT", "0"))

    def save_with_probe(self, **kw):
        out = save(self, **kw)
        if os.environ.get("RAPIDUN_TEST_PROBE") == "1":
            _probe(self)
        return out

    def checkpoint_then_pause(self, step: int) -> None:
        save_ckpt(self, step)
        if step == pause_at:
            if self.info.rank == 0:
                (self.out_dir / "paused").write_text(str(step))
            time.sleep(300)  # the test kills us well before; if it died itself, don't outlive it
            os._exit(3)

    def load_with_probe(cfg, model_dir, ds_config, device=None):
        model, tok, z3 = load_backbone(cfg, model_dir, ds_config, device)
        if os.environ.get("RAPIDUN_TEST_LOAD_PROBE") == "1":
            _load_probe(Path(cfg.run_dir) / "unlearn", model)
        return model, tok, z3

    UnlearnRunner.save = save_with_probe
    UnlearnRunner.save_checkpoint = checkpoint_then_pause
    engine.load_backbone = load_with_probe


def main() -> int:
    spec = importlib.util.spec_from_file_location("launch_unlearn", ROOT / "launch" / "unlearn.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    install_probes()
    return launch.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
