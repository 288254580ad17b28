"""The golden tier's one option: `pytest tests/e2e --update-golden` rewrites tests/e2e/golden/*.json from this
run instead of checking against them (the only way they change). The option is declared here, so name tests/e2e
(or a file in it) on the command line: a bare `pytest --update-golden` stops with "unrecognized arguments"."""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/e2e/golden/*.json from this run (record them with the reference checkout)",
    )


@pytest.fixture(scope="session")
def update_golden(request) -> bool:
    return bool(request.config.getoption("--update-golden"))
