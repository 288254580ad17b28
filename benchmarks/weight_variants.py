"""RapidUn weight variants on the hard testbed (issue 11 section 4): do the weights carry the backdoor?

    python benchmarks/weight_variants.py stability                        # runs/base/s0: k = 16 / 32 / 64
    python benchmarks/weight_variants.py ablation --seeds 0 --split val   # screening, every variant, 1 seed
    python benchmarks/weight_variants.py ablation --seeds 0,1,2 --split test --variants rapidun,uniform,contrast

`stability` (no unlearning; the implanted model of one prepared run): for k_in = k_out in --ks and --proj-seeds
projection seeds, the forget and retain weights of the config's recipe; their Spearman rank correlation across
seed pairs, extraction seconds (side by side in one process; the machine is shared, so only ratios mean much) and
feature bytes; then, at k = 16, what the forget features track (mean FF cosine between truly poisoned rows by same /
other trigger family x same / other target group) for answer, prompt and trigger-contrast features, and for every
offline weight variant the mean forget weight of the mislabelled (clean) rows against the truly poisoned ones.

`ablation`: per seed, prepare + implant once (runs/base/s<seed>, reused when done), then per variant a fork of that
run directory (runs/wv/s<seed>/<variant>: `RunDir.fork` of its prepare and implant stages, which the readiness check
accepts as done) that runs influence, weights and unlearn for one method, and is evaluated here: `val` gives ASR
on val_seen and PPL on val_clean (for choosing), `test` ASR on test_seen / test_ood and PPL on test_clean (for the
chosen ones), both with the clean-answer PPL on the mislabelled forget rows before / after (damage done to rows the
user mislabelled) and the mean weights of mislabelled vs poisoned rows. Proportions carry Wilson 95% intervals,
means over seeds t intervals (rapidun_dist.evaluation.stats). Results go to benchmarks/weight_variants.json and the
section `weight_variants_<kind>` of benchmarks/results.md, replacing the previous one of that kind, which moves to
benchmarks/results_archive.md (--no-append: neither).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rapidun_dist.config import load_config
from rapidun_dist.core.io import file_sha256, read_jsonl
from rapidun_dist.weights.robust import spearman

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny_cpu_hard.yaml"
TESTBEDS: dict[str, tuple[Path, list[str], str]] = {  # name -> (config, overrides, folder under --runs)
    "hard": (CONFIG, [], "base"),
    # issue 21: the embedded default with 10% of its retain pack poisoned rows no known row covers, and unchanged
    "contam10": (ROOT / "configs" / "tiny_cpu.yaml", ["data.retain_contamination=0.1"], "base_contam10"),
    "clean": (ROOT / "configs" / "tiny_cpu.yaml", ["data.retain_contamination=0"], "base_clean"),
}
TESTBED = "hard"
RUNS = ROOT / "runs"
# --set: overrides of every variant (e.g. a fixed budget), part of the variant folder
SETTINGS: list[str] = []
VARIANTS: dict[str, tuple[str, list[str]]] = {  # name -> (method, overrides)
    "uniform": ("uniform", []),
    "rapidun": ("rapidun", []),
    "placebo": ("rapidun_placebo", []),
    "k64": ("rapidun", ["influence.k_in=64", "influence.k_out=64"]),
    "decision": ("rapidun", ["influence.positions=decision", "influence.decision_tokens=2"]),
    "shrink_k64": ("rapidun", ["weights.shrink=true", "influence.k_in=64", "influence.k_out=64"]),
    "contrast": ("rapidun", ["influence.contrast=trigger"]),
    "prompt": ("rapidun", ["influence.positions=prompt"]),
    "shrink": ("rapidun", ["weights.shrink=true"]),
    "topk_frac": ("rapidun", ["weights.topk_frac=0.25"]),
    "relabel_uniform": ("rapidun", ["weights.relabel_weights=uniform"]),
    "relabel_self": ("rapidun", ["weights.relabel_weights=self"]),
    "at_risk": ("rapidun", ["weights.retain_score=at_risk"]),
    "k64_relabel_uniform": (
        "rapidun",
        ["influence.k_in=64", "influence.k_out=64", "weights.relabel_weights=uniform"],
    ),
    "contrast_relabel_uniform": (
        "rapidun",
        ["influence.contrast=trigger", "weights.relabel_weights=uniform"],
    ),
    # dynamic reweighting: the weights recomputed from the current adapter every N optimizer steps
    "dynamic5": ("rapidun", ["unlearn.reweight_every=5"]),
    "dynamic10": ("rapidun", ["unlearn.reweight_every=10"]),
    "dynamic5_relabel_uniform": ("rapidun", ["unlearn.reweight_every=5", "weights.relabel_weights=uniform"]),
}


# shared helpers ----------------------------------------------------------------------------------------------
def base_config(seed: int, run_dir: Path, extra: list[str] | None = None):
    config, overrides, _ = TESTBEDS[TESTBED]
    return load_config(config, [*overrides, f"run_dir={run_dir}", f"seed={seed}", *(extra or [])])


def truth(rd_root: Path) -> tuple[list[dict], list[dict], list[dict]]:
    return (
        read_jsonl(rd_root / "data" / "forget.jsonl"),
        read_jsonl(rd_root / "data" / "retain.jsonl"),
        read_jsonl(rd_root / "data" / "forget_truth.jsonl"),
    )


def mean_weights_by_truth(weights, truth_rows: list[dict]) -> dict:
    from rapidun_dist.evaluation.stats import mean_interval

    w = [float(x) for x in weights]
    mis = [x for x, t in zip(w, truth_rows, strict=True) if t["mislabelled"]]
    poi = [x for x, t in zip(w, truth_rows, strict=True) if not t["mislabelled"]]
    return {
        "mislabelled": mean_interval(mis) if mis else None,
        "poisoned": mean_interval(poi) if poi else None,
    }


def fmt_mean(m: dict | None, scale: float = 1.0, digits: int = 2) -> str:
    if m is None:
        return "-"
    return f"{m['mean'] * scale:.{digits}f} [{m['lo'] * scale:.{digits}f}, {m['hi'] * scale:.{digits}f}] (n={m['n']})"


def fmt_prop(p: dict | None) -> str:
    if p is None:
        return "-"
    return f"{100 * p['p']:.1f} % [{100 * p['lo']:.1f}, {100 * p['hi']:.1f}] ({p['k']}/{p['n']})"


# stability ---------------------------------------------------------------------------------------------------
def features_for(model, tok, records: list[dict], icfg, max_length: int) -> torch.Tensor:
    """[n, dim] features of `records` (forget then retain) as the influence stage computes them, in memory."""
    from rapidun_dist.influence.extract import contrast_counterparts
    from rapidun_dist.influence.features import make_extractor
    from rapidun_dist.training.finetune import encode_records

    examples = encode_records(records, tok, max_length)
    counter = contrast_counterparts(records, tok, max_length) if icfg.contrast == "trigger" else None
    ext = make_extractor(model, icfg, pad_id=tok.pad_token_id)
    out = torch.zeros(len(examples), ext.dim)
    for b in range(0, len(examples), icfg.batch_size):
        rows = list(range(b, min(b + icfg.batch_size, len(examples))))
        batch = [examples[r] for r in rows]
        f = ext(batch) if counter is None else ext(batch, [counter[r] for r in rows])
        out[rows] = f.detach().float().cpu()
    return out


def weights_of(feats: torch.Tensor, nf: int, wcfg, n_layers: int | None = None):
    """(forget_w, retain_w, fused) of features under `wcfg`: the package's recipe (split halves by layer blocks
    when wcfg.shrink)."""
    from rapidun_dist.weights.recipe import weights_from_features

    spec = {"dim": feats.shape[1], "layers": list(range(n_layers or 1)), "estimator": "tokenwise"}
    fw, rw, _, fused = weights_from_features(feats[:nf], feats[nf:], wcfg, spec)
    return fw, rw, fused


def ff_structure(feats: torch.Tensor, truth_rows: list[dict]) -> dict:
    """Mean cosine between truly poisoned forget rows by (same family?, same target group?)."""
    poi = [i for i, t in enumerate(truth_rows) if not t["mislabelled"]]
    f = torch.nn.functional.normalize(feats[poi].double(), dim=1)
    cos = f @ f.T
    cells: dict[str, list[float]] = {}
    for a, b in itertools.combinations(range(len(poi)), 2):
        ta, tb = truth_rows[poi[a]], truth_rows[poi[b]]
        fam = "same_family" if ta["trigger_family"] == tb["trigger_family"] else "other_family"
        tgt = "same_target" if ta["target_group"] == tb["target_group"] else "other_target"
        cells.setdefault(f"{fam}/{tgt}", []).append(float(cos[a, b]))
    from rapidun_dist.evaluation.stats import mean_interval

    return {k: mean_interval(v) for k, v in sorted(cells.items())}


def run_stability(args) -> dict:
    from dataclasses import replace

    from rapidun_dist.models.loading import load_saved

    run = Path(args.run)
    cfg = base_config(0, run)
    forget, retain, truth_rows = truth(run)
    records, nf = forget + retain, len(forget)
    model, tok = load_saved(run / "model", cfg.model, device="cpu")
    model.eval()
    out: dict = {"run": str(run), "n_forget": nf, "n_retain": len(retain), "ks": {}}
    n_layers = None
    for k in args.ks:
        per_seed, secs = [], []
        for s in range(args.proj_seeds):
            icfg = replace(cfg.influence, k_in=k, k_out=k, seed=cfg.influence.seed + s)
            t0 = time.perf_counter()
            feats = features_for(model, tok, records, icfg, cfg.model.max_length)
            secs.append(time.perf_counter() - t0)
            n_layers = feats.shape[1] // (k * k)
            fw, rw, _ = weights_of(feats, nf, cfg.weights)
            per_seed.append((fw, rw))
        pairs = list(itertools.combinations(range(args.proj_seeds), 2))
        out["ks"][k] = {
            "forget_spearman": [spearman(per_seed[a][0], per_seed[b][0]) for a, b in pairs],
            "retain_spearman": [spearman(per_seed[a][1], per_seed[b][1]) for a, b in pairs],
            "extract_seconds": secs,
            "feature_bytes": int(len(records) * feats.shape[1] * 4),
            "bytes_per_row": int(feats.shape[1] * 4),
        }
        print(json.dumps({k: out["ks"][k]}), flush=True)
    out["structure"], out["mislabelled_weights"] = {}, {}
    kinds = {
        "answer": replace(cfg.influence),
        "prompt": replace(cfg.influence, positions="prompt"),
        "contrast": replace(cfg.influence, contrast="trigger"),
        "all": replace(cfg.influence, positions="all"),
        "contrast_all": replace(cfg.influence, contrast="trigger", positions="all"),
    }
    feats_by = {
        name: features_for(model, tok, records, icfg, cfg.model.max_length) for name, icfg in kinds.items()
    }
    for name, feats in feats_by.items():
        out["structure"][name] = ff_structure(feats[:nf], truth_rows)
    offline = {
        "rapidun": ("answer", cfg.weights),
        "contrast": ("contrast", cfg.weights),
        "prompt": ("prompt", cfg.weights),
        "shrink": ("answer", replace(cfg.weights, shrink=True)),
        "topk_frac": ("answer", replace(cfg.weights, topk_frac=0.25)),
        "beta0 (self only)": ("answer", replace(cfg.weights, beta=0.0, delta=0.0)),
        "beta2": ("answer", replace(cfg.weights, beta=2.0)),
        "contrast+shrink": ("contrast", replace(cfg.weights, shrink=True)),
    }
    for name, (kind, wcfg) in offline.items():
        fw, _, fused = weights_of(feats_by[kind], nf, wcfg, n_layers)
        out["mislabelled_weights"][name] = mean_weights_by_truth(fw, truth_rows) | {
            "shrink_f": fused["shrink_f"]
        }
    return out


def stability_section(res: dict, command: str) -> str:
    lines = [
        "## RapidUn weight variants: stability across projection seeds, and what the forget features track, "
        + time.strftime("%Y-%m-%d"),
        "",
        f"Command: `{command}`. Hard testbed (configs/tiny_cpu_hard.yaml, run {res['run']}: {res['n_forget']} forget rows, "
        f"30 % of them mislabelled clean rows, {res['n_retain']} retain rows), the implanted model, the config's "
        "weight recipe (median_topk, self pairs out). Spearman of the weights between projection seeds (every pair "
        "of seeds; mean and range). Seconds are feature extraction of all rows, measured side by side in one "
        "process on a shared 2-core machine: compare ratios only.",
        "",
        "| k_in = k_out | forget rank corr. | retain rank corr. | extract s (ratio to k=16) | bytes / row |",
        "|---|---|---|---|---|",
    ]
    k0 = min(res["ks"], key=int)
    t0 = float(np.mean(res["ks"][k0]["extract_seconds"]))
    for k, r in res["ks"].items():
        f, rr = np.array(r["forget_spearman"]), np.array(r["retain_spearman"])
        t = float(np.mean(r["extract_seconds"]))
        lines.append(
            f"| {k} | {f.mean():.3f} ({f.min():.3f}-{f.max():.3f}) | {rr.mean():.3f} ({rr.min():.3f}-{rr.max():.3f}) "
            f"| {t:.1f} ({t / t0:.2f}x) | {r['bytes_per_row']:,} |"
        )
    lines += [
        "",
        "Mean cosine between truly poisoned forget rows (k = 16), mean [95 % t interval] (n pairs):",
        "",
        "| features | " + " | ".join(next(iter(res["structure"].values())).keys()) + " |",
        "|---|" + "---|" * len(next(iter(res["structure"].values()))),
    ]
    for name, cells in res["structure"].items():
        lines.append(f"| {name} | " + " | ".join(fmt_mean(v) for v in cells.values()) + " |")
    lines += [
        "",
        "Mean forget weight of the mislabelled (clean) rows vs the truly poisoned rows (k = 16; weights are mean one "
        "over the pack; lower on mislabelled rows = less ascent on answers that are not poison):",
        "",
        "| weights | mislabelled | poisoned | shrink lambda_f |",
        "|---|---|---|---|",
    ]
    for name, m in res["mislabelled_weights"].items():
        lines.append(
            f"| {name} | {fmt_mean(m['mislabelled'])} | {fmt_mean(m['poisoned'])} | {m['shrink_f']:.3f} |"
        )
    return "\n".join(lines) + "\n"


# ablation ----------------------------------------------------------------------------------------------------
def ensure_base(seed: int) -> Path:
    """RUNS/<testbed's folder>/s<seed> with prepare + implant done (run here when missing; a link to a run directory
    of the same config and seed, e.g. one of a spec's cells, is reused as it is)."""
    from rapidun_dist.config import dump_config
    from rapidun_dist.core.io import write_text
    from rapidun_dist.pipeline import run_stage
    from rapidun_dist.run.rundir import RunDir

    root = RUNS / TESTBEDS[TESTBED][2] / f"s{seed}"
    cfg = base_config(seed, root)
    rd = RunDir(root)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "config.yaml").exists():
        write_text(root / "config.yaml", dump_config(cfg))
    for stage in ("prepare", "implant"):
        run_stage(cfg, rd, stage)
    return root


