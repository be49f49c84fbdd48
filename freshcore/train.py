"""The training loop: SGD/Adam, schedules, early stopping, distillation, exact resume.

Works with any ``nn.Module`` whose forward takes ``(N, C, H, W)`` floats in [0, 1]; a model with
``set_normalization(mean, std)`` gets the data set's statistics, and one with ``materialize()`` is
materialised for every evaluation. The data set is any object with ``x_train, y_train, x_val,
y_val, x_test, y_test`` tensors and per-channel ``mean``/``std`` lists (``freshcore.data.Dataset``).

The tensors live in memory, so batches are index permutations of them (no DataLoader). Everything
random in an epoch (the order, the augmentation, dropout) is a pure function of (seed, epoch), and
the learning rate is a pure function of the step, so a checkpoint only has to hold the weights and
the optimizer's state for a resumed run to end with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

CHECKPOINT_FORMAT = "freshnets-train-checkpoint"
CHECKPOINT_VERSION = 1
_META_KEY = "freshnets_checkpoint"
_DEFAULT_LR = {"sgd": 0.02, "adam": 1e-3}
_NAN_CHECK_EVERY = 32  # batches between host syncs that look for a non-finite loss


class TrainConfigError(ValueError):
    """A bad training setting; ``field`` names it so an API can point at it."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"TrainConfig.{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


class TrainingError(RuntimeError):
    """Training cannot go on (the loss became NaN or infinite)."""

    def __init__(self, message: str, *, epoch: int | None = None, batch: int | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.batch = batch


class CheckpointError(ValueError):
    """A checkpoint that is malformed or belongs to another model, optimizer or data set."""


@dataclass
class TrainConfig:
    """How to train. ``lr=None`` picks 0.02 for SGD and 1e-3 for Adam (AdamW-style decay)."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" (momentum, Nesterov) | "adam" (decoupled weight decay)
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # not applied to biases and normalisation parameters
    schedule: str = "cosine"  # "cosine" | "step" | "none", per step after the warm-up
    warmup_epochs: int = 0  # linear warm-up from lr / warm-up steps
    step_size: int | None = None  # "step": epochs between decays (None: a third of the run)
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    dropout: float | None = None  # rate for every dropout layer (None: the architecture's own)
    max_grad_norm: float | None = 5.0  # clip the global gradient norm (None: no clipping)
    patience: int | None = None  # epochs without a better validation accuracy before stopping
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when available) | "cpu" | "cuda"
    distill_alpha: float = 0.5  # weight of the teacher's soft targets (only with a teacher)
    distill_temperature: float = 4.0
    max_train_samples: int | None = None  # a fixed random subset of the training split
    augment: bool = False  # random shifts (zero padding + crop)
    augment_shift: int = 2  # pixels
    augment_flip: bool = False  # random horizontal flips (for natural images, not digits)
    eval_batch_size: int = 1024
    num_threads: int | None = None  # torch.set_num_threads for the run (None: leave it)
    # replay full batches' forward and backward as one CUDA graph (no effect on the CPU)
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else _DEFAULT_LR[self.optimizer]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from JSON-like input, refusing unknown fields and wrong types by name."""
        if not isinstance(data, Mapping):
            raise TrainConfigError("<root>", f"expected a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise TrainConfigError(
                    str(key), f"unknown field (known: {', '.join(sorted(known))})"
                )
        for key, value in data.items():
            _check_type(key, value)
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_INT_FIELDS = {"epochs", "batch_size", "warmup_epochs", "seed", "augment_shift", "eval_batch_size"}
_OPTIONAL_INT_FIELDS = {"step_size", "patience", "max_train_samples", "num_threads"}
_FLOAT_FIELDS = {
    "momentum",
    "weight_decay",
    "step_gamma",
    "label_smoothing",
    "distill_alpha",
    "distill_temperature",
}
_BOOL_FIELDS = {"nesterov", "augment", "augment_flip", "cuda_graph"}
_CHOICES = {
    "optimizer": ("sgd", "adam"),
    "schedule": ("cosine", "step", "none"),
    "device": ("auto", "cpu", "cuda"),
}


def _check_type(name: str, value: Any) -> None:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = (is_int or isinstance(value, float)) and not isinstance(value, bool)
    if name in _INT_FIELDS and not is_int:
        raise TrainConfigError(name, f"must be an integer, got {value!r}")
    if name in _OPTIONAL_INT_FIELDS and value is not None and not is_int:
        raise TrainConfigError(name, f"must be an integer or null, got {value!r}")
    if name in _FLOAT_FIELDS and not is_number:
        raise TrainConfigError(name, f"must be a number, got {value!r}")
    if name in ("lr", "max_grad_norm", "dropout") and value is not None and not is_number:
        raise TrainConfigError(name, f"must be a number or null, got {value!r}")
    if name in _BOOL_FIELDS and not isinstance(value, bool):
        raise TrainConfigError(name, f"must be true or false, got {value!r}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise TrainConfigError(name, f"must be one of {', '.join(_CHOICES[name])}, got {value!r}")


def _validate(c: TrainConfig) -> None:
    for f in fields(c):
        _check_type(f.name, getattr(c, f.name))

    def need(ok: bool, name: str, reason: str) -> None:
        if not ok:
            raise TrainConfigError(name, f"{reason}, got {getattr(c, name)!r}")

    need(1 <= c.epochs <= 100_000, "epochs", "must be between 1 and 100000")
    need(c.batch_size >= 1, "batch_size", "must be at least 1")
    need(c.eval_batch_size >= 1, "eval_batch_size", "must be at least 1")
    need(c.lr is None or (math.isfinite(c.lr) and c.lr > 0), "lr", "must be a positive number")
    need(0 <= c.momentum < 1, "momentum", "must be in [0, 1)")
    need(
        c.max_grad_norm is None or (math.isfinite(c.max_grad_norm) and c.max_grad_norm > 0),
        "max_grad_norm",
        "must be a positive number or null",
    )
    need(math.isfinite(c.weight_decay) and c.weight_decay >= 0, "weight_decay", "must be >= 0")
    need(0 <= c.warmup_epochs < c.epochs, "warmup_epochs", "must be >= 0 and below epochs")
    need(c.step_size is None or c.step_size >= 1, "step_size", "must be at least 1")
    need(0 < c.step_gamma <= 1, "step_gamma", "must be in (0, 1]")
    need(0 <= c.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
    need(c.dropout is None or 0 <= c.dropout < 1, "dropout", "must be in [0, 1) or null")
    need(c.patience is None or c.patience >= 1, "patience", "must be at least 1 or null")
    need(0 <= c.seed < 2**63, "seed", "must be a non-negative 63-bit integer")
    need(0 <= c.distill_alpha <= 1, "distill_alpha", "must be in [0, 1]")
    need(
        math.isfinite(c.distill_temperature) and c.distill_temperature > 0,
        "distill_temperature",
        "must be a positive number",
    )
    need(
        c.max_train_samples is None or c.max_train_samples >= 1,
        "max_train_samples",
        "must be at least 1 or null",
    )
    need(0 <= c.augment_shift <= 16, "augment_shift", "must be between 0 and 16 pixels")
    need(c.num_threads is None or c.num_threads >= 1, "num_threads", "must be at least 1 or null")
    need(not (c.cuda_graph and c.device == "cpu"), "cuda_graph", "needs device 'cuda' or 'auto'")


@dataclass
class EpochMetrics:
    """One finished epoch. ``train_loss`` is the objective (smoothing, distillation included);
    ``val_loss`` is plain cross-entropy. Epochs count from 1."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """``stopped``: a callback or ``should_stop`` ended the run; ``early_stopped``: patience did.
    ``seconds`` is this call's wall time (a resumed run's earlier epochs are in ``history``)."""

    history: list[EpochMetrics]
    best_epoch: int
    test_loss: float
    test_accuracy: float
    stopped: bool
    seconds: float
    early_stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Split:
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class _State:
    """What the loop carries from epoch to epoch (and what a checkpoint restores)."""

    epoch: int = 0
    history: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int = 0
    best_accuracy: float = -1.0
    best_loss: float = math.inf
    best_weights: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    early_stopped: bool = False


def _derive_seed(seed: int, epoch: int, stream: int) -> int:
    """A distinct, well-mixed 63-bit seed per (seed, epoch, stream) (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) & (
        2**64 - 1
    )
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) & (2**63 - 1)


def resolve_device(name: str) -> torch.device:
    """ "auto" -> CUDA when available else CPU; "cuda" without CUDA is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError("device", "is 'cuda' but CUDA is not available on this machine")
    return torch.device(name)


def learning_rate_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The rate of optimizer step ``step`` (0-based): a pure function, so resume is exact."""
    base = config.effective_lr
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return base * (step + 1) / warmup
    if config.schedule == "none":
        return base
    if config.schedule == "step":
        size = config.step_size or max(1, config.epochs // 3)
        return base * config.step_gamma ** (step // steps_per_epoch // size)
    total = config.epochs * steps_per_epoch - warmup
    return base * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total)))


def _get_split(dataset: Any, name: str) -> _Split:
    x, y = getattr(dataset, f"x_{name}", None), getattr(dataset, f"y_{name}", None)
    if x is None or y is None:
        raise ValueError(f"dataset has no x_{name}/y_{name}")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.ndim != 4:
        raise ValueError(f"dataset x_{name} must be (N, C, H, W), got shape {tuple(x.shape)}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"dataset y_{name} must be ({len(x)},) labels, got {tuple(y.shape)}")
    if len(x) == 0:
        raise ValueError(f"dataset split {name} is empty")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"dataset y_{name} must hold integer labels, got {y.dtype}")
    return _Split(x.float(), y.long())


def _load_splits(dataset: Any, config: TrainConfig) -> dict[str, _Split]:
    splits = {name: _get_split(dataset, name) for name in ("train", "val", "test")}
    train = splits["train"]
    if config.max_train_samples is not None and config.max_train_samples < len(train.y):
        gen = torch.Generator().manual_seed(_derive_seed(config.seed, 0, 3))
        keep = torch.randperm(len(train.y), generator=gen)[: config.max_train_samples].sort().values
        splits["train"] = _Split(train.x[keep], train.y[keep])
    shape = tuple(train.x.shape[1:])
    for name, split in splits.items():
        if tuple(split.x.shape[1:]) != shape:
            raise ValueError(f"dataset x_{name} has images {tuple(split.x.shape[1:])}, not {shape}")
    return splits


def _check_model_fits(model: nn.Module, splits: dict[str, _Split], device: torch.device) -> int:
    """Run one image through the model (in eval mode: no statistics move) and check the labels."""
    model.eval()
    try:
        with torch.no_grad():
            out = model(splits["train"].x[:1].to(device))
    except RuntimeError as exc:
        shape = tuple(splits["train"].x.shape[1:])
        raise ValueError(f"the model cannot take this data set's images {shape}: {exc}") from exc
    if out.ndim != 2:
        raise ValueError(f"the model must return (N, classes) logits, got {tuple(out.shape)}")
    classes = out.shape[1]
    for name, split in splits.items():
        low, high = int(split.y.min()), int(split.y.max())
        if low < 0 or high >= classes:
            raise ValueError(
                f"dataset y_{name} has labels in [{low}, {high}] "
                f"but the model has {classes} outputs"
            )
    return classes


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on weights and buckets, not on biases or normalisation parameters."""
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    no_decay = {id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters()}
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if id(p) in no_decay or name.endswith("bias") else decay).append(p)
    groups = [
        {"params": params, "weight_decay": wd}
        for params, wd in ((decay, config.weight_decay), (plain, 0.0))
        if params
    ]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    lr = config.effective_lr
    # foreach: one fused call per group instead of a Python loop over tensors (CPU too)
    if config.optimizer == "adam":
        return torch.optim.AdamW(groups, lr=lr, foreach=True)
    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        foreach=True,
    )


def _augment(x: torch.Tensor, gen: torch.Generator, shift: int, flip: bool) -> torch.Tensor:
    """Random per-image shifts by up to ``shift`` pixels (zero padding) and optional h-flips."""
    n, c, h, w = x.shape
    if shift > 0:
        dy = torch.randint(0, 2 * shift + 1, (n, 1), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * shift + 1, (n, 1), generator=gen).to(x.device)
        padded = F.pad(x, (shift, shift, shift, shift))
        rows = (torch.arange(h, device=x.device) + dy)[:, None, :, None]
        cols = (torch.arange(w, device=x.device) + dx)[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode (materialised when the model can)."""
    model.eval()
    if callable(getattr(model, "materialize", None)):
        model.materialize()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, len(y), batch_size):
        xb = x[start : start + batch_size].to(device, non_blocking=True)
        yb = y[start : start + batch_size].to(device, non_blocking=True)
        logits = model(xb)
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    return loss_sum.item() / len(y), correct.item() / len(y)


