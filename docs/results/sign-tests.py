"""The standings' sign test of freshnets against each rival, from a report's results.json: for
reports written before the standings printed it (session 22), with the report's own code.

    .venv/bin/python docs/results/sign-tests.py docs/results/table11/results.json \
        docs/results/allconv/results.json

Each line: rows where freshnets is lower / higher than the rival (ties dropped), the two-sided
binomial p of those counts at even odds, and in brackets the rows where Welch's t-test over the
seeds is significant.
"""

import json
import sys

from freshcore.reproduce.plan import dataset_archs, table_groups, unreachable
from freshcore.reproduce.report import standings


def main(paths: list[str]) -> None:
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        o = report["options"]
        archs = dataset_archs(o["datasets"], o.get("arch"))
        skipped = unreachable(table_groups(o["datasets"], o["methods"], o["factors"], archs))
        summary, _ = standings(
            report["cells"], o["datasets"], o["methods"], o["factors"], o["seeds"], skipped
        )
        print(f"{path}: {len(summary['rows'])} complete rows")
        for method, entry in summary["methods"].items():
            if "sign_test_p" not in entry:
                continue
            p = entry["sign_test_p"]
            print(
                f"  {method:<18} lower {entry['freshnets_lower']:>2} "
                f"({len(entry['freshnets_significantly_lower'])}), higher "
                f"{entry['freshnets_higher']:>2} ({len(entry['freshnets_significantly_higher'])})"
                + (f", sign test p = {p:.2g}" if p is not None else "")
            )


if __name__ == "__main__":
    main(sys.argv[1:])
