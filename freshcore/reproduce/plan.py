"""What to run: one `RunSpec` per trained network, keyed by its whole configuration.

A run's key is a hash of everything that decides its result (data set, method, factor, seed,
architecture, training and model options, teacher). The harness writes one JSON file per finished
run under that key, so a rerun of the same command skips what is done, and two commands that ask
for the same network share it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from typing import Any

COMPRESSED_METHODS = (
    "equivalent",
    "lrd",
    "hashednets",
    "lowfreq",
    "freshnets-uniform",
    "freshnets",
)
ALL_METHODS = ("dense", *COMPRESSED_METHODS)
TABLE_DATASETS = (
    "mnist",
    "mnist-rot",
    "mnist-bg-rand",
    "mnist-bg-img",
    "mnist-bg-img-rot",
    "rectangles",
    "convex",
)
DEFAULT_FACTORS = ("1/16", "1/64")
DENSE_FACTOR = "1"
PROCEDURE = (
    "for each (data set, method, factor) every point of the grid (learning rates by default, "
    "crossed with the method's model alternatives if any) is trained on the tuning seed; the "
    "point with the lowest validation error is kept and the other seeds are trained with it (the "
    "tuning seed's run with that point is its result). Where the protocol has a second stage, "
    "the kept point is also trained with each of the method's refinements (a different budget "
    "split, say) and the best of them on validation is kept instead; each later stage does the "
    "same with its own refinements on top of the choice the stages before it made. Where the "
    "protocol confirms, the few candidates of all stages with the lowest validation error on the "
    "tuning seed are trained on more seeds too and the one with the lowest mean validation error "
    "is kept: one seed's validation error is too noisy to tell close candidates apart. The test "
    "split is never used to choose."
)


def factor_value(factor: str) -> float:
    """'1/64' -> 0.015625; refuses anything outside (0, 1] with a message naming the value."""
    try:
        value = Fraction(factor)
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"compression factor {factor!r} is not a number like 1/16") from exc
    if not 0 < value <= 1:
        raise ValueError(f"compression factor {factor!r} must lie in (0, 1]")
    return float(value)


def factor_slug(factor: str) -> str:
    return factor.replace("/", "of")


@dataclass
class RunSpec:
    """One network to train and test. Everything here is part of the run's key."""

    dataset: str
    method: str
    factor: str  # "1/16"; "1" for dense
    seed: int
    arch: str = "mnist-cnn"
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    model: dict[str, Any] = field(default_factory=dict)  # build_model keywords (allocation...)
    init: str = "scratch"  # "scratch" | "project" (compress_dense of the teacher)
    teacher: dict[str, Any] | None = None  # the dense RunSpec (as a dict) used by init/distill

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls(**data)

    def key(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return f"{self.dataset}_{self.method}_{factor_slug(self.factor)}_s{self.seed}_{digest}"

    def with_train(self, **overrides: Any) -> RunSpec:
        return replace(self, train={**self.train, **overrides})

    def teacher_spec(self) -> RunSpec | None:
        return RunSpec.from_dict(self.teacher) if self.teacher is not None else None


# build_model keywords a table run may vary; every other key of an override is a TrainConfig field,
# but SCOPE_KEY and DATASETS_KEY, which limit the override to some factors or data sets
# ({"factors": ["1/64"], "datasets": ["mnist"], ...}), and TEACHER_KEY: {"teacher": "dense",
# "distill_alpha": 0.9, ...} distils from the data set's dense cell as validation chose it,
# trained with the run's own seed
MODEL_OPTIONS = ("allocation", "budget_policy", "balanced", "fc_allocation", "width")
SCOPE_KEY = "factors"
DATASETS_KEY = "datasets"
TEACHER_KEY = "teacher"
NOT_TRAINING = (*MODEL_OPTIONS, SCOPE_KEY, DATASETS_KEY, TEACHER_KEY)  # in an override


@dataclass
class Protocol:
    """How every run of a table is trained and how its hyper-parameters are chosen.

    `base` holds the TrainConfig fields every run shares; `grid` the alternatives tried on
    `tune_seed` for each (data set, method, factor); `model_grid` per method, alternatives of
    build_model keywords (a freshnets allocation, say) crossed with `grid`. The candidate with
    the best validation accuracy (ties: the earlier one) is kept and reused for the other seeds;
    the test split never takes part in the choice.

    `refine` is a second stage, cheaper than widening the grid: per method, overrides (build_model
    keywords or training settings, `split_override`) tried on the tuning seed on top of the first
    stage's choice only; an override with a "factors" (or "datasets") list applies at those
    factors (data sets) only, and one with "teacher": "dense" distils from the dense cell's
    choice (`refinements`' teacher).

    `later` holds further stages of the same form, each tried on the choice the stages before it
    made (a larger rate for the first layer on top of the second stage's width, say): one more
    stage costs a run per override, where crossing it into `refine` would multiply them.
    Stage 0 is `refine`, stage i > 0 is ``later[i - 1]``. With `later_top` K > 1 each later
    stage is tried on the K candidates so far with the lowest validation error on the tuning
    seed, not on the choice alone: a runner-up of the stages before (another allocation, say)
    may gain more from the later stage's change than the choice does. K runs per override.

    `confirm` > 1 ends the tuning with a check against the noise of one seed: the `confirm`
    candidates (of all stages) with the lowest validation error on `tune_seed` are each trained
    on `confirm_seeds` too, and the one with the lowest mean validation error over all those
    seeds is the choice. A confirm seed that is also a table seed is shared with the table:
    the choice's run there is its result. With `confirm_distinct` (model options, say
    ["allocation"]) the shortlist takes the best candidate of each distinct value of those
    options before it takes a second of any: a later stage's near-twins of the tuning seed's
    best (its choice with another first-layer rate) would otherwise fill it.
    """

    base: dict[str, Any]
    grid: list[dict[str, Any]]
    tune_seed: int = 0
    device: str = "auto"  # where to train; not part of a run's key (results do not depend on it)
    cuda_graph: bool = False  # on a GPU, TrainConfig.cuda_graph; not part of a run's key either
    model_grid: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    refine: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    later: list[dict[str, list[dict[str, Any]]]] = field(default_factory=list)
    later_top: int = 1  # how many of the best candidates so far each later stage is tried on
    confirm: int = 0  # how many of the best candidates are trained on confirm_seeds (< 2: none)
    confirm_seeds: list[int] = field(default_factory=lambda: [1, 2])
    confirm_distinct: list[str] = field(default_factory=list)  # MODEL_OPTIONS to spread over

    def __post_init__(self) -> None:
        if self.later_top < 1:
            raise ValueError(f"later_top={self.later_top}: a later stage needs a candidate (>= 1)")
        unknown = [o for o in self.confirm_distinct if o not in MODEL_OPTIONS]
        if unknown:
            raise ValueError(
                f"confirm_distinct: {', '.join(map(repr, unknown))} not a model option"
                f" (one of {', '.join(MODEL_OPTIONS)})"
            )
        if self.confirms and not self.confirm_extra:
            raise ValueError(
                f"confirm={self.confirm} needs at least one confirm seed besides the tuning seed"
                f" {self.tune_seed}; got {self.confirm_seeds}"
            )

    @property
    def confirms(self) -> bool:
        """Whether the tuning ends with the check on more seeds."""
        return self.confirm > 1

    @property
    def confirm_extra(self) -> list[int]:
        """The seeds a shortlisted candidate is trained on besides the tuning seed."""
        return [s for s in dict.fromkeys(self.confirm_seeds) if s != self.tune_seed]

    def kind(self, point: dict[str, Any]) -> str:
        """A candidate's values of the `confirm_distinct` options: the shortlist takes one
        candidate of each kind before a second of any."""
        model = point.get("model") or {}
        return json.dumps([model.get(o) for o in self.confirm_distinct], sort_keys=True)

    @property
    def stages(self) -> list[dict[str, list[dict[str, Any]]]]:
        """The stages after the grid, in order: `refine`, then `later`."""
        return [self.refine, *self.later]

    def points(self, method: str) -> list[dict[str, Any]]:
        """The candidates of a method: each grid point, with a "model" entry per alternative."""
        models = self.model_grid.get(method) or [{}]
        return [
            {**point, "model": dict(m)} if m else dict(point) for point in self.grid for m in models
        ]

    def refine_overrides(self, group: Group, stage: int = 0) -> list[dict[str, Any]]:
        """The overrides of a stage (0: the second) that apply to a group: its method's, less
        those scoped to other factors or data sets."""
        return [
            o
            for o in self.stages[stage].get(group.method, [])
            if group.factor in o.get(SCOPE_KEY, [group.factor])
            and group.dataset in o.get(DATASETS_KEY, [group.dataset])
        ]

    def needs_teacher(self, group: Group) -> bool:
        """Whether a stage of a group distils, so waits for its data set's dense choice."""
        return any(
            TEACHER_KEY in o
            for stage in range(len(self.stages))
            for o in self.refine_overrides(group, stage)
        )

    def refinements(
        self,
        group: Group,
        chosen: dict[str, Any],
        teacher: dict[str, Any] | None = None,
        stage: int = 0,
    ) -> list[dict[str, Any]]:
        """The candidates of a stage (0: the second) of a group: the choice so far with each
        override merged in (training settings beside the choice's, model keywords into its
        "model", the dense cell's chosen point ``teacher`` as its "teacher"), leaving out any
        whose run (its key) is the choice's or another's of them."""
        if teacher is None and self.needs_teacher(group):
            raise ValueError(f"{group.name}: a later stage distils, but dense is not chosen")
        out: list[dict[str, Any]] = []
        seen = {group.point_spec(self.tune_seed, self.base, chosen).key()}
        for override in self.refine_overrides(group, stage):
            train, model = split_override(override)
            point = {**chosen, **train}
            if model:
                point["model"] = {**(chosen.get("model") or {}), **model}
            if TEACHER_KEY in override:
                point[TEACHER_KEY] = teacher
            key = group.point_spec(self.tune_seed, self.base, point).key()
            if key not in seen:
                seen.add(key)
                out.append(point)
        return out

    def runs(self, groups: list[Group], seeds: list[int]) -> int:
        """How many runs ``groups`` take at most: every point and refinement of every stage
        on the tuning seed, the confirm check's (a shortlist holds no more than the group's
        candidates: `dense` has two to a check of three), one per other seed."""
        extra = len(self.seeds_after(seeds))
        total = 0
        for g in groups:
            tuning = len(self.points(g.method)) + self.refinement_count(g)
            confirm = min(self.confirm, tuning) * len(self.confirm_extra) if self.confirms else 0
            total += tuning + confirm + extra
        return total

    def seeds_after(self, seeds: list[int]) -> list[int]:
        """The seeds a cell still trains once chosen: the table's, less the tuning seed and
        the confirm seeds (the choice was trained on those by its confirm check)."""
        done = [self.tune_seed, *(self.confirm_extra if self.confirms else [])]
        return [s for s in seeds if s not in done]

    def stage_top(self, stage: int) -> int:
        """How many of the best candidates so far a stage (0: the second) is tried on."""
        return self.later_top if stage > 0 else 1

    def refinement_count(self, group: Group) -> int:
        """How many refinements a group's stages try at most, all stages together."""
        return sum(
            len(self.refine_overrides(group, i)) * self.stage_top(i)
            for i in range(len(self.stages))
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_override(override: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A second-stage override as (TrainConfig overrides, build_model overrides); its scopes
    and teacher are neither."""
    train = {k: v for k, v in override.items() if k not in NOT_TRAINING}
    return train, {k: v for k, v in override.items() if k in MODEL_OPTIONS}


def split_point(point: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A candidate as (TrainConfig overrides, build_model overrides); its teacher is neither."""
    train = {k: v for k, v in point.items() if k not in ("model", TEACHER_KEY)}
    return train, dict(point.get("model") or {})


def default_protocol(
    epochs: int = 6,
    lrs: tuple[float, ...] = (0.05, 0.02),
    max_train_samples: int | None = None,
    device: str = "auto",
    batch_size: int = 64,
    dropouts: tuple[float, ...] = (),
    allocations: tuple[dict[str, Any], ...] = (),
    refine: dict[str, list[dict[str, Any]]] | None = None,
    cuda_graph: bool = False,
    later: list[dict[str, list[dict[str, Any]]]] | None = None,
    confirm: int = 0,
    confirm_seeds: tuple[int, ...] = (1, 2),
    confirm_distinct: tuple[str, ...] = (),
    later_top: int = 1,
) -> Protocol:
    """SGD with momentum and a cosine schedule; the learning rate is the tuned knob, and the
    dropout rate too when ``dropouts`` is given (empty: the architecture's own rate, untuned).
    ``allocations``: freshnets frequency allocations tried with every point (empty: the table's
    one allocation, untuned); the other methods have no allocation to tune. ``refine``: the
    second stage (`Protocol`), none by default; ``later``: the stages after it, none by
    default, each tried on the ``later_top`` best candidates so far; ``confirm``: how many of
    the best candidates are checked on ``confirm_seeds``, spread over the values of the
    ``confirm_distinct`` model options (`Protocol`), none by default."""
    base: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": "sgd",
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "patience": None,
        "augment": False,
        "max_train_samples": max_train_samples,
    }
    grid = (
        [{"lr": lr, "dropout": d} for lr in lrs for d in dropouts]
        if dropouts
        else [{"lr": lr} for lr in lrs]
    )
    model_grid = (
        {"freshnets": [{"allocation": dict(a)} for a in allocations]} if allocations else {}
    )
    return Protocol(
        base=base,
        grid=grid,
        device=device,
        cuda_graph=cuda_graph,
        model_grid=model_grid,
        refine=_copy_stage(refine or {}),
        later=[_copy_stage(stage) for stage in later or []],
        later_top=later_top,
        confirm=confirm,
        confirm_seeds=list(confirm_seeds),
        confirm_distinct=list(confirm_distinct),
    )


def _copy_stage(stage: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """A stage's overrides, copied so a caller's later edits never change the protocol."""
    return {m: [dict(o) for o in overrides] for m, overrides in stage.items()}


def quick_protocol(device: str = "cpu") -> Protocol:
    """Tiny: one epoch on a few hundred samples, one learning rate. Proves the plumbing only."""
    return default_protocol(
        epochs=1, lrs=(0.05,), max_train_samples=600, device=device, batch_size=16
    )


def arch_for(input_shape: tuple[int, ...]) -> str:
    """The preset sized for a data set: colour 32x32 gets cifar-cnn, everything else mnist-cnn."""
    return "cifar-cnn" if input_shape[0] == 3 else "mnist-cnn"


def dataset_archs(datasets: list[str], arch: str | None = None) -> dict[str, str]:
    """The preset of each data set: ``arch`` for all of them (refused with a ValueError naming
    the data set where its shape walk fails, a 7x7 pool on 8x8 digits say), or by input shape."""
    from freshcore.data import get_info
    from freshcore.presets import PRESETS, resolve_spec

    if arch is not None and arch not in PRESETS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(PRESETS)}")
    out = {}
    for name in datasets:
        info = get_info(name)
        shape = tuple(info.input_shape)
        out[name] = arch or arch_for(shape)
        try:
            resolve_spec(out[name], shape, info.num_classes)
        except ValueError as exc:
            raise ValueError(f"{out[name]} does not fit data set {name} {shape}: {exc}") from exc
    return out


@dataclass
class Group:
    """The runs of one table cell: a data set, a method and a factor over several seeds."""

    dataset: str
    method: str
    factor: str
    arch: str
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.method}/{self.factor}"

    def spec(
        self, seed: int, train: dict[str, Any], model: dict[str, Any] | None = None
    ) -> RunSpec:
        """The run of one seed; ``model`` overrides the group's build_model keywords it names."""
        return RunSpec(
            dataset=self.dataset,
            method=self.method,
            factor=self.factor,
            seed=seed,
            arch=self.arch,
            train=dict(train),
            model={**self.model, **(model or {})},
        )

    def point_spec(self, seed: int, base: dict[str, Any], point: dict[str, Any]) -> RunSpec:
        """The run of one seed at a candidate of `Protocol.points` on top of the base training;
        a candidate with a teacher (the dense cell's chosen point) distils from the dense run
        of the same seed."""
        train, model = split_point(point)
        spec = self.spec(seed, {**base, **train}, model)
        if point.get(TEACHER_KEY) is not None:
            dense = Group(self.dataset, "dense", DENSE_FACTOR, self.arch)
            spec.teacher = dense.point_spec(seed, base, point[TEACHER_KEY]).to_dict()
        return spec


BUDGETED_METHODS = ("lrd", "hashednets", "lowfreq", "freshnets-uniform", "freshnets")


def model_options(
    method: str, allocation: dict[str, Any] | None, budget_policy: dict[str, Any] | None
) -> dict[str, Any]:
    """The build_model keywords of a table method, explicit so a changed library default never
    changes what a stored run key means. The budget split across layers applies to every method
    that splits a budget (the same for all, so the comparison stays fair); the frequency
    allocation only to freshnets."""
    out: dict[str, Any] = {}
    if method in BUDGETED_METHODS and budget_policy is not None:
        out["budget_policy"] = dict(budget_policy)
    if method == "freshnets" and allocation is not None:
        out["allocation"] = dict(allocation)
    return out


def table_groups(
    datasets: list[str],
    methods: list[str],
    factors: list[str],
    archs: dict[str, str],
    allocation: dict[str, Any] | None = None,
    budget_policy: dict[str, Any] | None = None,
) -> list[Group]:
    """Dense once per data set (its factor is 1), every other method at every factor."""
    for method in methods:
        if method not in ALL_METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")
    for factor in factors:
        factor_value(factor)
    groups: list[Group] = []
    for dataset in datasets:
        for method in methods:
            for factor in [DENSE_FACTOR] if method == "dense" else factors:
                model = model_options(method, allocation, budget_policy)
                groups.append(Group(dataset, method, factor, archs[dataset], model))
    return groups


def unreachable(groups: list[Group]) -> dict[str, str]:
    """Cell name -> why, for the groups whose method cannot store their factor of their network
    (`freshcore.UnreachableCompression`): the table leaves them out and prints the reason."""
    import freshcore
    from freshcore.data import get_info

    out = {}
    for group in groups:
        info = get_info(group.dataset)
        try:
            freshcore.build_model(
                group.arch,
                method=group.method,
                compression=factor_value(group.factor),
                input_shape=tuple(info.input_shape),
                num_classes=info.num_classes,
                **group.model,
            )
        except freshcore.UnreachableCompression as exc:
            out[group.name] = str(exc)
    return out
