"""Data sets: the registry (MNIST, Fashion-MNIST, the regenerated MNIST variants, CIFAR-10,
scikit-learn digits) and users' own uploads. See docs/datasets.md."""

from freshcore.data.registry import (
    REGISTRY,
    Dataset,
    DatasetInfo,
    DatasetNotFound,
    fetch,
    get_info,
    list_datasets,
    load,
)
from freshcore.data.sources import DatasetUnavailable, Progress, default_cache_dir
from freshcore.data.uploads import (
    UploadError,
    UploadLimits,
    load_image_folder,
    load_npz,
    read_image_folder,
    read_npz,
)

__all__ = [
    "REGISTRY",
    "Dataset",
    "DatasetInfo",
    "DatasetNotFound",
    "DatasetUnavailable",
    "Progress",
    "UploadError",
    "UploadLimits",
    "default_cache_dir",
    "fetch",
    "get_info",
    "list_datasets",
    "load",
    "load_image_folder",
    "load_npz",
    "read_image_folder",
    "read_npz",
]
