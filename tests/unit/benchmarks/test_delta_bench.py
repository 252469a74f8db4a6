"""The serve benchmark's delta-size part on tiny tables: bytes follow rows changed."""

from __future__ import annotations

from pathlib import Path

from benchmarks.serve_bench import Sizes, delta_bytes, marginal


def test_delta_bytes_do_not_depend_on_table_size(tmp_path: Path) -> None:
    sizes = Sizes(1.0, 0.0, 64, (2_000, 20_000), (10, 100, 1_000), 8)
    points = delta_bytes(sizes, tmp_path)
    by_table = {
        rows: [p["bytes"] for p in points if p["table_rows"] == rows] for rows in (2_000, 20_000)
    }
    assert by_table[2_000] == by_table[20_000]
    assert by_table[2_000][2] > 10 * by_table[2_000][0]  # 100x the rows, >10x the bytes
    slopes = marginal(points)
    assert 40 <= slopes["2000"] <= 48  # 8 bytes of id + 8 floats, a little framing
