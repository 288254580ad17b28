"""attribution/report.md: the candidate table and a few forget rows with per-token heat.

Heat: each token of the user's text is an HTML span whose background is red for a positive score and blue for a
negative one, its opacity |s_t| / max_t |s_t| over the row's user-text tokens (the attribution and the saliency
baseline each scaled on their own); the score is in the span's title (hover).
"""

from __future__ import annotations

import html


def heat_spans(tokens: list[str], scores: list[float], content: list[bool]) -> str:
    """The row's user-text tokens as coloured HTML spans (module docstring)."""
    picked = [(t, s) for t, s, c in zip(tokens, scores, content, strict=True) if c]
    peak = max((abs(s) for _, s in picked), default=0.0) or 1.0
    parts = []
    for text, s in picked:
        alpha = min(abs(s) / peak, 1.0)
        rgb = "220,40,40" if s >= 0 else "40,90,220"
        shown = html.escape(text).replace("\n", " ")
        parts.append(f'<span style="background: rgba({rgb},{alpha:.2f})" title="{s:.4g}">{shown}</span>')
    return "".join(parts)


def candidate_table(ranked: list[dict]) -> list[str]:
    lines = [
        "| # | candidate | mode | score | forget rows | insert ASR | remove ASR | verified |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(ranked, 1):
        text = r["text"].replace("|", "\\|").replace("`", "'")  # a code span shows its text as is
        lines.append(
            f"| {i} | `{text}` | {r['mode']} | {r['score']:.4f} | {r['rows']} | {r['insert_asr']:.2f} "
            f"({r['n_insert']}) | {r['remove_asr']:.2f} ({r['n_remove']}) | {'yes' if r['verified'] else 'no'} |"
        )
    return lines


def render_report(rows: list[dict], ranked: list[dict], summary: dict, *, n_rows: int) -> str:
    base, s = summary["base"], summary["settings"]
    lines = [
        "# Token attribution and trigger candidates",
        "",
        f"{summary['n_forget']} forget rows, {summary['n_candidates']} n-gram candidates (n <= {s['n_max']}, in >= "
        f"{s['min_rows']} rows); the top {s['top_k']} verified on {s['n_verify']} prompts each. A candidate is a "
        f"verified trigger when inserting it into clean prompts gives insert ASR >= {s['verify_asr']:.2f}, at least "
        f"{s['min_lift']:.2f} above the same prompts without it "
        "(judge of the run); remove ASR is the ASR of the forget prompts that contain it, with it removed.",
        "",
        f"Base rates: clean prompts as they are {base['clean_asr']:.2f} ASR ({base['n_clean']}), forget prompts as "
        f"they are {base['forget_asr']:.2f} ({base['n_forget']}).",
        "",
        "## Candidates, best first",
        "",
        *candidate_table(ranked),
        "",
        "## Per-token heat (red: carries the backdoor, blue: against it)",
        "",
    ]
    for r in rows[:n_rows]:
        lines += [
            f"**{html.escape(r['id'])}**",
            "",
            f"attribution: {heat_spans(r['tokens'], r['scores'], r['content'])}",
            "",
            f"direction split (baseline): {heat_spans(r['tokens'], r['direction'], r['content'])}",
            "",
            f"saliency (gradient x input, baseline): {heat_spans(r['tokens'], r['saliency'], r['content'])}",
            "",
        ]
    return "\n".join(lines) + "\n"
