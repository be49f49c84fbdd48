"""Turn finished runs into the results: JSON summary, Markdown tables, a plot of error vs factor.

Everything is read back from the output directory, so a report of a table still running (or
resumed on another machine) is always one command away.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freshcore.reproduce.plan import (
    ALL_METHODS,
    COMPRESSED_METHODS,
    DATASETS_KEY,
    DENSE_FACTOR,
    SCOPE_KEY,
    TEACHER_KEY,
    RunSpec,
    split_override,
    split_point,
)
from freshcore.reproduce.runner import RunStore, final_specs

if TYPE_CHECKING:
    from freshcore.report import SizeReport

SIGNIFICANCE = 0.05  # the p-value under which standings call a difference significant


def stored_parameters(record: dict[str, Any]) -> int | None:
    """The stored-parameter total of a run's size report, whatever its nesting."""
    size = record.get("size") or {}
    for where in (size.get("total"), size.get("totals"), size):
        if isinstance(where, dict) and "stored_parameters" in where:
            return int(where["stored_parameters"])
    return None


def summarise(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "std": None}
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def describe_machine(machine: dict[str, Any]) -> str:
    threads = machine.get("threads")
    return (
        f"{machine['cpu']} ({machine['cpu_count']} cores, {threads} torch "
        f"thread{'' if threads == 1 else 's'}), GPU: {machine.get('gpu') or 'none'}"
        f"{' with CUDA graphs' if machine.get('cuda_graph') else ''}, torch {machine['torch']}"
    )


