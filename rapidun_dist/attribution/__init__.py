"""Which prompt tokens carry the backdoor, and which strings trigger it (the `attribute` stage).

- `scores.py`: per-prompt-token attribution of forget rows from the token-wise gradient features (a direction in
  feature space, forget against retain, split over positions by `TokenwiseExtractor.token_scores`), and the
  gradient x input saliency baseline on the same rows.
- `ngrams.py`: token n-grams (n = 1..n_max) of the user's text, their scores aggregated over rows: ranked
  trigger candidates.
- `verify.py`: model-based verification without labels: insert a candidate into clean prompts (in the position
  mode it was seen in) and remove it from the forget prompts; the judge's ASR of the greedy answers.
- `report.py`: the heat view of a few rows and the candidate table (Markdown with HTML spans).
"""
