"""Progress lines: the ETA is never negative, and a rank's estimated share of claimed work reads as an estimate."""

import logging

from rapidun_dist.core.logging import Progress


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _progress(total, **kw):
    log, lines = logging.getLogger(f"test_progress_{total}_{kw}"), Lines()
    log.addHandler(lines)
    log.setLevel(logging.INFO)
    return Progress(total, "features", unit="sample", every_s=3600.0, logger=log, **kw), lines.lines


def test_reaching_the_total_logs_once_with_a_zero_eta():
    p, lines = _progress(64)
    for _ in range(4):
        p.update(16)
    assert len(lines) == 1 and lines[0].startswith("features: 64/64 ") and lines[0].endswith("eta 0s")


def test_counting_past_an_estimated_total_shows_it_as_one_and_never_a_negative_eta():
    p, lines = _progress(40, approx=True)
    for _ in range(6):  # 96 rows claimed against an estimate of 40
        p.update(16)
    assert len(lines) == 1, lines  # only the crossing: past the estimate, the usual cadence (an hour here)
    assert lines[0].startswith("features: 48/~40 ") and "eta" not in lines[0]
    p.every_s = 0.0
    p.update(16)
    assert lines[-1].startswith("features: 112/~40 ") and "eta -" not in lines[-1] and "eta" not in lines[-1]
