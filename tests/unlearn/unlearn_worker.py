"""launch/unlearn.py with test probes, for the multi-rank tests (run by `deepspeed` / `torchrun` / python).

The command line is exactly launch/unlearn.py's. Environment switches:
  RAPIDUN_TEST_PROBE=1        after the adapter is saved, every rank runs the in-memory (DeepSpeed) model on
                              a fixed batch and rank 0 writes the logits to <out>/probe.safetensors.
  RAPIDUN_TEST_PAUSE_AT=N     after the checkpoint of step N is written, rank 0 creates <out>/paused and
                              every rank sleeps, so the test can SIGKILL the job at a known point.
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


def install_probes() -> None:
    save, save_ckpt = UnlearnRunner.save, UnlearnRunner.save_checkpoint
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

    UnlearnRunner.save = save_with_probe
    UnlearnRunner.save_checkpoint = checkpoint_then_pause


def main() -> int:
    spec = importlib.util.spec_from_file_location("launch_unlearn", ROOT / "launch" / "unlearn.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    install_probes()
    return launch.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
