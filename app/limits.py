"""Limits the API and the worker both apply, built from the settings in one place.

Outside the HTTP layer on purpose: the worker imports this module, never `app.api`.
"""

import os
from typing import Any

import freshcore
from app.settings import Settings
from freshcore import data as fdata
from freshcore.build import parse_allocation, parse_budget_policy, parse_width, plan_layers


def upload_limits(settings: Settings) -> fdata.UploadLimits:
    """The bounds an uploaded `.npz` is checked against, at upload and again when a job reads it.

    The per-image bounds (side, channels, classes) are freshcore's own defaults.
    """
    return fdata.UploadLimits(
        max_bytes=settings.max_upload_bytes, max_samples=settings.max_dataset_samples
    )


def max_train_threads(settings: Settings) -> int:
    """The most torch threads a job may ask for: the setting, else this machine's cores."""
    return settings.max_train_threads or os.cpu_count() or 1


def expected_model_bytes(
    spec: freshcore.ArchitectureSpec,
    method: str,
    compression: float,
    seed: int = 0,
    allocation: Any = None,
    budget_policy: Any = None,
    width: float = 1.0,
) -> int:
    """The trained model's tensor bytes (4 per stored value), without building the model.

    freshcore's plan (with the job's allocation, budget policy and width, in freshcore's form) is
    cheap (no hash indices are made) and lands within 2% of its budget, round(compression x
    virtual parameters), or raises ValueError naming why it cannot (e.g. `lrd` at 1/128); `dense`
    stores everything. The options move stored values between layers and bands, not the total.
    The worker still checks the real file's size.
    """
    c = 1.0 if method == "dense" else compression
    alloc, policy = parse_allocation(allocation, method), parse_budget_policy(budget_policy)
    plan_layers(spec, method, c, seed, alloc, policy, width=parse_width(width, method))
    virtual = sum(s.weights + s.biases for s in spec.check())
    return 4 * round(c * virtual)