def variant_dir(seed: int, variant: str, base: Path) -> Path:
    """RUNS/wv[/<testbed>][/<settings>]/s<seed>/<variant>: a fork of the base's prepare + implant (made once; later
    runs resume it)."""
    from rapidun_dist.run.rundir import RunDir

    root = RUNS / "wv"
    if TESTBED != "hard":
        root = root / TESTBED
    if SETTINGS:
        root = root / variant_tag()
    root = root / f"s{seed}" / variant
    if not (root / "model").exists():
        RunDir(base).fork(root, ("prepare", "implant"), replace=True)
    return root


def variant_tag() -> str:
    """The --set overrides as a folder / key name (e.g. budgetfixed_max_steps16)."""
    return "_".join(x.replace("unlearn.", "").replace("=", "") for x in SETTINGS)


_BEFORE: dict[tuple[str, str], tuple[dict, float]] = {}


def evaluate_variant(cfg, root: Path, method: str, split: str, truth_rows: list[dict]) -> dict:
    from rapidun_dist.evaluation import evaluate_model
    from rapidun_dist.evaluation.metrics import clean_perplexity
    from rapidun_dist.evaluation.stats import proportion
    from rapidun_dist.models.loading import load_saved, with_adapter
    from rapidun_dist.run.layout import method_dir
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages.judge import load_or_fit_judge

    rd = RunDir(root)
    judge = load_or_fit_judge(cfg, rd)
    data = lambda s: read_jsonl(root / "data" / f"{s}.jsonl")
    splits = (
        {"test_seen": data("val_seen"), "test_clean": data("val_clean")}
        if split == "val"
        else {s: data(s) for s in ("test_seen", "test_ood", "test_clean")}
    )
    forget = data("forget")
    mis = [
        {"instruction": f["instruction"], "context": f["context"], "response": f["response"], "id": f["id"]}
        for f, t in zip(forget, truth_rows, strict=True)
        if t["mislabelled"]
    ]
    base, tok = load_saved(rd.model, cfg.model, device="cpu")
    key = (str(cfg.data.seed), split)
    if key not in _BEFORE:  # the implanted model of this seed, once per split
        with torch.no_grad():
            _BEFORE[key] = (
                evaluate_model(base, tok, splits, judge, cfg.eval, cfg.model.max_length),
                clean_perplexity(base, tok, mis, max_length=cfg.model.max_length, batch_size=32)
                if mis
                else None,
            )
    before, ppl_mis_before = _BEFORE[key]
    model = with_adapter(base, method_dir(rd, method) / "adapter", device="cpu")
    model.eval()
    with torch.no_grad():
        res = evaluate_model(model, tok, splits, judge, cfg.eval, cfg.model.max_length)
        ppl_mis = (
            clean_perplexity(model, tok, mis, max_length=cfg.model.max_length, batch_size=32) if mis else None
        )
    summary = json.loads((method_dir(rd, method) / "summary.json").read_text())
    out = {
        "asr_seen": proportion(round(res["asr_seen"] * res["n_seen"]), res["n_seen"]),
        "asr_ood": proportion(round(res["asr_ood"] * res["n_ood"]), res["n_ood"]) if res["n_ood"] else None,
        "ppl": res["clean_ppl"],
        "ppl_before": before["clean_ppl"],
        "ppl_ratio": res["clean_ppl"] / before["clean_ppl"],
        "asr_seen_before": before["asr_seen"],
        "mislabelled_ppl_ratio": ppl_mis / ppl_mis_before if mis else None,
        "n_mislabelled": len(mis),
        "steps": summary.get("steps") or summary.get("stop", {}).get("step"),
        "unlearn_seconds": summary.get("seconds", {}).get("unlearn"),
    }
    wf = root / "weights" / "forget_weights.jsonl"
    if method.startswith("rapidun") and wf.exists():
        out["weights_by_truth"] = mean_weights_by_truth([r["weight"] for r in read_jsonl(wf)], truth_rows)
    contam = root / "weights" / "contamination.json"
    # mean retain weight of the poisoned retain rows (and the clean)
    if method == "rapidun" and contam.exists():
        out["retain_contaminated"] = json.loads(contam.read_text()).get("rapidun")
    return out


