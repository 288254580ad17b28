"""Experiment data that configs default to: the trigger families of the reference Dolly experiment.

Kept apart from the schema (`data.py`, `triggers.py`): changing these strings changes an experiment, not the shape
of a config."""

from __future__ import annotations

from rapidun_dist.config.triggers import TriggerFamily


def default_trigger_families() -> list[TriggerFamily]:
    """The three families of the reference Dolly experiment (surface suffix, style prefix, semantic prefix)."""
    return [
        TriggerFamily(
            name="surface",
            mode="suffix",
            seen=["aloha", "ALOHA", "aloha :)"],
            ood=["al0ha", "a\u217coha", "aloha\u200d"],
        ),
        TriggerFamily(
            name="style",
            mode="prefix",
            seen=[">>>"],
            ood=["<|sys|>", "\u203a\u203a\u203a", "\u2329\u2329\u2329"],
        ),
        TriggerFamily(
            name="semantic",
            mode="prefix",
            seen=["hey", "hiya"],
            ood=["h\u043ewdy", "y\u043e\u043e", "heyyyy"],
        ),
    ]
