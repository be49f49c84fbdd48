"""The harness's bookkeeping: run keys, groups, the validation-only choice, the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from freshcore.reproduce.plan import (
    RunSpec,
    dataset_archs,
    default_protocol,
    factor_value,
    split_point,
    table_groups,
    unreachable,
)
from freshcore.reproduce.report import (
    collect_cells,
    describe_override,
    holm,
    markdown_table,
    standings,
    welch_p_of,
)
from freshcore.reproduce.runner import (
    RunStore,
    choose,
    confirm,
    finished_runs,
    shortlist,
    stage_pending,
    stage_points,
)


def _spec(**kw: object) -> RunSpec:
    base = {"dataset": "mnist", "method": "freshnets", "factor": "1/16", "seed": 0}
    return RunSpec(**{**base, **kw})  # type: ignore[arg-type]


def test_key_depends_on_every_field_and_nothing_else() -> None:
    a = _spec(train={"lr": 0.05, "epochs": 3})
    assert a.key() == _spec(train={"epochs": 3, "lr": 0.05}).key()  # order does not matter
    others = [
        _spec(train={"lr": 0.02, "epochs": 3}),
        _spec(train={"lr": 0.05, "epochs": 3}, seed=1),
        _spec(train={"lr": 0.05, "epochs": 3}, factor="1/64"),
        _spec(train={"lr": 0.05, "epochs": 3}, model={"allocation": {"shape": "uniform"}}),
        _spec(train={"lr": 0.05, "epochs": 3}, init="project"),
        _spec(train={"lr": 0.05, "epochs": 3}, teacher=_spec(method="dense").to_dict()),
    ]
    assert len({a.key(), *(o.key() for o in others)}) == 1 + len(others)
    assert RunSpec.from_dict(a.to_dict()).key() == a.key()
    assert a.key().startswith("mnist_freshnets_1of16_s0_")


def test_device_is_not_part_of_the_key() -> None:
    cpu, gpu = default_protocol(device="cpu"), default_protocol(device="cuda")
    assert cpu.base == gpu.base


def test_dropout_grid_crosses_every_learning_rate() -> None:
    assert default_protocol(lrs=(0.05, 0.02)).grid == [{"lr": 0.05}, {"lr": 0.02}]
    grid = default_protocol(lrs=(0.05, 0.02), dropouts=(0.5, 0.0)).grid
    assert grid == [
        {"lr": 0.05, "dropout": 0.5},
        {"lr": 0.05, "dropout": 0.0},
        {"lr": 0.02, "dropout": 0.5},
        {"lr": 0.02, "dropout": 0.0},
    ]


@pytest.mark.parametrize("bad", ["0", "2", "abc", "1/0", "-1/16"])
def test_bad_factor_is_named(bad: str) -> None:
    with pytest.raises(ValueError, match="factor"):
        factor_value(bad)


def test_dense_runs_once_per_dataset() -> None:
    groups = table_groups(
        ["mnist", "convex"],
        ["dense", "freshnets"],
        ["1/16", "1/64"],
        {"mnist": "mnist-cnn", "convex": "mnist-cnn"},
    )
    names = [g.name for g in groups]
    assert names == [
        "mnist/dense/1",
        "mnist/freshnets/1/16",
        "mnist/freshnets/1/64",
        "convex/dense/1",
        "convex/freshnets/1/16",
        "convex/freshnets/1/64",
    ]
    with pytest.raises(ValueError, match="unknown method 'pruning'"):
        table_groups(["mnist"], ["pruning"], ["1/16"], {"mnist": "mnist-cnn"})


def _record(val: float, test: float) -> dict:
    return {"result": {"val_error": val, "test_error": test}}


def test_choice_uses_validation_never_test() -> None:
    candidates = [
        ({"lr": 0.1}, _record(val=0.02, test=0.001)),  # best on test, worse on validation
        ({"lr": 0.05}, _record(val=0.01, test=0.009)),
        ({"lr": 0.02}, _record(val=0.01, test=0.002)),  # tie on validation: the earlier wins
    ]
    assert choose(candidates) == {"lr": 0.05}


def _fake_run(store: RunStore, spec: RunSpec, test: float) -> None:
    store.put(
        spec,
        {
            "key": spec.key(),
            "spec": spec.to_dict(),
            "result": {
                "test_error": test,
                "test_error_fp16": test,
                "val_error": test,
                "seconds": 1.0,
            },
            "size": {"total": {"stored_parameters": 123}},
        },
    )


def test_table_from_disk_bolds_best_compressed_and_counts_seeds(tmp_path: Path) -> None:
    """The best compressed cell of a row is bold, ties too; none while a cell is not final."""
    store = RunStore(tmp_path)
    errors = {"dense": [0.005, 0.007], "hashednets": [0.02, 0.03], "freshnets": [0.01, 0.012]}
    for method, values in errors.items():
        factor = "1" if method == "dense" else "1/16"
        name = f"mnist/{method}/{factor}"
        base = {"epochs": 1}
        store.put_selection(
            name,
            {
                "dataset": "mnist",
                "method": method,
                "factor": factor,
                "arch": "mnist-cnn",
                "model": {},
                "base": base,
                "tune_seed": 0,
                "chosen": {"lr": 0.05},
                "candidates": [],
            },
        )
        for seed, value in enumerate(values):
            spec = RunSpec("mnist", method, factor, seed, "mnist-cnn", {**base, "lr": 0.05})
            _fake_run(store, spec, value)
    cells = collect_cells(store, seeds=[0, 1, 2])
    assert cells["mnist/freshnets/1/16"]["test_error"]["n"] == 2
    assert cells["mnist/freshnets/1/16"]["test_error"]["mean"] == pytest.approx(0.011)
    assert cells["mnist/freshnets/1/16"]["stored_parameters"] == 123
    table = markdown_table(cells, ["mnist"], ["dense", "hashednets", "freshnets"], ["1/16"], 3)
    row = table.splitlines()[2]
    assert "**1.10 ± 0.14 (n=2)**" in row  # freshnets, best compressed, two of three seeds
    assert "**0.60" not in row  # dense is a reference, never bold
    assert "2.50 ± 0.71 (n=2)" in row

    tied = {**cells, "mnist/hashednets/1/16": {**cells["mnist/hashednets/1/16"]}}
    tied["mnist/hashednets/1/16"]["test_error"] = {"n": 3, "mean": 0.011004, "std": 0.001}
    row = markdown_table(tied, ["mnist"], ["hashednets", "freshnets"], ["1/16"], 3).splitlines()[2]
    assert row.count("**") == 4  # 1.10 and 1.10: a tie as printed, both bold (standings agree)

    waiting = {**cells, "mnist/hashednets/1/16": {**cells["mnist/hashednets/1/16"]}}
    waiting["mnist/hashednets/1/16"]["stage_pending"] = True
    row = markdown_table(waiting, ["mnist"], ["hashednets", "freshnets"], ["1/16"], 3)
    assert "(not final)" in row and "**" not in row  # no best until every cell is final


def _cells(
    errors: dict[str, dict[str, float]], n: int = 3, std: float = 0.0
) -> dict[str, dict[str, Any]]:
    """Report cells from {row "dataset factor": {method: mean error in %}}, std in % too."""
    cells = {}
    for row, by_method in errors.items():
        dataset, factor = row.split()
        for method, error in by_method.items():
            f = "1" if method == "dense" else factor
            summary = {"n": n, "mean": error / 100, "std": std / 100}
            cells[f"{dataset}/{method}/{f}"] = {"test_error": summary}
    return cells


def test_standings_rank_the_complete_rows_as_printed() -> None:
    """Ranks, wins and gaps count only rows where every compressed method has every seed; a
    difference under the printed 0.01 is a tie, which shares its ranks and its win."""
    methods = ["dense", "hashednets", "freshnets-uniform", "freshnets"]
    cells = _cells(
        {
            "mnist 1/16": {"dense": 0.5, "hashednets": 0.7, "freshnets-uniform": 0.9,
                           "freshnets": 0.6},
            "mnist 1/64": {"hashednets": 1.001, "freshnets-uniform": 1.3, "freshnets": 0.999},
            "convex 1/16": {"dense": 2.0, "hashednets": 3.0, "freshnets-uniform": 2.5,
                            "freshnets": 2.8},
        }
    )  # fmt: skip
    cells.update(_cells({"convex 1/64": {"hashednets": 4.0, "freshnets-uniform": 5.0}}))
    cells.update(_cells({"convex 1/64": {"freshnets": 1.0}}, n=2))  # seed 2 still running
    summary, md = standings(cells, ["mnist", "convex"], methods, ["1/16", "1/64"], 3)
    assert summary["rows"] == ["mnist 1/16", "mnist 1/64", "convex 1/16"]
    fresh, hashed = summary["methods"]["freshnets"], summary["methods"]["hashednets"]
    assert fresh["mean_rank"] == pytest.approx((1 + 1.5 + 2) / 3)
    assert fresh["rows_won"] == pytest.approx(1.5) and hashed["rows_won"] == pytest.approx(0.5)
    assert summary["methods"]["freshnets-uniform"]["rows_won"] == 1
    assert hashed["freshnets_lower"] == 2 and "freshnets_lower" not in fresh
    assert fresh["gap_to_dense"]["1/16"] == {"mean": pytest.approx(0.45), "max": 0.8, "rows": 2}
    assert fresh["gap_to_dense"]["1/64"] == {"mean": 0.5, "max": 0.5, "rows": 1}
    assert hashed["freshnets_higher"] == 0  # mnist 1/64 is a tie as printed
    assert hashed["sign_test_p"] == 0.5  # 2 lower, 0 higher: the tie drops out
    assert summary["methods"]["freshnets-uniform"]["sign_test_p"] == 1.0  # 2 lower, 1 higher
    assert md.splitlines()[4] == (
        "| freshnets | 1.50 | 1.5 | – | – | – | 0.45 / 0.80 | 0.50 / 0.50 |"
    )
    hashed_line = "| hashednets | 2.17 | 0.5 | 2 of 3 (0) | 0 of 3 (0) | p = 0.5 | 0.60 / 1.00 |"
    assert hashed_line in md
    summary, md = standings(cells, ["convex"], methods, ["1/64"], 3)
    assert summary["rows"] == [] and "No row is complete" in md


def test_standings_sign_test_counts_rows_not_seeds() -> None:
    """Lower (or higher) in 8 rows of 8 is unlikely at even odds (2 / 2**8); lower in 3 and
    higher in 5 is not; a rival level in every row has no test."""
    datasets = [f"d{i}" for i in range(8)]
    errors = {f"{d} 1/16": {"lrd": 1.5, "hashednets": 2.0, "lowfreq": 1.0 + (i < 3),
                             "equivalent": 1.0, "freshnets": 1.5}
              for i, d in enumerate(datasets)}  # fmt: skip
    methods = ["lrd", "hashednets", "lowfreq", "equivalent", "freshnets"]
    summary, md = standings(_cells(errors), datasets, methods, ["1/16"], 3)
    hashed, low = summary["methods"]["hashednets"], summary["methods"]["lowfreq"]
    assert hashed["sign_test_p"] == pytest.approx(2 / 2**8)
    assert (low["freshnets_lower"], low["freshnets_higher"]) == (3, 5)
    assert low["sign_test_p"] == pytest.approx(0.7265625)
    assert summary["methods"]["equivalent"]["sign_test_p"] == pytest.approx(2 / 2**8)
    assert "| 8 of 8 (0) | 0 of 8 (0) | p = 0.0078 |" in md
    assert summary["methods"]["lrd"]["sign_test_p"] is None
    assert "| 0 of 8 (0) | 0 of 8 (0) | – |" in md


def test_archs_follow_the_input_shape_or_one_preset_that_fits_every_data_set() -> None:
    assert dataset_archs(["mnist", "digits"]) == {"mnist": "mnist-cnn", "digits": "mnist-cnn"}
    assert dataset_archs(["mnist-rot", "convex"], "mnist-allconv") == {
        "mnist-rot": "mnist-allconv",
        "convex": "mnist-allconv",
    }
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        dataset_archs(["mnist"], "resnet")
    # a 7x7 average pool after two 2x2 max pools needs 28x28 input: digits are 8x8
    with pytest.raises(ValueError, match=r"mnist-allconv does not fit data set digits \(1, 8, 8\)"):
        dataset_archs(["mnist", "digits"], "mnist-allconv")


def test_cells_a_method_cannot_store_are_named_with_the_reason() -> None:
    """lrd at rank 1 in every layer of mnist-allconv stores more than 1/64 of it; every other
    10-class cell fits, and so does every cell of mnist-cnn."""
    methods = ["dense", "equivalent", "lrd", "hashednets", "freshnets"]
    allconv = dataset_archs(["mnist"], "mnist-allconv")
    cells = unreachable(table_groups(["mnist"], methods, ["1/16", "1/64"], allconv))
    assert list(cells) == ["mnist/lrd/1/64"]
    assert cells["mnist/lrd/1/64"].startswith("lrd cannot reach compression 0.015625")
    cnn = dataset_archs(["mnist"])
    assert unreachable(table_groups(["mnist"], methods, ["1/16", "1/64"], cnn)) == {}


def test_a_row_is_complete_without_the_methods_that_cannot_store_it() -> None:
    """An unreachable cell neither blocks its row nor takes a rank in it; the table says why."""
    methods = ["dense", "lrd", "hashednets", "freshnets"]
    cells = _cells(
        {
            "mnist 1/16": {"dense": 0.5, "lrd": 0.6, "hashednets": 0.9, "freshnets": 0.7},
            "mnist 1/64": {"hashednets": 1.2, "freshnets": 1.0},
        }
    )
    skipped = {"mnist/lrd/1/64": "lrd cannot reach compression 0.015625"}
    summary, md = standings(cells, ["mnist"], methods, ["1/16", "1/64"], 3, skipped)
    assert summary["rows"] == ["mnist 1/16", "mnist 1/64"]
    lrd, hashed = summary["methods"]["lrd"], summary["methods"]["hashednets"]
    assert (lrd["mean_rank"], lrd["rows"], lrd["rows_won"]) == (1, 1, 1)
    assert (lrd["freshnets_higher"], lrd["rows_compared"]) == (1, 1)
    assert (hashed["mean_rank"], hashed["rows_compared"]) == (2.5, 2)
    assert summary["methods"]["freshnets"]["mean_rank"] == 1.5
    assert "| lrd | 1.00 | 1 | 0 of 1 (0) | 1 of 1 (0) |" in md
    assert standings(cells, ["mnist"], methods, ["1/64"], 3)[0]["rows"] == []  # not told
    table = markdown_table(cells, ["mnist"], methods, ["1/64"], 3, skipped)
    assert table.splitlines()[2] == (
        "| mnist | 1/64 | 0.50 ± 0.00 | cannot reach | 1.20 ± 0.00 | **1.00 ± 0.00** |"
    )


def test_standings_count_significant_differences_by_welch_over_the_seeds() -> None:
    """With 3 seeds, a gap of ten standard deviations is significant and a gap of one is not;
    nothing is significant without spread or with fewer than two seeds."""
    methods = ["hashednets", "lowfreq", "freshnets"]
    cells = _cells({"mnist 1/16": {"hashednets": 1.0, "lowfreq": 0.6}}, std=0.05)
    cells.update(_cells({"mnist 1/16": {"freshnets": 0.55}}, std=0.05))
    cells.update(_cells({"mnist 1/64": {"hashednets": 0.8, "lowfreq": 1.5, "freshnets": 1.0}}))
    summary, md = standings(cells, ["mnist"], methods, ["1/16", "1/64"], 3)
    hashed, low = summary["methods"]["hashednets"], summary["methods"]["lowfreq"]
    assert (hashed["freshnets_lower"], hashed["freshnets_significantly_lower"]) == (
        1,
        ["mnist 1/16"],
    )
    assert (hashed["freshnets_higher"], hashed["freshnets_significantly_higher"]) == (1, [])
    assert (low["freshnets_lower"], low["freshnets_significantly_lower"]) == (2, [])
    assert "| hashednets | 2.00 | 1 | 1 of 2 (1) | 1 of 2 (0) |" in md
    assert "Rows where a method is significantly below freshnets: none. After Holm's" in md
    assert md.endswith(": none below freshnets; freshnets below hashednets on mnist 1/16.")
    cells["mnist/freshnets/1/64"]["test_error"].update(std=0.0005)  # 1.00 ± 0.05 against 0.80
    summary, md = standings(cells, ["mnist"], methods, ["1/16", "1/64"], 3)
    assert summary["methods"]["hashednets"]["freshnets_significantly_higher"] == ["mnist 1/64"]
    assert "significantly below freshnets: hashednets on mnist 1/64. After" in md
    assert ": hashednets on mnist 1/64 below freshnets; freshnets below hashednets on" in md
    cells["mnist/freshnets/1/64"]["test_error"].update(std=0.002)  # 0.2 points, and a 0.2 gap
    summary, _ = standings(cells, ["mnist"], methods, ["1/16", "1/64"], 3)
    assert summary["methods"]["hashednets"]["freshnets_significantly_higher"] == []
    one_seed = {k: {"test_error": {**c["test_error"], "n": 1}} for k, c in cells.items()}
    summary, _ = standings(one_seed, ["mnist"], methods, ["1/16", "1/64"], 1)
    assert summary["methods"]["hashednets"]["freshnets_significantly_lower"] == []


def test_holm_adjusts_each_p_by_its_rank_and_keeps_the_order() -> None:
    """Smallest p times the number of tests, the next times one fewer, never below an earlier
    one, never above 1; the adjusted values come back in the order given."""
    assert holm([0.04, 0.001, 0.03, 0.5]) == pytest.approx([0.09, 0.004, 0.09, 0.5])
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])
    assert holm([]) == []


def test_welch_p_of_lists_is_welchs_test_and_none_without_spread() -> None:
    """The diagnostics' test on raw errors is scipy's unequal-variance t-test; one seed, or no
    spread in either list, gives no p rather than a division by zero."""
    from scipy.stats import ttest_ind

    a, b = [0.74, 0.73, 0.75], [0.65, 0.80, 0.61, 0.70]
    assert welch_p_of(a, b) == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue)
    assert welch_p_of([0.7], b) is None
    assert welch_p_of([0.5, 0.5], [0.5, 0.5]) is None


def test_standings_keep_only_the_rows_that_survive_holms_correction() -> None:
    """Four rows where lowfreq is below freshnets with p near 0.02 each: significant one by
    one, none after Holm's correction over the four; a gap of many standard deviations
    survives it."""
    methods = ["lowfreq", "freshnets"]
    rows = {f"mnist {f}": {"lowfreq": 1.0} for f in ("1/2", "1/4", "1/8", "1/16")}
    cells = _cells(rows, std=0.1)
    cells.update(_cells({r: {"freshnets": 1.3} for r in rows}, std=0.1))
    summary, md = standings(cells, ["mnist"], methods, ["1/2", "1/4", "1/8", "1/16"], 3)
    low = summary["methods"]["lowfreq"]
    assert len(low["freshnets_significantly_higher"]) == 4
    assert low["freshnets_significantly_higher_holm"] == []
    assert md.endswith(": none below freshnets; freshnets below none.")
    cells["mnist/freshnets/1/16"]["test_error"].update(mean=0.02)  # 2.00 ± 0.10 against 1.00
    summary, md = standings(cells, ["mnist"], methods, ["1/2", "1/4", "1/8", "1/16"], 3)
    assert summary["methods"]["lowfreq"]["freshnets_significantly_higher_holm"] == ["mnist 1/16"]
    assert md.endswith(": lowfreq on mnist 1/16 below freshnets; freshnets below none.")


def test_allocation_grid_is_freshnets_only_and_keeps_the_tables_keys() -> None:
    """A model grid crosses the training grid for freshnets alone; its point at the table's own
    allocation is the very run (same key) the table trained without a grid."""
    steep, table = {"shape": "exponential", "decay": 2.0}, {"shape": "exponential", "decay": 0.5}
    protocol = default_protocol(lrs=(0.02,), dropouts=(0.5, 0.0), allocations=(steep, table))
    fresh = protocol.points("freshnets")
    assert fresh == [
        {"lr": 0.02, "dropout": 0.5, "model": {"allocation": steep}},
        {"lr": 0.02, "dropout": 0.5, "model": {"allocation": table}},
        {"lr": 0.02, "dropout": 0.0, "model": {"allocation": steep}},
        {"lr": 0.02, "dropout": 0.0, "model": {"allocation": table}},
    ]
    assert protocol.points("hashednets") == protocol.grid
    assert split_point(fresh[0]) == ({"lr": 0.02, "dropout": 0.5}, {"allocation": steep})
    (group,) = table_groups(
        ["mnist"], ["freshnets"], ["1/16"], {"mnist": "mnist-cnn"}, table, {"kind": "uniform"}
    )
    without_grid = group.spec(0, {**protocol.base, "lr": 0.02, "dropout": 0.0})
    assert group.point_spec(0, protocol.base, fresh[3]).key() == without_grid.key()
    steep_spec = group.point_spec(0, protocol.base, fresh[2])
    assert steep_spec.model == {"budget_policy": {"kind": "uniform"}, "allocation": steep}
    assert steep_spec.key() != without_grid.key()


def test_second_stage_refines_the_choice_at_its_factors_only() -> None:
    """A refinement is the first stage's choice with the override merged into its model
    keywords (the allocation it chose stays); none at factors outside the override's scope,
    none for another method, and none that would train the very network already chosen."""
    table, boost4 = {"shape": "exponential", "decay": 0.5}, {"kind": "conv-boost", "conv_factor": 4}
    boost8 = {"kind": "conv-boost", "conv_factor": 8}
    at64 = ["1/64"]
    protocol = default_protocol(
        lrs=(0.02,),
        dropouts=(0.5, 0.0),
        refine={
            "freshnets": [
                {"budget_policy": boost8, "factors": at64},
                {"budget_policy": boost4, "factors": at64},
            ]
        },
    )
    groups = table_groups(
        ["mnist"], ["hashednets", "freshnets"], ["1/16", "1/64"], {"mnist": "mnist-cnn"},
        table, boost4,
    )  # fmt: skip
    _, hashed64, fresh16, fresh64 = groups
    chosen = {"lr": 0.02, "dropout": 0.0, "model": {"allocation": table}}
    (refined,) = protocol.refinements(fresh64, chosen)  # boost4 is the choice itself
    assert refined == {
        "lr": 0.02,
        "dropout": 0.0,
        "model": {"allocation": table, "budget_policy": boost8},
    }
    spec = fresh64.point_spec(0, protocol.base, refined)
    assert spec.model == {"budget_policy": boost8, "allocation": table}
    assert spec.train["dropout"] == 0.0
    assert protocol.refinements(fresh16, chosen) == []
    lr = default_protocol(lrs=(0.02,), refine={"lrd": [{"lr": 0.05}]})
    (lrd64,) = table_groups(["mnist"], ["lrd"], ["1/64"], {"mnist": "mnist-cnn"}, table, boost4)
    (faster,) = lr.refinements(lrd64, {"lr": 0.02, "dropout": 0.5})
    assert faster == {"lr": 0.05, "dropout": 0.5}  # a training setting replaces the choice's
    assert lrd64.point_spec(0, lr.base, faster).model == {"budget_policy": boost4}
    assert protocol.refinements(hashed64, {"lr": 0.02, "dropout": 0.0}) == []
    shifts = default_protocol(lrs=(0.02,), refine={"dense": [{"augment": True}]})
    (dense,) = table_groups(["mnist"], ["dense"], ["1/64"], {"mnist": "mnist-cnn"}, table, boost4)
    (shifted,) = shifts.refinements(dense, {"lr": 0.02})  # unscoped: every factor, dense's too
    assert dense.point_spec(0, shifts.base, shifted).train["augment"] is True
    # at most: the grid (2 points) and two other seeds per cell, and 1/64 freshnets' 2 overrides
    assert protocol.runs(groups, [0, 1, 2]) == 4 * (2 + 2) + 2


def test_a_distilling_refinement_learns_from_the_dense_run_of_its_own_seed() -> None:
    """`"teacher": "dense"` puts the dense cell's chosen point into the refinement; each seed's
    run then names the dense run of that seed (with the dense choice) as its teacher, so the
    teacher is part of the key. Without the dense choice the second stage cannot be built."""
    distil = {"teacher": "dense", "distill_alpha": 0.9, "distill_temperature": 4.0, "lr": 0.01}
    protocol = default_protocol(lrs=(0.02,), refine={"hashednets": [distil]})
    hashed, dense = table_groups(
        ["mnist"], ["hashednets", "dense"], ["1/16"], {"mnist": "mnist-cnn"}
    )
    dense_point = {"lr": 0.02, "augment": True}
    with pytest.raises(ValueError, match="dense is not chosen"):
        protocol.refinements(hashed, {"lr": 0.02})
    assert protocol.needs_teacher(hashed) and not protocol.needs_teacher(dense)
    (refined,) = protocol.refinements(hashed, {"lr": 0.02}, teacher=dense_point)
    assert refined == {"lr": 0.01, "distill_alpha": 0.9, "distill_temperature": 4.0,
                       "teacher": dense_point}  # fmt: skip
    for seed in (0, 2):
        spec = hashed.point_spec(seed, protocol.base, refined)
        assert "teacher" not in spec.train and spec.train["distill_alpha"] == 0.9
        assert spec.teacher == dense.point_spec(seed, protocol.base, dense_point).to_dict()
        assert spec.teacher["seed"] == seed and spec.teacher["train"]["augment"] is True
    other = hashed.point_spec(0, protocol.base, {**refined, "teacher": {"lr": 0.05}})
    assert other.key() != hashed.point_spec(0, protocol.base, refined).key()
    assert describe_override(distil).endswith("distilled from dense")


def test_an_override_scoped_to_data_sets_applies_there_only() -> None:
    """`"datasets": [...]` limits an override as `"factors"` does, and says so in the report."""
    shifts = {"augment": True, "datasets": ["mnist"], "factors": ["1/64"]}
    protocol = default_protocol(lrs=(0.02,), refine={"lowfreq": [shifts]})
    archs = {"mnist": "mnist-cnn", "convex": "mnist-cnn"}
    groups = table_groups(["mnist", "convex"], ["lowfreq"], ["1/16", "1/64"], archs)
    applies = [g.name for g in groups if protocol.refine_overrides(g)]
    assert applies == ["mnist/lowfreq/1/64"]
    (point,) = protocol.refinements(groups[1], {"lr": 0.02})
    assert point == {"lr": 0.02, "augment": True}  # the scopes are not training settings
    assert describe_override(shifts) == "augment=True (at 1/64; on mnist)"


def test_a_later_stage_merges_into_the_choice_it_is_given_and_is_counted() -> None:
    """Stage 1 (the first of `later`) takes whatever choice it is handed, the second stage's
    width say, and keeps it beside its own override; its runs count towards the plan's total,
    and a distilling override in any stage makes the cell wait for dense."""
    stem = {"kind": "conv-boost", "conv_factor": 1, "stem_factor": 4.0}
    protocol = default_protocol(
        lrs=(0.02,),
        refine={"lowfreq": [{"width": 0.5}]},
        later=[{"lowfreq": [{"budget_policy": stem, "factors": ["1/64"]}]}],
    )
    (low16, low64) = table_groups(["mnist"], ["lowfreq"], ["1/16", "1/64"], {"mnist": "mnist-cnn"})
    second = {"lr": 0.02, "model": {"width": 0.5}}
    (third,) = protocol.refinements(low64, second, stage=1)
    assert third == {"lr": 0.02, "model": {"width": 0.5, "budget_policy": stem}}
    assert protocol.refinements(low16, second, stage=1) == []  # scoped to 1/64
    assert protocol.refinements(low64, third, stage=1) == []  # the very network chosen
    # the grid (1 point), 2 other seeds, the second stage's one run; 1/64 has the third's too
    assert protocol.runs([low16, low64], [0, 1, 2]) == 2 * (1 + 2 + 1) + 1
    assert not protocol.needs_teacher(low64)
    distil = {"teacher": "dense", "distill_alpha": 0.9}
    assert default_protocol(later=[{}, {"lowfreq": [distil]}]).needs_teacher(low64)


def test_later_top_tries_a_later_stage_on_the_runners_up_too() -> None:
    """With `later_top` 2 a later stage's override goes on the two candidates with the lowest
    validation error so far (a diverged one never counts), each once: a point that is already
    one of those bases is not tried again. The second stage stays on the choice alone, and
    the plan counts the later stage's runs twice."""
    stem = {"kind": "conv-boost", "conv_factor": 1, "stem_factor": 4.0}
    wide, narrow, quarter = ({"lr": 0.02, "model": {"width": w}} for w in (1.0, 0.5, 0.25))
    bad = {"lr": 0.02, "model": {"width": 0.75}}
    candidates = [
        (wide, {"result": {"val_error": 0.30}}),
        (bad, {"result": {"val_error": None}}),
        (narrow, {"result": {"val_error": 0.10}}),
        (quarter, {"result": {"val_error": 0.20}}),
    ]
    later = [{"lowfreq": [{"budget_policy": stem}]}]
    refine = {"lowfreq": [{"epochs": 2}]}
    top2 = default_protocol(lrs=(0.02,), refine=refine, later=later, later_top=2)
    (low,) = table_groups(["mnist"], ["lowfreq"], ["1/16"], {"mnist": "mnist-cnn"})

    def boosted(point: dict[str, Any]) -> dict[str, Any]:
        return {**point, "model": {**point["model"], "budget_policy": stem}}

    assert stage_points(low, top2, candidates, stage=1) == [boosted(narrow), boosted(quarter)]
    assert stage_points(low, top2, candidates, stage=0) == [{**narrow, "epochs": 2}]
    top1 = default_protocol(lrs=(0.02,), refine=refine, later=later)
    assert stage_points(low, top1, candidates, stage=1) == [boosted(narrow)]
    # the runner-up is the choice with the override already: nothing new to try
    twin = [
        (narrow, {"result": {"val_error": 0.1}}),
        (boosted(narrow), {"result": {"val_error": 0.2}}),
    ]
    assert stage_points(low, top2, twin, stage=1) == []
    assert top2.runs([low], [0]) == 1 + 1 + 2 and top1.runs([low], [0]) == 1 + 1 + 1
    with pytest.raises(ValueError, match="later_top=0"):
        default_protocol(later_top=0)