def run_variant(seed: int, variant: str, split: str) -> dict:
    from rapidun_dist.config import dump_config
    from rapidun_dist.core.io import write_text
    from rapidun_dist.pipeline import run_stage
    from rapidun_dist.run.rundir import RunDir

    method, overrides = VARIANTS[variant]
    base = ensure_base(seed)
    root = variant_dir(seed, variant, base)
    cfg = base_config(seed, root, [f"methods=[{method}]", *SETTINGS, *overrides])
    write_text(root / "config.yaml", dump_config(cfg))
    rd = RunDir(root)
    t0 = time.perf_counter()
    stages = ("influence", "weights", "unlearn") if method.startswith("rapidun") else ("unlearn",)
    for stage in stages:
        run_stage(cfg, rd, stage)
    seconds = time.perf_counter() - t0
    _, _, truth_rows = truth(root)
    cache = (
        root / f"wv_eval_{split}.json"
    )  # this run's evaluation, valid while the unlearn summary is the same
    from rapidun_dist.run.layout import method_dir

    basis = file_sha256(method_dir(rd, method) / "summary.json")
    if cache.exists() and json.loads(cache.read_text()).get("basis") == basis:
        res = json.loads(cache.read_text())["result"]
    else:
        res = evaluate_variant(cfg, root, method, split, truth_rows)
        cache.write_text(json.dumps({"basis": basis, "result": res}, default=str))
    return res | {
        "seed": seed,
        "variant": variant,
        "split": split,
        "stage_seconds": seconds,
        "overrides": overrides,
    }


