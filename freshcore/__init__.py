"""FreshNets: frequency-sensitive hashed CNNs as a PyTorch library (no web code).

The data sets live in ``freshcore.data`` (imported on demand, so the core works without it).
"""

from freshcore.budget import (
    BetaShape,
    ConvBoostPolicy,
    ExponentialShape,
    UniformPolicy,
    UniformShape,
    band_buckets,
)
from freshcore.build import (
    METHODS,
    FreshModel,
    UnreachableCompression,
    build_model,
    compress_dense,
    parse_compression,
    to_dense,
)
from freshcore.dct import dct2, dct_matrix, idct2
from freshcore.hashing import bucket_and_sign, derive_seed
from freshcore.layers import (
    FreshConv2d,
    FreshLinear,
    HashedConv2d,
    HashedLinear,
    LowFreqConv2d,
    LowRankConv2d,
    LowRankLinear,
    Normalize,
)
from freshcore.presets import PRESETS, Preset, list_presets, resolve_spec
from freshcore.report import LayerSize, SizeReport, size_report
from freshcore.serialize import (
    FORMAT_VERSION,
    ModelFormatError,
    from_bytes,
    load,
    read_header,
    save,
    to_bytes,
)
from freshcore.spec import ArchitectureSpec, LayerShape, SpecError, parse_spec
from freshcore.train import (
    CheckpointError,
    EpochMetrics,
    TrainConfig,
    TrainConfigError,
    TrainingError,
    TrainResult,
    train,
)

__all__ = [
    "FORMAT_VERSION",
    "METHODS",
    "PRESETS",
    "ArchitectureSpec",
    "BetaShape",
    "CheckpointError",
    "ConvBoostPolicy",
    "EpochMetrics",
    "ExponentialShape",
    "FreshConv2d",
    "FreshLinear",
    "FreshModel",
    "HashedConv2d",
    "HashedLinear",
    "LayerShape",
    "LayerSize",
    "LowFreqConv2d",
    "LowRankConv2d",
    "LowRankLinear",
    "ModelFormatError",
    "Normalize",
    "Preset",
    "SizeReport",
    "SpecError",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainingError",
    "UniformPolicy",
    "UniformShape",
    "UnreachableCompression",
    "band_buckets",
    "bucket_and_sign",
    "build_model",
    "compress_dense",
    "dct2",
    "dct_matrix",
    "derive_seed",
    "from_bytes",
    "idct2",
    "list_presets",
    "load",
    "parse_compression",
    "parse_spec",
    "read_header",
    "resolve_spec",
    "save",
    "size_report",
    "to_bytes",
    "to_dense",
    "train",
]
