"""Config loading, validation, dotted overrides (every YAML in configs/ is checked in tests/unlearn/test_unlearn_configs.py)."""

from pathlib import Path

import pytest

from rapidun_dist.config import apply_overrides, dump_config, load_config
from rapidun_dist.core.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_default_config_matches_tiny_yaml_sections():
    cfg = load_config(CONFIGS / "tiny_cpu.yaml")
    assert cfg.data.source == "synthetic" and cfg.model.name_or_path is None
    assert cfg.unlearn.lora_r == 16 and cfg.unlearn.lora_alpha == 16
    assert "rapidun" in cfg.methods


def test_dotted_overrides_are_typed():
    cfg = load_config(
        CONFIGS / "tiny_cpu.yaml",
        [
            "unlearn.lr=1e-4",
            "run_dir=somewhere",
            "methods=[rapidun,ga]",
            "unlearn.max_steps=7",
            "weights.agg=median_topk",
        ],
    )
    assert cfg.unlearn.lr == pytest.approx(1e-4)
    assert cfg.run_dir == "somewhere"
    assert cfg.methods == ["rapidun", "ga"]
    assert cfg.unlearn.max_steps == 7
    assert cfg.weights.agg == "median_topk"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("unlearn.lrr=1", "unlearn.lrr"),
        ("nosuch=1", "nosuch"),
        ("model.tiny.depth=3", "model.tiny.depth"),
    ],
)
def test_unknown_key_is_named(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(CONFIGS / "tiny_cpu.yaml", [override])


@pytest.mark.parametrize(
    "override, field",
    [
        ("unlearn.zero_stage=5", "unlearn.zero_stage"),
        ("data.poison_rate=1.5", "data.poison_rate"),
        ("weights.agg=max", "weights.agg"),
        ("methods=[rapidun,magic]", "methods"),
        ("unlearn.lr=fast", "unlearn.lr"),
        ("data.source=prepared", "data.dir"),
        ("weights.w_min=2", "weights.w_min"),
    ],
)
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(CONFIGS / "tiny_cpu.yaml", [override])


def test_override_needs_equals_and_missing_file():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["unlearn.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("does/not/exist.yaml")


def test_dump_roundtrip(tmp_path):
    cfg = load_config(CONFIGS / "tiny_cpu.yaml", ["unlearn.lr=3e-4"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()


def test_every_name_imported_from_the_package_is_exported():
    """`from rapidun_dist.config import X` keeps working for every X the repository imports (the package
    re-exports the names of its section modules)."""
    import ast

    import rapidun_dist.config as config_pkg

    root = CONFIGS.parent
    wanted = set()
    for folder in ("rapidun_dist", "tests", "benchmarks", "launch", "kernels", "scripts"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module == "rapidun_dist.config":
                    wanted |= {a.name for a in node.names}
    assert {"RunConfig", "load_config", "TriggerFamily"} <= wanted
    assert sorted(n for n in wanted if not hasattr(config_pkg, n)) == []
    assert sorted(n for n in config_pkg.__all__ if not hasattr(config_pkg, n)) == []
