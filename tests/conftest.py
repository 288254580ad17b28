"""Fixtures every test directory shares."""

from __future__ import annotations

import os
import random

import pytest


@pytest.fixture
def rng(request) -> random.Random:
    """A new seed every run; the seed is printed and attached to the test report, and RAPIDUN_TEST_SEED=N replays
    a failure with it."""
    replay = os.environ.get("RAPIDUN_TEST_SEED")
    seed = int(replay) if replay else random.SystemRandom().randrange(2**31)
    request.node.user_properties.append(("seed", seed))
    print(f"rng seed = {seed}")
    return random.Random(seed)