def _confirm_store(
    tmp_path: Path, vals: dict[float, list[float | None]]
) -> tuple[RunStore, Any, Any, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """lowfreq on mnist at 1/16 with one candidate per learning rate, whose runs on seeds
    0, 1, 2 have the validation errors ``vals[lr]``, written by hand as the runner writes
    them; the seed-0 records are the candidates."""
    protocol = default_protocol(lrs=tuple(vals), confirm=2, confirm_seeds=(1, 2))
    (group,) = table_groups(["mnist"], ["lowfreq"], ["1/16"], {"mnist": "mnist-cnn"})
    store = RunStore(tmp_path)
    candidates = []
    for point in protocol.points("lowfreq"):
        for seed, val in enumerate(vals[point["lr"]]):
            spec = group.point_spec(seed, protocol.base, point)
            record = {"key": spec.key(), "spec": spec.to_dict(), "result": {"val_error": val}}
            store.put(spec, record)
            if seed == 0:
                candidates.append((point, record))
    return store, protocol, group, candidates


def test_confirm_keeps_the_lowest_mean_over_its_seeds_not_the_tuning_seeds_best(
    tmp_path: Path,
) -> None:
    """The tuning seed ranks 0.05 first by a hair; over three seeds 0.02 is clearly better,
    and the third candidate is never trained on more seeds (shortlist of 2)."""
    vals = {0.05: [0.100, 0.200, 0.180], 0.02: [0.101, 0.110, 0.120], 0.01: [0.30, None, None]}
    store, protocol, group, candidates = _confirm_store(tmp_path, vals)
    assert shortlist(protocol, candidates) == [{"lr": 0.05}, {"lr": 0.02}]
    assert choose(candidates) == {"lr": 0.05}
    assert confirm(group, protocol, candidates, store) == {"lr": 0.02}
    entry = store.selection()[group.name]
    assert entry["chosen"] == {"lr": 0.02} and entry["confirm_seeds"] == [0, 1, 2]
    means = [row["mean_val_error"] for row in entry["confirmed"]]
    assert means == pytest.approx([0.16, 0.110333], abs=1e-6)
    assert not stage_pending(store, protocol, entry)
    # a protocol that confirms on another seed set has not confirmed this cell
    other = default_protocol(lrs=tuple(vals), confirm=2, confirm_seeds=(1,))
    assert stage_pending(store, other, entry)
    # spreading over an option its candidates share leaves its shortlist, so its check, as is
    spread = default_protocol(lrs=tuple(vals), confirm=2, confirm_distinct=("allocation",))
    assert not stage_pending(store, spread, entry)


def test_finished_runs_leaves_out_a_check_a_new_stage_may_redo(tmp_path: Path) -> None:
    """A confirmed cell counts its grid and its check's runs done; under a protocol with a
    stage it has not tried, the check may shortlist and choose anew, so its records count for
    nothing and the estimate keeps room for the runs that may follow."""
    vals = {0.05: [0.100, 0.200, 0.180], 0.02: [0.101, 0.110, 0.120], 0.01: [0.30, None, None]}
    store, protocol, group, candidates = _confirm_store(tmp_path, vals)
    confirm(group, protocol, candidates, store)
    seeds = [0, 1, 2]
    assert finished_runs([group], protocol, seeds, store) == 3 + 2 * 2
    assert protocol.runs([group], seeds) == 3 + 2 * 2
    later = default_protocol(
        lrs=tuple(vals), confirm=2, confirm_seeds=(1, 2), refine={"lowfreq": [{"epochs": 2}]}
    )
    assert finished_runs([group], later, seeds, store) == 3
    assert later.runs([group], seeds) == 3 + 1 + 2 * 2


def test_confirm_waits_for_a_missing_run_and_drops_a_diverged_one(tmp_path: Path) -> None:
    """A shortlisted point whose confirm run is missing leaves the cell unchosen (retried
    next time); one whose run diverged loses to any point with a mean."""
    vals = {0.05: [0.10, None, 0.10], 0.02: [0.11, 0.30, 0.30]}
    store, protocol, group, candidates = _confirm_store(tmp_path, vals)
    assert confirm(group, protocol, candidates, store) == {"lr": 0.02}
    spec = group.point_spec(2, protocol.base, {"lr": 0.02})
    store.run_path(spec).unlink()
    assert confirm(group, protocol, candidates, store) is None


def test_a_cell_whose_every_candidate_diverged_has_nothing_to_confirm(tmp_path: Path) -> None:
    store, protocol, group, candidates = _confirm_store(tmp_path, {0.05: [None], 0.02: [None]})
    assert shortlist(protocol, candidates) == []
    assert confirm(group, protocol, candidates, store) == {"lr": 0.05}  # as `choose` keeps it
    entry = store.selection()[group.name]
    assert entry["confirmed"] == [] and not stage_pending(store, protocol, entry)


def test_confirm_distinct_takes_the_best_of_each_kind_before_a_second() -> None:
    """A later stage's near-twins of the best (its allocation with another first-layer rate)
    fill a plain shortlist; spread over allocations it takes each allocation's best first,
    and a second of the best kind only when the kinds run out. A diverged run never counts."""
    stem = {"kind": "conv-boost", "conv_factor": 1, "stem_factor": 4.0}
    a, b, c = ({"shape": "exponential", "decay": d} for d in (0.5, 2.0, 1.0))
    points = [
        ({"allocation": a, "budget_policy": stem}, 0.10),
        ({"allocation": a}, 0.11),
        ({"allocation": b, "width": 0.5}, 0.14),
        ({"allocation": b}, 0.13),
        ({"allocation": c}, None),
        ({"allocation": a, "width": 0.5}, 0.12),
    ]
    candidates = [({"lr": 0.02, "model": m}, {"result": {"val_error": v}}) for m, v in points]
    plain = default_protocol(confirm=3)
    spread = default_protocol(confirm=3, confirm_distinct=("allocation",))

    def models(protocol: Any) -> list[dict[str, Any]]:
        return [point["model"] for point in shortlist(protocol, candidates)]

    assert models(plain) == [points[0][0], points[1][0], points[5][0]]
    assert models(spread) == [points[0][0], points[3][0], points[1][0]]
    assert spread.kind(candidates[2][0]) == spread.kind(candidates[3][0])
    assert spread.kind(candidates[0][0]) != spread.kind(candidates[3][0])
    by_width = default_protocol(confirm=3, confirm_distinct=("allocation", "width"))
    assert models(by_width) == [points[0][0], points[5][0], points[3][0]]
    with pytest.raises(ValueError, match=r"confirm_distinct: 'alloc' not a model option"):
        default_protocol(confirm=3, confirm_distinct=("alloc",))


def test_confirm_needs_a_seed_besides_the_tuning_seed_and_counts_its_runs() -> None:
    """Its runs count towards the plan's total, the choice's own shared with the table's
    seeds; a confirm that could train nothing is refused, naming the seeds."""
    (group,) = table_groups(["mnist"], ["lowfreq"], ["1/16"], {"mnist": "mnist-cnn"})
    protocol = default_protocol(lrs=(0.05, 0.02, 0.01), confirm=2, confirm_seeds=(1, 2))
    # 3 grid points, 2 shortlisted x 2 confirm seeds, then seeds 3 and 4 (1 and 2 are shared)
    assert protocol.runs([group], [0, 1, 2, 3, 4]) == 3 + 2 * 2 + 2
    assert default_protocol(lrs=(0.05, 0.02, 0.01)).runs([group], [0, 1, 2, 3, 4]) == 3 + 4
    # a check of 3 on a cell of 2 candidates (dense: 8 or 16 epochs) shortlists both only
    (dense,) = table_groups(["mnist"], ["dense"], ["1"], {"mnist": "mnist-cnn"})
    two = default_protocol(lrs=(0.02,), confirm=3, refine={"dense": [{"epochs": 16}]})
    assert two.runs([dense], [0, 1, 2, 3, 4]) == 2 + 2 * 2 + 2
    with pytest.raises(ValueError, match=r"confirm seed besides the tuning seed 0; got \[0\]"):
        default_protocol(confirm=2, confirm_seeds=(0,))
    assert not default_protocol(confirm=1, confirm_seeds=()).confirms
