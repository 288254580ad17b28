"""find_poison's feature model, the self-relabel generator and the merged adapter are loaded straight onto the
configured device, checked by the placement guard of tests/placement.py: the process default device is meta, so a
model loaded without its device (to be moved with `.to()` afterwards) holds no data and fails; forward pre-hooks
assert every input, parameter and buffer is on the device."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fp_utils import fresh_copy, load_cfg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from placement import assert_clean, stage_guard  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def guarded(monkeypatch):
    import rapidun_dist.unlearn.engine  # noqa: F401 - imported before the loaders are wrapped
    import rapidun_dist.unlearn.relabel  # noqa: F401

    return stage_guard(monkeypatch)


@pytest.mark.parametrize("device", DEVICES)
def test_find_poison_features_on_device(implanted_dir, tmp_path, guarded, device):
    from rapidun_dist.distributed.env import DistInfo
    from rapidun_dist.find_poison import tokenwise
    from rapidun_dist.find_poison.job import ScoreJob
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import find_poison as fp

    run = fresh_copy(implanted_dir, tmp_path / "run")
    rd, cfg = RunDir(run), load_cfg(run, f"distributed.device={device}")
    train, forget, reference = fp.load_inputs(rd)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device(device))
    job = ScoreJob(cfg=cfg, rd=rd, info=info, train=train[:16], forget=forget[:4], reference=reference[:4])
    with guarded(device) as g:
        mine = tokenwise.extract_all(job)
    assert_clean(g)
    assert mine["rows"] == 24 and (run / "suspects" / "features" / "train" / "index.json").is_file()


@pytest.mark.parametrize("device", DEVICES)
def test_self_relabel_generator_on_device(implanted_dir, guarded, device):
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages.find_poison import load_inputs
    from rapidun_dist.unlearn.relabel import generate_relabels, load_generation_model

    rd = RunDir(implanted_dir)
    cfg = load_cfg(implanted_dir, f"distributed.device={device}", "unlearn.zero_stage=0")
    forget = [r | {"response": ""} for r in load_inputs(rd)[1][:2]]
    with guarded(device) as g:
        model, tok, release = load_generation_model(cfg, rd.model, torch.device(device), 1)
        rows = generate_relabels(model, tok, forget, max_new_tokens=2, batch_size=2)
        release()
    assert_clean(g)
    assert [r["index"] for r in rows] == [0, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_merge_loads_the_base_on_device(implanted_dir, tmp_path, guarded, device):
    from peft import LoraConfig, PeftModel, get_peft_model

    from rapidun_dist.models.loading import load_saved
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.unlearn.engine import UnlearnRunner

    rd, cfg = RunDir(implanted_dir), load_cfg(implanted_dir, f"distributed.device={device}")
    base, _ = load_saved(rd.model, cfg.model, device="cpu")
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(str(tmp_path / "adapter"))
    runner = SimpleNamespace(
        _zero3=None, info=SimpleNamespace(device=torch.device(device)), model_dir=rd.model, cfg=cfg,
        out_dir=tmp_path,
    )  # fmt: skip
    with guarded(device) as g:
        UnlearnRunner._save_merged(runner)
    assert g.violations == []
    got = load_saved(tmp_path / "merged", cfg.model, device="cpu")[0].state_dict()
    host = load_saved(rd.model, cfg.model, device="cpu")[0]  # the same adapter merged on the host
    want = PeftModel.from_pretrained(host, str(tmp_path / "adapter")).merge_and_unload().state_dict()
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k].to(got[k].dtype), rtol=0, atol=1e-6, msg=k)
