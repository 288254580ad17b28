"""Experiments as data: one runner, specs that say what a study varies, results as JSON, one generated page.

    python -m rapidun_dist.cli.experiments run benchmarks/specs/X.yaml --out OUT        # rapidun run per cell and seed
    python -m rapidun_dist.cli.experiments collect benchmarks/specs/X.yaml --out OUT    # -> benchmarks/results/X.json
    python -m rapidun_dist.cli.experiments render                                       # -> benchmarks/results.md

`spec` (the YAML format), `runner` (cells and seeds -> `rapidun run`, resumable through the run directories'
manifests), `results` (collect: finished run dirs -> one JSON; its tables), `page` (the results page from every
results JSON and section, and `publish` for the benchmark scripts' sections), `fair` (choosing a learning rate
per method on validation, merging per-rate reports: benchmarks/fair_compare.py), `perf` (timing, hardware stamps
and the CSV of the kernel benchmarks).

Layering: this package sits above the pipeline (it drives runs and reads what they wrote); nothing in the library
imports it.
"""