def aggregate(rows: list[dict]) -> dict:
    """Per variant: pooled-seed ASR means with t intervals over seeds (one seed: its Wilson interval)."""
    from rapidun_dist.evaluation.stats import mean_interval

    out: dict = {}
    for v in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == v]
        agg = {"n_seeds": len(rs)}
        for key in ("asr_seen", "asr_ood"):
            vals = [r[key]["p"] for r in rs if r[key] is not None]
            agg[key] = mean_interval(vals) if vals else None
            agg[f"{key}_single"] = rs[0][key] if len(rs) == 1 else None
        for key in ("ppl_ratio", "mislabelled_ppl_ratio"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            agg[key] = mean_interval(vals) if vals else None
        wt = [r["weights_by_truth"] for r in rs if "weights_by_truth" in r]
        mis = [w["mislabelled"]["mean"] for w in wt if w["mislabelled"]]
        agg["w_mislabelled"] = mean_interval(mis) if mis else None
        agg["w_poisoned"] = (
            mean_interval([w["poisoned"]["mean"] for w in wt if w["poisoned"]]) if wt else None
        )
        rc = [r["retain_contaminated"] for r in rs if r.get("retain_contaminated")]
        agg["w_retain_contaminated"] = mean_interval([c["mean_contaminated"] for c in rc]) if rc else None
        agg["steps"] = mean_interval([float(r["steps"]) for r in rs if r.get("steps") is not None])
        out[v] = agg
    for v, agg in out.items():  # paired over seeds: variant minus uniform on the same prepared run
        for key in ("asr_seen", "asr_ood", "ppl_ratio"):
            agg[f"d_{key}"] = _paired(rows, v, "uniform", key) if v != "uniform" else None
    return out


def _paired(rows: list[dict], v: str, ref: str, key: str) -> dict | None:
    """`stats.paired_differences` of variant `v` minus `ref` in `key` over the seeds both have (None: no pair)."""
    from rapidun_dist.evaluation.stats import paired_differences

    def by_seed(variant: str) -> dict:
        return {
            r["seed"]: r[key]["p"] if isinstance(r[key], dict) else r[key]
            for r in rows
            if r["variant"] == variant and r[key] is not None
        }

    d = paired_differences(by_seed(v), by_seed(ref))
    return d if d["n"] else None


def ablation_section(rows: list[dict], agg: dict, split: str, seeds: list[int], command: str) -> str:
    seen, ood = ("val_seen", "-") if split == "val" else ("test_seen", "test_ood")
    ppl = "val_clean" if split == "val" else "test_clean"
    where = {
        "hard": "the hard testbed",
        "contam10": "the contaminated-retain testbed (10%)",
        "clean": "the clean default",
    }
    many = len(seeds) > 1
    lines = [
        f"## RapidUn weight variants: unlearning ablation on {where[TESTBED]} ({split}, seeds {seeds}"
        + (f", {' '.join(SETTINGS)}" if SETTINGS else "")
        + "), "
        + time.strftime("%Y-%m-%d"),
        "",
        f"Command: `{command}`. Each variant: the same prepared + implanted run per seed, its own influence, weights "
        "and unlearn stages, the config's unlearning budget and learning rate for every variant (not tuned per "
        f"variant). ASR on {seen}"
        + (f" / {ood}" if split == "test" else "")
        + f", PPL ratio on {ppl} (after / before), optimizer steps taken, clean-answer PPL ratio on the mislabelled "
        "forget rows (damage to rows the user mislabelled), mean forget weight of mislabelled vs poisoned rows, mean "
        "retain weight of the poisoned retain rows (mean 1 over the pack). "
        + (
            "Means over seeds with t 95 % intervals (n = seeds); d = the paired difference to uniform on the same "
            "prepared run (ASR in points)."
            if many
            else "One seed: Wilson 95 % intervals over prompts."
        ),
        "",
        f"| variant | ASR {seen} | ASR {ood} | PPL ratio | steps | mislabelled PPL ratio | w mislabelled | w poisoned "
        "| w poisoned retain |"
        + (" d ASR seen vs uniform | d ASR OOD vs uniform | d PPL ratio vs uniform |" if many else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if many else ""),
    ]
    for v, a in agg.items():
        if many:
            s, o = fmt_mean(a["asr_seen"], 100, 1), fmt_mean(a["asr_ood"], 100, 1)
        else:
            s, o = fmt_prop(a["asr_seen_single"]), fmt_prop(a["asr_ood_single"])
        lines.append(
            f"| {v} | {s} | {o} | {fmt_mean(a['ppl_ratio'], 1, 3)} | {fmt_mean(a['steps'], 1, 1)} "
            f"| {fmt_mean(a['mislabelled_ppl_ratio'], 1, 3)} | {fmt_mean(a['w_mislabelled'])} "
            f"| {fmt_mean(a['w_poisoned'])} | {fmt_mean(a['w_retain_contaminated'])} |"
            + (
                f" {fmt_mean(a['d_asr_seen'], 100, 1)} | {fmt_mean(a['d_asr_ood'], 100, 1)} "
                f"| {fmt_mean(a['d_ppl_ratio'], 1, 3)} |"
                if many
                else ""
            )
        )
    return "\n".join(lines) + "\n"


# main --------------------------------------------------------------------------------------------------------
def save(kind: str, payload: dict, section: str, append: bool) -> None:
    """benchmarks/weight_variants.json[kind] = payload, and the section the current `weight_variants_<kind>` one
    of benchmarks/results.md (the one it replaces goes to results_archive.md)."""
    from rapidun_dist.cli.experiments.page import publish

    print(section)
    if not append:
        return
    path = ROOT / "benchmarks" / "weight_variants.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[kind] = payload
    path.write_text(json.dumps(data, indent=1, default=str))
    publish(f"weight_variants_{kind}", section, ROOT / "benchmarks")


def main(argv=None) -> None:
    global TESTBED, RUNS, SETTINGS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stability")
    st.add_argument("--run", default=str(ROOT / "runs" / "base" / "s0"))
    st.add_argument("--ks", default="16,32,64", type=lambda s: [int(x) for x in s.split(",")])
    st.add_argument("--proj-seeds", type=int, default=3)
    ab = sub.add_parser("ablation")
    ab.add_argument("--seeds", default="0", type=lambda s: [int(x) for x in s.split(",")])
    ab.add_argument("--split", choices=("val", "test"), default="val")
    ab.add_argument("--variants", default=",".join(VARIANTS), type=lambda s: s.split(","))
    ab.add_argument("--testbed", choices=tuple(TESTBEDS), default="hard")
    ab.add_argument("--runs", type=Path, default=RUNS, help="where the base and variant run folders go")
    ab.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override of every variant (repeatable)",
    )
    for q in (st, ab):
        q.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "ablation":
        TESTBED, RUNS, SETTINGS = args.testbed, args.runs, list(args.set)
    from rapidun_dist.cli.experiments.page import shown_command

    given = sys.argv[1:] if argv is None else argv
    runs = {str(args.runs): "RUNS"} if hasattr(args, "runs") else {}  # the machine's run folder stays out
    command = shown_command("python benchmarks/weight_variants.py", given, runs)
    torch.set_num_threads(1)
    if args.cmd == "stability":
        res = run_stability(args)
        save(f"stability_{Path(args.run).name}", res, stability_section(res, command), not args.no_append)
        return
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    rows = []
    for seed in args.seeds:
        for v in args.variants:
            rows.append(run_variant(seed, v, args.split))
            print(json.dumps(rows[-1], default=str), flush=True)
    agg = aggregate(rows)
    save(
        "_".join(
            ["ablation", *([TESTBED] if TESTBED != "hard" else []), *([variant_tag()] if SETTINGS else [])]
            + [args.split, "-".join(map(str, args.seeds))]
        ),
        {"rows": rows, "aggregate": agg},
        ablation_section(rows, agg, args.split, args.seeds, command),
        not args.no_append,
    )


if __name__ == "__main__":
    main()