@torch.no_grad()
def _teacher_logits(teacher: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The teacher's logits in eval mode (it stays there for the per-batch calls)."""
    teacher.eval()
    if callable(getattr(teacher, "materialize", None)):
        teacher.materialize()
    return torch.cat([teacher(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])


def _backward(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    soft: torch.Tensor | None,
    config: TrainConfig,
    trained: list[nn.Parameter],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward and gradient clipping of one batch: the logits and the loss."""
    logits = model(x)
    loss = _objective(logits, y, soft, config)
    loss.backward()
    if config.max_grad_norm is not None:
        nn.utils.clip_grad_norm_(trained, config.max_grad_norm, foreach=True)
    return logits, loss


class _GraphedBackward:
    """`_backward` of full batches captured once as a CUDA graph, then replayed: one launch for
    the hundreds of small kernels that rebuild hashed filters, which otherwise dominate a small
    network's step on a GPU. The optimizer step stays outside, eager, because the learning rate
    changes every step. The first batches run eagerly on a side stream before the capture, as
    PyTorch's recipe asks (lazy cuBLAS and cuDNN set-up); they are ordinary training steps.
    Replays overwrite the gradients the capture allocated, so those are never set to None."""

    WARMUP = 3

    def __init__(self, model: nn.Module, config: TrainConfig, trained: list[nn.Parameter]) -> None:
        self.model, self.config, self.trained = model, config, trained
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warmup = self.WARMUP
        self.inputs: list[torch.Tensor] = []
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(
        self, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
        soft: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        batch = [t for t in (x, y, soft) if t is not None]
        if self.graph is not None:
            for static, t in zip(self.inputs, batch, strict=True):
                static.copy_(t)
            self.graph.replay()
            assert self.outputs is not None
            return self.outputs
        optimizer.zero_grad(set_to_none=True)
        if self.warmup > 0:
            self.warmup -= 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            # the last warm-up step refuses host syncs, which a capture cannot hold: caught
            # here, before a failed capture would leave the CUDA generator mid-capture
            checking, mode = self.warmup == 0, torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error" if checking else mode)
            try:
                with torch.cuda.stream(side):
                    out = _backward(self.model, x, y, soft, self.config, self.trained)
            except RuntimeError as exc:
                if not checking:
                    raise
                raise TrainConfigError(
                    "cuda_graph", f"the training step fails with host syncs refused ({exc})"
                ) from exc
            finally:
                torch.cuda.set_sync_debug_mode(mode)
            torch.cuda.current_stream().wait_stream(side)
            return out
        torch.cuda.synchronize()
        self.inputs = [t.clone() for t in batch]
        sx, sy = self.inputs[0], self.inputs[1]
        ssoft = self.inputs[2] if soft is not None else None
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.outputs = _backward(self.model, sx, sy, ssoft, self.config, self.trained)
        except RuntimeError as exc:
            raise TrainConfigError(
                "cuda_graph", f"this model's training step cannot be captured ({exc}); set it false"
            ) from exc
        self.graph = graph
        graph.replay()  # the capture recorded the kernels without running them
        return self.outputs


def _objective(
    logits: torch.Tensor,
    y: torch.Tensor,
    soft: torch.Tensor | None,
    config: TrainConfig,
) -> torch.Tensor:
    hard = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
    if soft is None:
        return hard
    t, a = config.distill_temperature, config.distill_alpha
    kl = F.kl_div(
        F.log_softmax(logits / t, dim=1),
        F.log_softmax(soft / t, dim=1),
        log_target=True,
        reduction="batchmean",
    )
    return (1 - a) * hard + a * t * t * kl


def train(
    model: nn.Module,
    dataset: Any,
    config: TrainConfig | Mapping[str, Any] | None = None,
    on_epoch: Callable[[EpochMetrics, Callable[[], bytes]], bool | None] | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    teacher: nn.Module | None = None,
    resume: bytes | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``dataset``; restore its best-validation weights; test them.

    ``on_epoch(metrics, checkpoint)`` runs after each epoch; ``checkpoint()`` (call it inside the
    callback) returns the run's state as safetensors bytes that ``resume`` continues from, and a
    True return stops the run. ``should_stop()`` is polled before every batch (cancel: the
    unfinished epoch is dropped). ``on_batch(done, total)`` counts the batches of the current
    epoch. With a ``teacher``, the loss mixes in its softened outputs (knowledge distillation).
    The model ends in eval mode on the device it came from.
    """
    started = time.perf_counter()
    if config is None:
        config = TrainConfig()
    elif isinstance(config, Mapping):
        config = TrainConfig.from_dict(config)
    if teacher is model:
        raise ValueError("the teacher must be a different model from the student")
    device = resolve_device(config.device)
    splits = _load_splits(dataset, config)
    params = list(model.parameters())
    home = params[0].device if params else torch.device("cpu")
    if callable(getattr(model, "set_normalization", None)):
        if getattr(dataset, "mean", None) is None or getattr(dataset, "std", None) is None:
            raise ValueError("dataset has no per-channel mean/std for the model's normalisation")
        model.set_normalization(list(dataset.mean), list(dataset.std))
    if config.dropout is not None:  # a small compressed network may train better without it
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = config.dropout
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    teacher_home = teacher_training = None
    if teacher is not None:
        teacher_params = list(teacher.parameters())
        teacher_home = teacher_params[0].device if teacher_params else None
        teacher_training = teacher.training
    rng_devices = [device.index or torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        model.to(device)
        splits = {k: _Split(s.x.to(device), s.y.to(device)) for k, s in splits.items()}
        classes = _check_model_fits(model, splits, device)
        optimizer = _make_optimizer(model, config)
        state = _State()
        if resume is not None:
            _restore(resume, model, optimizer, state, config, len(splits["train"].y))
        soft_all = None
        if teacher is not None and config.distill_alpha > 0:
            teacher.to(device)
            # unaugmented targets never change: one pass instead of one per batch
            probe = splits["train"].x if not config.augment else splits["train"].x[:1]
            soft_all = _teacher_logits(teacher, probe, config.eval_batch_size)
            if soft_all.ndim != 2 or soft_all.shape[1] != classes:
                raise ValueError(
                    f"the teacher returns {tuple(soft_all.shape[1:])} outputs per image, "
                    f"the student {classes}"
                )
            if config.augment:
                soft_all = None

        with torch.random.fork_rng(devices=rng_devices):
            stopped = _run_epochs(
                model,
                optimizer,
                splits,
                config,
                state,
                teacher if config.distill_alpha > 0 else None,
                soft_all,
                on_epoch,
                should_stop,
                on_batch,
            )
        if state.best_weights is not None:
            model.load_state_dict(state.best_weights)
        test_loss, test_accuracy = evaluate(
            model, splits["test"].x, splits["test"].y, config.eval_batch_size
        )
    finally:
        torch.set_num_threads(threads)
        model.to(home)
        model.eval()
        if teacher is not None:
            if teacher_home is not None:
                teacher.to(teacher_home)
            teacher.train(bool(teacher_training))
    return TrainResult(
        history=list(state.history),
        best_epoch=state.best_epoch,
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        stopped=stopped,
        seconds=time.perf_counter() - started,
        early_stopped=state.early_stopped,
    )


def _run_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    splits: dict[str, _Split],
    config: TrainConfig,
    state: _State,
    teacher: nn.Module | None,
    soft_all: torch.Tensor | None,
    on_epoch: Callable[[EpochMetrics, Callable[[], bytes]], bool | None] | None,
    should_stop: Callable[[], bool] | None,
    on_batch: Callable[[int, int], None] | None,
) -> bool:
    """The epochs after ``state.epoch``; True when a callback or ``should_stop`` stopped them."""
    train_set = splits["train"]
    n = len(train_set.y)
    bs = min(config.batch_size, n)
    steps = math.ceil(n / bs)
    if steps > 1 and n % bs == 1:
        steps -= 1  # a batch of one breaks batch norm; the image comes back in other epochs
    device = train_set.x.device
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    use_graph = config.cuda_graph and device.type == "cuda"  # "auto" without CUDA: eager
    graphed = _GraphedBackward(model, config, trained) if use_graph else None
    while state.epoch < config.epochs and not state.early_stopped:
        epoch = state.epoch + 1
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(_derive_seed(config.seed, epoch, 1))
        _seed_global_rng(_derive_seed(config.seed, epoch, 2), device)  # dropout and friends
        order = torch.randperm(n, generator=gen).to(device)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        bad_batch = torch.full((), -1, device=device, dtype=torch.long)
        seen = 0
        lr = config.effective_lr
        for b in range(steps):
            if should_stop is not None and should_stop():
                return True
            idx = order[b * bs : (b + 1) * bs]
            x, y = train_set.x.index_select(0, idx), train_set.y.index_select(0, idx)
            if config.augment:
                x = _augment(x, gen, config.augment_shift, config.augment_flip)
            lr = learning_rate_at(config, (epoch - 1) * steps + b, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            soft = None
            if soft_all is not None:
                soft = soft_all.index_select(0, idx)
            elif teacher is not None:
                with torch.no_grad():
                    soft = teacher(x).float()
            if graphed is not None and len(y) == bs:
                logits, loss = graphed(optimizer, x, y, soft)
            else:  # a graph's gradients stay allocated: zeroed, not dropped
                optimizer.zero_grad(set_to_none=graphed is None or graphed.graph is None)
                logits, loss = _backward(model, x, y, soft, config, trained)
            optimizer.step()
            with torch.no_grad():
                loss = loss.detach()
                loss_sum += loss * len(y)
                correct += (logits.argmax(1) == y).sum()
                bad_batch = torch.where((bad_batch < 0) & ~torch.isfinite(loss), b, bad_batch)
            seen += len(y)
            if (b + 1) % _NAN_CHECK_EVERY == 0 or b == steps - 1:
                _raise_if_diverged(bad_batch, epoch, steps)
            if on_batch is not None:
                on_batch(b + 1, steps)
        val_loss, val_accuracy = evaluate(
            model, splits["val"].x, splits["val"].y, config.eval_batch_size
        )
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=loss_sum.item() / seen,
            train_accuracy=correct.item() / seen,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            learning_rate=lr,
            seconds=time.perf_counter() - t0,
        )
        state.epoch = epoch
        state.history.append(metrics)
        better = val_accuracy > state.best_accuracy or (
            val_accuracy == state.best_accuracy and val_loss < state.best_loss
        )
        if better:
            state.best_epoch, state.best_accuracy, state.best_loss = epoch, val_accuracy, val_loss
            state.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            state.bad_epochs = 0
        else:
            state.bad_epochs += 1
        if config.patience is not None and state.bad_epochs >= config.patience:
            state.early_stopped = True
        if on_epoch is not None:
            snapshot = _Snapshot(model, optimizer, state, config, n)
            try:
                if on_epoch(metrics, snapshot) is True:
                    return True
            finally:
                snapshot.live = False
    return False


def _seed_global_rng(seed: int, device: torch.device) -> None:
    """Seed the generators this run draws from (CPU, and its own GPU), no other device's."""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _raise_if_diverged(bad_batch: torch.Tensor, epoch: int, steps: int) -> None:
    b = int(bad_batch)
    if b >= 0:
        raise TrainingError(
            f"loss became NaN or infinite at epoch {epoch} batch {b + 1} of {steps}; "
            "try a lower learning rate",
            epoch=epoch,
            batch=b + 1,
        )


# --- checkpoints: safetensors tensors + JSON metadata in the header, no pickle ---------------


class _Snapshot:
    """The ``checkpoint`` handed to ``on_epoch``: valid only while the callback runs, because
    afterwards the model moves on (a later call would mix two epochs)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: _State,
        config: TrainConfig,
        train_samples: int,
    ) -> None:
        self.args = (model, optimizer, state, config, train_samples)
        self.live = True

    def __call__(self) -> bytes:
        if not self.live:
            raise RuntimeError("checkpoint() can only be called inside the on_epoch callback")
        return _checkpoint_bytes(*self.args)


def _model_identity(model: nn.Module) -> dict[str, Any]:
    ident: dict[str, Any] = {"class": type(model).__name__}
    for attr in ("method", "compression", "seed"):
        value = getattr(model, attr, None)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            ident[attr] = value
    return ident


def _to_cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True).contiguous()


def _checkpoint_bytes(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: _State,
    config: TrainConfig,
    train_samples: int,
) -> bytes:
    tensors = {f"model/{k}": _to_cpu(v) for k, v in model.state_dict().items()}
    best_is_current = state.best_epoch == state.epoch
    if state.best_weights is not None and not best_is_current:
        tensors.update({f"best/{k}": _to_cpu(v) for k, v in state.best_weights.items()})
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = _to_cpu(value)
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": state.epoch,
        "history": [m.to_dict() for m in state.history],
        "best_epoch": state.best_epoch,
        "best_accuracy": state.best_accuracy,
        "best_loss": state.best_loss if math.isfinite(state.best_loss) else None,
        "best_is_current": best_is_current,
        "bad_epochs": state.bad_epochs,
        "early_stopped": state.early_stopped,
        "train_samples": train_samples,
        "model": _model_identity(model),
        "optimizer": {
            "type": config.optimizer,
            "group_sizes": [len(g["params"]) for g in opt["param_groups"]],
            "state_scalars": scalars,
        },
        "config": config.to_dict(),
    }
    return st_save(tensors, metadata={_META_KEY: json.dumps(meta)})


def read_checkpoint_metadata(data: bytes) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (epoch, history, config, ...), without loading tensors."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CheckpointError(f"a checkpoint is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 8:
        raise CheckpointError("checkpoint is truncated (no safetensors header)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8 or size > 100_000_000:
        raise CheckpointError("checkpoint is truncated or not a safetensors file")
    try:
        header = json.loads(data[8 : 8 + size])
        meta = json.loads(header["__metadata__"][_META_KEY])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError("not a FreshNets training checkpoint (no metadata)") from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError("not a FreshNets training checkpoint (wrong format tag)")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint version {meta.get('version')!r} is not supported "
            f"(this build reads version {CHECKPOINT_VERSION})"
        )
    return meta


def _restore(
    data: bytes,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: _State,
    config: TrainConfig,
    train_samples: int,
) -> None:
    meta = read_checkpoint_metadata(data)
    try:
        tensors = st_load(bytes(data))
    except Exception as exc:  # the Rust reader raises its own error type
        raise CheckpointError(f"checkpoint tensors cannot be read: {exc}") from exc
    try:
        _restore_checked(meta, tensors, model, optimizer, state, config, train_samples)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint metadata is malformed: {exc!r}") from exc


def _restore_checked(
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: _State,
    config: TrainConfig,
    train_samples: int,
) -> None:
    ident, saved_ident = _model_identity(model), meta["model"]
    for key, value in ident.items():
        if key in saved_ident and saved_ident[key] != value:
            raise CheckpointError(
                f"checkpoint is from another model: {key} {saved_ident[key]!r}, not {value!r}"
            )
    own = model.state_dict()
    for prefix in ("model/", "best/"):
        names = {k[len(prefix) :] for k in tensors if k.startswith(prefix)}
        if prefix == "best/" and (not names or meta["best_is_current"]):
            continue
        missing, extra = sorted(set(own) - names), sorted(names - set(own))
        if missing or extra:
            raise CheckpointError(
                "checkpoint is from another model: "
                + (f"missing {', '.join(missing[:5])}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unexpected {', '.join(extra[:5])}" if extra else "")
            )
        for k, v in own.items():
            if tuple(tensors[prefix + k].shape) != tuple(v.shape):
                raise CheckpointError(
                    f"checkpoint is from another model: {k} has shape "
                    f"{tuple(tensors[prefix + k].shape)}, this model {tuple(v.shape)}"
                )
    if meta["optimizer"]["type"] != config.optimizer:
        raise CheckpointError(
            f"checkpoint was trained with optimizer {meta['optimizer']['type']!r}, "
            f"the config asks for {config.optimizer!r}"
        )
    if meta["train_samples"] != train_samples:
        raise CheckpointError(
            f"checkpoint was trained on {meta['train_samples']} samples, "
            f"this data set gives {train_samples}"
        )
    opt = optimizer.state_dict()
    if [len(g["params"]) for g in opt["param_groups"]] != meta["optimizer"]["group_sizes"]:
        raise CheckpointError("checkpoint optimizer state does not fit this model's parameters")
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["optimizer"]["state_scalars"].items():
        opt_state.setdefault(int(idx), {}).update(entry)
    model.load_state_dict({k: tensors[f"model/{k}"] for k in own})
    optimizer.load_state_dict({"state": opt_state, "param_groups": opt["param_groups"]})
    state.epoch = int(meta["epoch"])
    state.history = [EpochMetrics(**m) for m in meta["history"]]
    state.best_epoch = int(meta["best_epoch"])
    state.best_accuracy = float(meta["best_accuracy"])
    state.best_loss = math.inf if meta["best_loss"] is None else float(meta["best_loss"])
    state.bad_epochs = int(meta["bad_epochs"])
    state.early_stopped = bool(meta["early_stopped"])
    if state.best_epoch == 0:
        state.best_weights = None
    elif meta["best_is_current"]:
        state.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        device = {k: v.device for k, v in own.items()}
        state.best_weights = {k: tensors[f"best/{k}"].to(device[k]) for k in own}
