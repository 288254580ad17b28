"""Evaluation: generation, the backdoor judge, ASR / clean PPL / retrieval metrics, behaviour beyond ASR
(answer match, babble, sampled ASR, relearning attack), intervals, plots and the report.

Names are imported lazily, so `judge`, `plots` and `report` work without importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "generate": "generation",
    "Sampling": "generation",
    "Judge": "judge",
    "fit_judge": "judge",
    "false_positive_rate": "judge",
    "exact_match": "behaviour",
    "token_f1": "behaviour",
    "verdict": "behaviour",
    "summarize_outputs": "behaviour",
    "summarize_split": "behaviour",
    "evaluate_behaviour": "behaviour",
    "sampled_asr": "behaviour",
    "mislabelled_damage": "behaviour",
    "relearn_attack": "relearn",
    "relearn_rows": "relearn",
    "asr_after_relearning": "relearn",
    "wilson_interval": "stats",
    "proportion": "stats",
    "mean_interval": "stats",
    "t_quantile": "stats",
    "attack_success_rate": "metrics",
    "clean_perplexity": "metrics",
    "retrieval_metrics": "metrics",
    "evaluate_model": "metrics",
    "bar_chart": "plots",
    "line_chart": "plots",
    "histogram": "plots",
    "scatter": "plots",
    "write_report": "report",
    "compute_speedups": "report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
