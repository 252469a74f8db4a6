"""Write-log watermarks: the log is truncated to the smallest version every consumer saved."""

from __future__ import annotations

from operators.checkpoint.write_log import WriteLogWatermarks


class Log:
    """A store's write log, as far as the watermarks see it."""

    def __init__(self) -> None:
        self.truncated: list[int] = []

    def truncate_write_log(self, version: int) -> None:
        self.truncated.append(version)


def test_the_checkpoint_chain_is_the_default_consumer() -> None:
    marks, log = WriteLogWatermarks(), Log()
    assert marks.mark("checkpoint") is None
    marks.advance(log, "checkpoint", 7)
    assert (log.truncated, marks.mark("checkpoint")) == ([7], 7)


def test_truncation_waits_for_every_consumer_then_follows_the_minimum() -> None:
    marks, log = WriteLogWatermarks(("a", "b")), Log()
    marks.advance(log, "a", 10)
    assert log.truncated == [] and (marks.mark("a"), marks.mark("b")) == (10, None)
    marks.advance(log, "b", 4)
    marks.advance(log, "b", 12)
    marks.advance(log, "a", 15)
    assert log.truncated == [4, 10, 12]
    # a consumer registered late holds truncation until it saves something
    marks.register("c")
    marks.register("a")  # already known: keeps its mark
    assert (marks.mark("a"), marks.mark("c"), marks.mark("unknown")) == (15, None, None)
    marks.advance(log, "a", 20)
    assert log.truncated == [4, 10, 12]
    marks.advance(log, "c", 18)
    assert log.truncated == [4, 10, 12, 12]
