"""LookAhead: when the job prefetches the batches ahead."""

from __future__ import annotations

import pytest

from pipeline.training.lookahead import LookAhead


def test_pauses_after_quiet_prefetches_probes_and_resumes() -> None:
    la = LookAhead(quiet_after=3, probe_every=4)
    assert (la.quiet_after, la.probe_every) == (3, 4)
    assert LookAhead().quiet_after == 8 and LookAhead().probe_every == 16
    for _ in range(2):
        assert la.due()
        la.saw(0)
    la.saw(7)  # one that loaded rows: the quiet count starts again
    assert la.quiet == 0 and not la.paused
    for _ in range(3):
        assert la.due()
        la.saw(0)
    assert la.paused
    due = [la.due() for _ in range(8)]
    assert due == [False, False, False, True] * 2 and la.skipped == 6
    la.saw(0)  # a probe that found nothing: still paused
    assert la.paused and not la.due()
    la.saw(1)
    assert not la.paused and la.since_probe == 0 and la.due()


@pytest.mark.parametrize(("quiet", "probe"), [(0, 1), (1, 0)])
def test_refuses_counts_below_one(quiet: int, probe: int) -> None:
    message = f"quiet_after and probe_every must be >= 1, got {quiet}, {probe}"
    with pytest.raises(ValueError, match=f"^{message}$"):
        LookAhead(quiet_after=quiet, probe_every=probe)
