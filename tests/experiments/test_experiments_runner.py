"""The runner: one `rapidun run` per cell and seed with the spec's exact arguments, done runs skipped through the
run directories' manifests (resumable), failures stopping the sweep with the log named."""

from __future__ import annotations

from pathlib import Path

import pytest
from exp_helpers import CONFIG, complete_run

from rapidun_dist.cli.experiments.runner import missing_stages, plan, run_spec
from rapidun_dist.config import load_config
from rapidun_dist.core.errors import StageError


class FakeLauncher:
    """Records each launch; "runs" it by recording every stage done (or not, or failing)."""

    def __init__(self, *, complete: bool = True, rc: int = 0):
        self.calls: list[list[str]] = []
        self.complete, self.rc = complete, rc

    def __call__(self, args: list[str], log: Path) -> int:
        self.calls.append(args)
        assert log.name.endswith(".log") and log.parent == Path(args[-1].removeprefix("run_dir=")).parent
        if self.complete:
            complete_run(load_config(args[0], args[1:]))
        return self.rc


def test_every_cell_and_seed_runs_once_with_the_spec_command(spec, tmp_path):
    out = tmp_path / "out"
    launcher = FakeLauncher()
    tasks = run_spec(spec, out, launcher=launcher)
    assert len(tasks) == len(launcher.calls) == 6 and all(t.missing for t in tasks)
    assert launcher.calls[0] == [str(CONFIG), "seed=0", "methods=[rapidun,uniform]", "unlearn.lr=1e-3",
                                 "data.retain_contamination=0", f"run_dir={out / 'a' / 's0'}"]  # fmt: skip
    assert launcher.calls[-1][:3] == [str(CONFIG), "seed=2", "methods=[rapidun,rapidun_placebo,uniform]"]
    assert spec.command(spec.cell("b")) == (
        f'rapidun run {CONFIG} seed=S "methods=[rapidun,rapidun_placebo,uniform]" unlearn.lr=1e-3 '
        "data.retain_contamination=0.1"
    )
    again = FakeLauncher()
    assert (
        not any(t.missing for t in run_spec(spec, out, launcher=again)) and again.calls == []
    )  # resumed: nothing


def test_a_run_whose_outputs_changed_or_config_differs_is_run_again(spec, tmp_path):
    out = tmp_path / "out"
    run_spec(spec, out, launcher=FakeLauncher())
    (out / "a" / "s1" / "weights" / "out.txt").write_text("edited\n")  # weights' output changed on disk
    launcher = FakeLauncher()
    run_spec(spec, out, launcher=launcher)
    assert [c[1] for c in launcher.calls] == ["seed=1"] and launcher.calls[0][-1].endswith("a/s1")
    cfg = load_config(CONFIG, ["seed=0", "methods=[rapidun,uniform]", f"run_dir={out / 'a' / 's0'}"])
    assert missing_stages(cfg)  # without the spec's overrides: another config, nothing of it is done


def test_subsets_dry_run_and_failures(spec, tmp_path):
    out = tmp_path / "out"
    dry = FakeLauncher()
    tasks = run_spec(spec, out, cells=["b"], seeds=[1], dry_run=True, launcher=dry)
    assert [(t.cell.name, t.seed) for t in tasks] == [("b", 1)] and dry.calls == []
    assert tasks[0].missing[0] == "prepare" and tasks[0].missing[-1] == "evaluate"
    with pytest.raises(StageError, match=r"failed \(exit 3\); see .*s0\.log"):
        run_spec(spec, out, launcher=FakeLauncher(complete=False, rc=3))
    with pytest.raises(StageError, match="exited 0 but stages"):
        run_spec(spec, out, launcher=FakeLauncher(complete=False))
    with pytest.raises(Exception, match="seeds \\[7\\]"):
        plan(spec, out, seeds=[7])
    with pytest.raises(Exception, match="no cell 'c'"):
        plan(spec, out, cells=["c"])
