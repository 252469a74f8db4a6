"""Per-file mutant counts from mutmut 2's ``.mutmut-cache`` (sqlite), as a Markdown table.

    python benchmarks/mutation/summary.py [.mutmut-cache] [--survivors]

Survival = survived / tested (killed + survived + timeout + suspicious); a timeout (the tests
hung on the mutant) and a suspicious run (slow, but failing) count as detected.
"""

from __future__ import annotations

import sqlite3
import sys

STATUSES = ("ok_killed", "bad_survived", "bad_timeout", "ok_suspicious", "skipped", "untested")


def main(argv: list[str]) -> int:
    path = next((a for a in argv if not a.startswith("--")), ".mutmut-cache")
    db = sqlite3.connect(path)
    rows = db.execute(
        "select s.filename, m.status, count(*) from Mutant m join Line l on m.line = l.id"
        " join SourceFile s on l.sourcefile = s.id group by s.filename, m.status"
    ).fetchall()
    counts: dict[str, dict[str, int]] = {}
    for filename, status, n in rows:
        counts.setdefault(filename, dict.fromkeys(STATUSES, 0))[status] = n
    print("| file | mutants | killed | survived | timeout | suspicious | untested | survival |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for filename in sorted(counts):
        c = counts[filename]
        tested = c["ok_killed"] + c["bad_survived"] + c["bad_timeout"] + c["ok_suspicious"]
        rate = f"{100 * c['bad_survived'] / tested:.1f}%" if tested else "-"
        print(
            f"| {filename} | {sum(c.values())} | {c['ok_killed']} | {c['bad_survived']} |"
            f" {c['bad_timeout']} | {c['ok_suspicious']} | {c['untested']} | {rate} |"
        )
    if "--survivors" in argv:
        for filename, line_no, index, line in db.execute(
            'select s.filename, l.line_number + 1, m."index", l.line from Mutant m'
            " join Line l on m.line = l.id join SourceFile s on l.sourcefile = s.id"
            " where m.status = 'bad_survived' order by s.filename, l.line_number"
        ):
            print(f"{filename}:{line_no} [{index}] {line.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
