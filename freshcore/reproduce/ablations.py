"""Ablations around the FreshNets defaults: one knob changed at a time, same data, same seeds.

Knobs: the allocation shape across frequency bands and its parameter, the budget split between
conv filters and fc weights, float16 buckets, distillation from the dense network of the table,
and initialisation by projecting that trained dense network onto the buckets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from freshcore.reproduce.plan import TEACHER_KEY, RunSpec, split_point
from freshcore.reproduce.runner import RunStore, dense_teacher


@dataclass
class Ablation:
    """One variant: what it changes relative to the default freshnets run of the table."""

    name: str
    knob: str  # the group it belongs to in the report: allocation, budget, float16...
    method: str = "freshnets"
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    init: str = "scratch"
    teacher: bool = False
    metric: str = "test_error"  # "test_error_fp16": the same run, buckets stored as float16
    lr_scale: float = 1.0  # times the table's chosen learning rate


def default_ablations() -> list[Ablation]:
    exp = [0.25, 0.5, 1.0, 2.0]
    betas = [(1.0, 1.0), (1.0, 2.0), (1.0, 4.0), (2.0, 2.0)]
    out = [Ablation("default", "reference")]
    out.append(Ablation("uniform", "allocation", model={"allocation": {"shape": "uniform"}}))
    out += [
        Ablation(
            f"exponential decay={d:g}",
            "allocation",
            model={"allocation": {"shape": "exponential", "decay": d}},
        )
        for d in exp
    ]
    out += [
        Ablation(
            f"beta a={a:g} b={b:g}",
            "allocation",
            model={"allocation": {"shape": "beta", "a": a, "b": b}},
        )
        for a, b in betas
    ]
    out += [
        Ablation(
            f"conv-boost x{c:g}",
            "budget",
            model={"budget_policy": {"kind": "conv-boost", "conv_factor": c}},
        )
        for c in (2.0, 4.0, 16.0)
    ]
    out += [
        Ablation(
            f"hashednets conv-boost x{c:g}",
            "budget",
            method="hashednets",
            model={"budget_policy": {"kind": "conv-boost", "conv_factor": c}},
        )
        for c in (4.0,)
    ]
    out.append(Ablation("float16 buckets", "float16", metric="test_error_fp16"))
    out.append(Ablation("augment shifts", "training", train={"augment": True}))
    out += [
        Ablation(
            f"distill alpha={a:g} T=4 lr/2",
            "distillation",
            train={"distill_alpha": a, "distill_temperature": 4.0},
            teacher=True,
            lr_scale=0.5,  # the soft-target term diverged at the table's rate in the probe
        )
        for a in (0.5, 0.9)
    ]
    out.append(Ablation("project dense", "initialisation", init="project", teacher=True))
    return out


def quick_ablations() -> list[Ablation]:
    """Enough variants to touch every code path (allocation, fp16, teacher, projection)."""
    by_name = {a.name: a for a in default_ablations()}
    names = ["default", "uniform", "float16 buckets", "distill alpha=0.5 T=4 lr/2", "project dense"]
    return [by_name[n] for n in names]


def ablation_spec(
    ablation: Ablation,
    dataset: str,
    factor: str,
    seed: int,
    store: RunStore,
    fallback_train: dict[str, Any],
    arch: str,
    base_model: dict[str, Any] | None = None,
) -> RunSpec:
    """The run for one variant: the table's chosen freshnets training (or the fallback) and
    model options (``base_model``, then what the table chose), with the variant's knob changed.

    A teacher (the variant's, or the table's choice distils) is the table's dense run for the
    same data set and seed (the fallback training if the table has not chosen one yet).
    """
    entry = store.selection().get(f"{dataset}/freshnets/{factor}")
    train, chosen_model = dict(fallback_train), {}
    if entry:
        chosen_train, chosen_model = split_point(entry["chosen"])
        train = {**entry["base"], **chosen_train}
    teacher = None
    if ablation.teacher or (entry and entry["chosen"].get(TEACHER_KEY) is not None):
        teacher_spec = dense_teacher(store, dataset, seed) or RunSpec(
            dataset, "dense", "1", seed, arch, train=dict(fallback_train)
        )
        teacher = teacher_spec.to_dict()
    if ablation.lr_scale != 1.0 and train.get("lr") is not None:
        train = {**train, "lr": train["lr"] * ablation.lr_scale}
    return RunSpec(
        dataset=dataset,
        method=ablation.method,
        factor=factor,
        seed=seed,
        arch=arch,
        train={**train, **ablation.train},
        model={**(base_model or {}), **chosen_model, **ablation.model},
        init=ablation.init,
        teacher=teacher,
    )
