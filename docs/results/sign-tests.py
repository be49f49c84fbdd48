"""The standings' sign test of freshnets against each rival, and its per-row Welch calls with
and without Holm's correction, from a report's results.json: for reports written before the
standings printed them (sessions 22 and 24), with the report's own code.

    .venv/bin/python docs/results/sign-tests.py docs/results/table11/results.json \
        docs/results/allconv/results.json

Each line: rows where freshnets is lower / higher than the rival (ties dropped), the two-sided
binomial p of those counts at even odds, and in brackets the rows where Welch's t-test over the
seeds is significant, then (after the semicolon) those that stay so after Holm's correction
over the rival's rows.
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
            calls = {
                side: f"{len(entry[f'freshnets_significantly_{side}'])}; "
                f"{len(entry[f'freshnets_significantly_{side}_holm'])}"
                for side in ("lower", "higher")
            }
            print(
                f"  {method:<18} lower {entry['freshnets_lower']:>2} ({calls['lower']}), "
                f"higher {entry['freshnets_higher']:>2} ({calls['higher']})"
                + (f", sign test p = {p:.2g}" if p is not None else "")
            )


if __name__ == "__main__":
    main(sys.argv[1:])