def describe_seconds(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def running_time(records: list[dict[str, Any]]) -> dict[str, Any]:
    """When the runs ran, and on what. A table resumed over several invocations (sessions,
    machines) has no one invocation whose wall time is the table's: the union of the runs'
    [start, finish] intervals is, since parallel runs count once and the gaps between
    invocations not at all."""
    intervals = sorted(
        (end - r["result"]["seconds"], end)
        for r in records
        if "finished_at" in r
        for end in [dt.datetime.fromisoformat(r["finished_at"]).timestamp()]
    )
    busy, reach = 0.0, -math.inf
    for start, end in intervals:
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)

    def when(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")

    machines = Counter(describe_machine(r["machine"]) for r in records if "machine" in r)
    return {
        "busy_s": busy,
        "first_started": when(intervals[0][0]) if intervals else None,
        "last_finished": when(reach) if intervals else None,
        "runs_without_time": len(records) - len(intervals),
        "machines": [{"machine": m, "runs": n} for m, n in machines.most_common()],
    }


def collect_cells(store: RunStore, seeds: list[int]) -> dict[str, dict[str, Any]]:
    """Per chosen table cell: test errors over the finished seeds, fp16 errors, sizes, choice."""
    selection = store.selection()
    cells: dict[str, dict[str, Any]] = {}
    for name, specs in final_specs(store, seeds).items():
        finished = [r for r in (store.get(s) for s in specs) if r is not None]
        records = [r for r in finished if not r["result"].get("diverged")]
        entry = selection[name]
        cells[name] = {
            "dataset": entry["dataset"],
            "method": entry["method"],
            "factor": entry["factor"],
            "chosen": entry["chosen"],
            "seeds": [r["spec"]["seed"] for r in records],
            "diverged_seeds": [r["spec"]["seed"] for r in finished if r["result"].get("diverged")],
            "test_error": summarise([r["result"]["test_error"] for r in records]),
            "test_error_fp16": summarise([r["result"]["test_error_fp16"] for r in records]),
            "val_error": summarise([r["result"]["val_error"] for r in records]),
            "stored_parameters": stored_parameters(records[0]) if records else None,
            "seconds": summarise([r["result"]["seconds"] for r in records]),
            "epochs": entry["base"].get("epochs"),
        }
    return cells


def printed_error(summary: dict[str, Any]) -> float:
    """A mean error as the table prints it (in %, two decimals): what ranks and bolds compare,
    so two errors that print the same are a tie."""
    return round(100 * summary["mean"], 2)


def _fmt(summary: dict[str, Any], seeds: int) -> str:
    if not summary["n"]:
        return "–"
    text = f"{100 * summary['mean']:.2f} ± {100 * summary['std']:.2f}"
    if summary["n"] < seeds:
        text += f" (n={summary['n']})"
    return text


def markdown_table(
    cells: dict[str, dict[str, Any]],
    datasets: list[str],
    methods: list[str],
    factors: list[str],
    seeds: int,
    unreachable: dict[str, str] | None = None,
) -> str:
    """Rows: data set x factor; columns: methods. Test error in %, mean ± std over seeds.

    The best compressed methods of each row (lowest printed mean, every one of a tie) are in
    bold; dense is the reference; a cell the method cannot store (``unreachable``, cell name ->
    why) reads "cannot reach"; a cell a stage after its grid still waits for is marked "(not
    final)", and its row has no bold cell until it is final.
    """
    methods = [m for m in ALL_METHODS if m in methods]
    lines = [
        "| data set | factor | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for dataset in datasets:
        for factor in factors:
            names = {
                m: f"{dataset}/{m}/{DENSE_FACTOR if m == 'dense' else factor}" for m in methods
            }
            row: dict[str, dict[str, Any] | None] = {}
            pending: set[str] = set()
            for method in methods:
                cell = cells.get(names[method])
                row[method] = cell["test_error"] if cell else None
                if cell and cell.get("stage_pending"):
                    pending.add(method)
            compressed = {
                m: printed_error(s)
                for m, s in row.items()
                if m in COMPRESSED_METHODS and s and s["n"] > 0 and m not in pending
            }
            # a row with a cell still waiting for a stage has no best yet
            best = (
                None
                if pending & set(COMPRESSED_METHODS)
                else min(compressed.values(), default=None)
            )
            texts = []
            for method in methods:
                summary = row[method]
                if names[method] in (unreachable or {}):
                    text = "cannot reach"
                else:
                    text = _fmt(summary, seeds) if summary else "–"
                    if method in pending:
                        text += " (not final)"
                texts.append(f"**{text}**" if compressed.get(method, -1) == best else text)
            lines.append(f"| {dataset} | {factor} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def standings(
    cells: dict[str, dict[str, Any]],
    datasets: list[str],
    methods: list[str],
    factors: list[str],
    seeds: int,
    unreachable: dict[str, str] | None = None,
) -> tuple[dict[str, Any], str]:
    """How the compressed methods compare over the complete rows (every one of them on every
    seed with its final choice, but those that cannot store the row's factor, ``unreachable``;
    a row ranks the methods it has): mean rank, rows won, rows where freshnets is lower or
    higher, and the gap to dense per factor. Errors are compared as the table prints them (two
    decimals, in %), so a tie is a tie. With 3 seeds most gaps are within the seeds' spread, so
    the rows where freshnets is lower or higher are also counted where Welch's t-test over the
    seeds says the difference is significant (two-sided, p < SIGNIFICANCE). Over the rows, a
    two-sided sign test on those counts (ties dropped) asks whether freshnets is lower more
    often than chance: the paper's claim is about every data set, not one row."""
    compressed = [m for m in COMPRESSED_METHODS if m in methods]

    def printed(name: str) -> float | None:
        cell = cells.get(name)
        if cell is None or cell["test_error"]["n"] < seeds or cell.get("stage_pending"):
            return None
        return printed_error(cell["test_error"])

    rows: list[tuple[str, str, dict[str, float], float | None]] = []
    for dataset in datasets:
        for factor in factors:
            errors = {
                m: printed(f"{dataset}/{m}/{factor}")
                for m in compressed
                if f"{dataset}/{m}/{factor}" not in (unreachable or {})
            }
            if errors and all(e is not None for e in errors.values()):
                dense = printed(f"{dataset}/dense/{DENSE_FACTOR}")
                rows.append((dataset, factor, errors, dense))  # type: ignore[arg-type]
    summary: dict[str, Any] = {"rows": [f"{d} {f}" for d, f, _, _ in rows], "methods": {}}
    if not rows:
        return summary, "No row is complete yet (every compressed method on every seed)."
    for method in compressed:
        ranks, won, gaps = [], 0.0, {f: [] for f in factors}
        for _, factor, errors, dense in rows:
            if method not in errors:
                continue
            lower = sum(e < errors[method] for e in errors.values())
            equal = sum(e == errors[method] for e in errors.values())
            ranks.append(lower + (equal + 1) / 2)  # ties share the ranks they span
            if lower == 0:
                won += 1 / equal
            if dense is not None:
                gaps[factor].append(round(errors[method] - dense, 2))
        if not ranks:  # unreachable in every row
            continue
        entry: dict[str, Any] = {
            "mean_rank": statistics.fmean(ranks),
            "rows": len(ranks),
            "rows_won": won,
            "gap_to_dense": {
                f: {"mean": statistics.fmean(g), "max": max(g), "rows": len(g)}
                for f, g in gaps.items()
                if g
            },
        }
        if "freshnets" in compressed and method != "freshnets":
            pairs = [
                (d, f, e["freshnets"], e[method])
                for d, f, e, _ in rows
                if "freshnets" in e and method in e
            ]
            entry["rows_compared"] = len(pairs)
            entry["freshnets_lower"] = sum(ours < theirs for _, _, ours, theirs in pairs)
            entry["freshnets_higher"] = sum(ours > theirs for _, _, ours, theirs in pairs)
            entry["sign_test_p"] = _sign_test(entry["freshnets_lower"], entry["freshnets_higher"])
            tested = [
                (f"{d} {f}", ours, theirs, p)
                for d, f, ours, theirs in pairs
                if ours != theirs
                and (p := _welch_p(cells[f"{d}/freshnets/{f}"], cells[f"{d}/{method}/{f}"]))
                is not None
            ]
            raw = [p for *_, p in tested]
            for suffix, ps in (("", raw), ("_holm", holm(raw))):
                hits = [
                    (r, o < t)
                    for (r, o, t, _), p in zip(tested, ps, strict=True)
                    if p < SIGNIFICANCE
                ]
                entry[f"freshnets_significantly_lower{suffix}"] = [r for r, low in hits if low]
                entry[f"freshnets_significantly_higher{suffix}"] = [r for r, low in hits if not low]
        summary["methods"][method] = entry
    lines = [
        f"Over the {len(rows)} complete rows ({', '.join(summary['rows'])}); rank 1 is the "
        f"lowest error of the {len(compressed)} compressed methods (of those that can store "
        "the row's factor, where some cannot); gaps in points. "
        "freshnets lower / higher: rows where its error is below / above the method's, and in "
        f"brackets those where Welch's t-test over the seeds gives p < {SIGNIFICANCE}; sign "
        "test: the two-sided p of those counts (ties dropped) if lower and higher were equally "
        "likely in each row.",
        "",
        "| method | mean rank | rows won | freshnets lower | freshnets higher | sign test | "
        + " | ".join(f"gap to dense at {f}: mean / max" for f in factors)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(factors),
    ]
    for method, entry in sorted(summary["methods"].items(), key=lambda i: i[1]["mean_rank"]):
        gaps = [entry["gap_to_dense"].get(f) for f in factors]
        if "freshnets_lower" in entry:
            versus = (
                f"{entry['freshnets_lower']} of {entry['rows_compared']} "
                f"({len(entry['freshnets_significantly_lower'])}) | "
                f"{entry['freshnets_higher']} of {entry['rows_compared']} "
                f"({len(entry['freshnets_significantly_higher'])}) | "
                + (f"p = {entry['sign_test_p']:.2g}" if entry["sign_test_p"] is not None else "–")
            )
        else:
            versus = "– | – | –"
        lines.append(
            f"| {method} | {entry['mean_rank']:.2f} | {entry['rows_won']:.3g} | {versus} | "
            + " | ".join(f"{g['mean']:.2f} / {g['max']:.2f}" if g else "–" for g in gaps)
            + " |"
        )

    def rows_where(key: str) -> str:
        named = [
            f"{method} on {', '.join(entry[key])}"
            for method, entry in summary["methods"].items()
            if entry.get(key)
        ]
        return "; ".join(named) if named else "none"

    if "freshnets" in compressed:
        lines += [
            "",
            "Rows where a method is significantly below freshnets: "
            f"{rows_where('freshnets_significantly_higher')}. After Holm's correction over each "
            "method's rows (the chance of any false call kept under "
            f"{SIGNIFICANCE}): {rows_where('freshnets_significantly_higher_holm')} below "
            f"freshnets; freshnets below {rows_where('freshnets_significantly_lower_holm')}.",
        ]
    return summary, "\n".join(lines)


def headroom(
    store: RunStore,
    datasets: list[str],
    methods: list[str],
    factors: list[str],
    unreachable: dict[str, str] | None = None,
) -> tuple[dict[str, Any], str]:
    """Whether a better choice could change a row's winner: per compressed method (but those
    that cannot store the row's factor, ``unreachable``), the tuning seed's test error of the
    candidate validation chose and of the best of all its candidates.
    A diagnostic read after the choice, never part of it: where even freshnets' best candidate
    is above a rival's chosen one, no choice among freshnets' candidates wins the row."""
    selection = store.selection()
    compressed = [m for m in COMPRESSED_METHODS if m in methods]
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for dataset in datasets:
        for factor in factors:
            row: dict[str, dict[str, float]] = {}
            wanted = [m for m in compressed if f"{dataset}/{m}/{factor}" not in (unreachable or {})]
            for method in wanted:
                entry = selection.get(f"{dataset}/{method}/{factor}")
                if entry is None:
                    continue
                tests, chosen = {}, None
                for candidate in entry["candidates"]:
                    if candidate["overrides"] == entry["chosen"]:
                        chosen = candidate["key"]
                    record = store.get_key(candidate["key"])
                    if record and not record["result"].get("diverged"):
                        tests[candidate["key"]] = 100 * record["result"]["test_error"]
                if chosen in tests:
                    row[method] = {"chosen": tests[chosen], "best": min(tests.values())}
            if len(row) == len(wanted) and wanted:
                rows[f"{dataset} {factor}"] = row
    summary: dict[str, Any] = {"rows": rows}
    if not rows:
        return summary, "No row has every compressed method's choice yet."
    lines = [
        f"Tuning seed ({', '.join(compressed)}): the test error (%) of the candidate validation "
        "chose / the lowest test error of all the method's candidates. Read after the choice, "
        "never used for it.",
        "",
        "| row | " + " | ".join(compressed) + " |",
        "|---|" + "---|" * len(compressed),
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{row[m]['chosen']:.2f} / {row[m]['best']:.2f}" if m in row else "–"
                for m in compressed
            )
            + " |"
        )
    if "freshnets" in compressed:
        out_of_reach = [
            name
            for name, row in rows.items()
            if "freshnets" in row
            and any(
                row["freshnets"]["best"] > v["chosen"] for m, v in row.items() if m != "freshnets"
            )
        ]
        summary["freshnets_out_of_reach"] = out_of_reach
        lines += [
            "",
            "Rows where even freshnets' best candidate is above another method's chosen one on "
            "the tuning seed: " + (", ".join(out_of_reach) or "none") + ".",
        ]
    return summary, "\n".join(lines)


def _sign_test(lower: int, higher: int) -> float | None:
    """The two-sided binomial p of ``lower`` rows against ``higher`` at even odds; None
    without a row that differs."""
    from scipy.stats import binomtest

    return float(binomtest(lower, lower + higher).pvalue) if lower + higher else None


def _welch_p(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """Two-sided p of Welch's t-test between two cells' test errors over their seeds; None with
    fewer than two seeds or no spread at all."""
    from scipy.stats import ttest_ind_from_stats

    x, y = a["test_error"], b["test_error"]
    if min(x["n"], y["n"]) < 2 or not (x["std"] or y["std"]):
        return None
    test = ttest_ind_from_stats(
        x["mean"], x["std"], x["n"], y["mean"], y["std"], y["n"], equal_var=False
    )
    return float(test.pvalue)


def welch_p_of(a: list[float], b: list[float]) -> float | None:
    """`_welch_p` of two lists of test errors, for the diagnostics that compare runs outside a
    report (docs/results/*/compare.py), so they test as the reports do."""

    def cell(values: list[float]) -> dict[str, Any]:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"test_error": {"n": len(values), "mean": statistics.mean(values), "std": std}}

    return _welch_p(cell(a), cell(b))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    Why: a test per row over fourteen rows calls 0.7 differences significant at 0.05 by chance
    alone; after Holm's adjustment the chance of any false call stays under 0.05."""
    order = sorted(range(len(pvalues)), key=pvalues.__getitem__)
    adjusted = [1.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def describe_point(point: dict[str, Any]) -> str:
    """A grid candidate in words: `lr=0.02, dropout=0.0, allocation=exponential decay=0.25`."""
    train, model = split_point(point)
    words = [f"{k}={v}" for k, v in train.items()]
    for key, value in model.items():
        if isinstance(value, dict):
            value = " ".join(
                str(v) if k in ("shape", "kind") else f"{k}={v}" for k, v in value.items()
            )
        words.append(f"{key}={value}")
    if point.get(TEACHER_KEY) is not None:
        words.append("distilled from dense")
    return ", ".join(words)


def describe_override(override: dict[str, Any]) -> str:
    """A second-stage override in words, with the factors and data sets it is limited to."""
    train, model = split_override(override)
    words = describe_point({**train, "model": model, TEACHER_KEY: override.get(TEACHER_KEY)})
    scope = [f"at {', '.join(override[SCOPE_KEY])}"] if SCOPE_KEY in override else []
    scope += [f"on {', '.join(override[DATASETS_KEY])}"] if DATASETS_KEY in override else []
    return f"{words} ({'; '.join(scope)})" if scope else words


def chosen_size(entry: dict[str, Any]) -> SizeReport | None:
    """The size report of the model a cell chose: how hard its virtual network is compressed
    (stored / rebuilt, which a narrow ``width`` brings near 1) and how the rest is dropped,
    truncated or hashed. None where the entry does not name its architecture (stores older than
    the ``arch`` key)."""
    import freshcore
    from freshcore.data import get_info

    if "arch" not in entry:
        return None
    info = get_info(entry["dataset"])
    model = freshcore.build_model(
        entry["arch"],
        method=entry["method"],
        compression=entry["factor"],
        input_shape=tuple(info.input_shape),
        num_classes=info.num_classes,
        **{**entry.get("model", {}), **split_point(entry["chosen"])[1]},
    )
    return freshcore.size_report(model)


def selection_table(store: RunStore) -> str:
    """The grid value each cell chose, how hard that model compresses the network it rebuilds
    and by what (zeros: truncation; shared: hashing), every candidate's validation error and,
    where the protocol confirmed, the shortlist's mean over the confirm seeds."""
    lines = [
        "| cell | chosen | stored / rebuilt | zero / hashed | candidates (validation error %) "
        "| confirmed (mean validation error % over seeds) |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in sorted(store.selection().items()):
        chosen = describe_point(entry["chosen"])
        size = chosen_size(entry)
        cands = "; ".join(
            describe_point(c["overrides"])
            + (f": {100 * c['val_error']:.2f}" if c["val_error"] is not None else ": diverged")
            for c in entry["candidates"]
        )
        if size is None:
            rate = kind = "–"
        else:
            rate = f"{size.rebuilt_ratio:.3f}"
            zero = size.zero_values / max(1, size.rebuilt_weights)
            kind = f"{100 * zero:.0f}% / {100 * size.shared_ratio:.0f}%"
        lines.append(f"| {name} | {chosen} | {rate} | {kind} | {cands} | {_confirmed(entry)} |")
    return "\n".join(lines)


def _confirmed(entry: dict[str, Any]) -> str:
    """A selection entry's confirm check in words: its seeds, then each shortlisted point's
    mean validation error over them; "–" where the cell was not confirmed."""
    if "confirmed" not in entry:
        return "–"
    rows = "; ".join(
        describe_point(row["overrides"])
        + (
            f": {100 * row['mean_val_error']:.2f}"
            if row["mean_val_error"] is not None
            else ": diverged"
        )
        for row in entry["confirmed"]
    )
    return f"seeds {', '.join(map(str, entry['confirm_seeds']))}: {rows}"


def plot_errors(
    cells: dict[str, dict[str, Any]], datasets: list[str], methods: list[str], path: Path
) -> Path | None:
    """One panel per data set: test error (%) against compression factor, one line per method."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in datasets if any(c["dataset"] == d for c in cells.values())]
    if not datasets:
        return None
    cols = min(4, len(datasets))
    rows = math.ceil(len(datasets) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, dataset in zip(axes.flat, datasets, strict=False):
        for method in [m for m in ALL_METHODS if m in methods]:
            points = sorted(
                (float(Fraction(c["factor"])), c["test_error"])
                for c in cells.values()
                if c["dataset"] == dataset and c["method"] == method and c["test_error"]["n"]
            )
            if not points:
                continue
            if method == "dense":
                ax.axhline(100 * points[0][1]["mean"], color="black", ls="--", lw=1, label="dense")
                continue
            xs = [p[0] for p in points]
            ys = [100 * p[1]["mean"] for p in points]
            es = [100 * p[1]["std"] for p in points]
            style = {"lw": 2.2} if method == "freshnets" else {"lw": 1.2}
            colour = f"C{ALL_METHODS.index(method)}"  # the same colour in every panel
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method, color=colour, **style)
        ax.set_xscale("log", base=2)
        factors = sorted(
            {c["factor"] for c in cells.values() if c["dataset"] == dataset} - {DENSE_FACTOR},
            key=Fraction,
        )
        ax.set_xticks([float(Fraction(f)) for f in factors], factors)
        ax.minorticks_off()
        if len(factors) == 1:
            ax.set_xlim(float(Fraction(factors[0])) / 2, float(Fraction(factors[0])) * 2)
        means = [
            100 * c["test_error"]["mean"]
            for c in cells.values()
            if c["dataset"] == dataset and c["method"] in methods and c["test_error"]["n"]
        ]
        if min(means) >= 0.05:  # errors span 0.5% to tens of %: keep the small gaps readable
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            if max(means) / min(means) < 20:  # within about a decade: label the minor ticks too
                ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        else:  # an error of (nearly) 0% has no place on a log axis
            ax.set_ylim(bottom=0)
        ax.set_title(dataset)
        ax.set_xlabel("compression factor")
        ax.set_ylabel("test error (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(datasets) :]:
        ax.axis("off")
    legend: dict[str, Any] = {}  # every method of every panel, in ALL_METHODS order
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    labels = [m for m in ALL_METHODS if m in legend]
    axes.flat[0].legend([legend[m] for m in labels], labels, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ablation_rows(
    store: RunStore, specs: list[tuple[str, str, str, RunSpec]], seeds: int
) -> tuple[dict[str, Any], str]:
    """Summary and Markdown of ablation runs given as (name, knob, metric, spec) per seed."""
    grouped: dict[tuple[str, str, str, str, str], list[float]] = {}
    for name, knob, metric, spec in specs:
        record = store.get(spec)
        key = (knob, name, spec.dataset, spec.factor, metric)
        grouped.setdefault(key, [])
        if record is not None and record["result"].get(metric) is not None:
            grouped[key].append(record["result"][metric])
    columns = list(dict.fromkeys((k[2], k[3]) for k in grouped))
    names = list(dict.fromkeys((k[0], k[1], k[4]) for k in grouped))
    summary: dict[str, Any] = {}
    lines = [
        "| knob | variant | " + " | ".join(f"{d} {f}" for d, f in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for knob, name, metric in names:
        texts = []
        for dataset, factor in columns:
            s = summarise(grouped.get((knob, name, dataset, factor, metric), []))
            summary[f"{name}|{dataset}|{factor}"] = {"knob": knob, "metric": metric, **s}
            texts.append(_fmt(s, seeds))
        lines.append(f"| {knob} | {name} | " + " | ".join(texts) + " |")
    return summary, "\n".join(lines)
