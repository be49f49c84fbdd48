"""Prometheus series of the serving layer, on the registry `/metrics` exposes (app.metrics)."""

from prometheus_client import Counter, Gauge, Histogram

from app.metrics import REGISTRY

CACHE_HITS = Counter(
    "freshnets_model_cache_hits_total",
    "Predictions that found their model ready.",
    registry=REGISTRY,
)
CACHE_MISSES = Counter(
    "freshnets_model_cache_misses_total",
    "Model loads: a database read, freshcore.from_bytes and a filter rebuild.",
    registry=REGISTRY,
)
CACHE_EVICTIONS = Counter(
    "freshnets_model_cache_evictions_total",
    "Models dropped to stay within FRESHNETS_CACHE_BYTES.",
    registry=REGISTRY,
)
CACHE_BYTES = Gauge(
    "freshnets_model_cache_bytes",
    "Bytes of the cached models' tensors (materialised filters, parameters, buffers).",
    registry=REGISTRY,
)
CACHE_MODELS = Gauge("freshnets_model_cache_models", "Models in the cache.", registry=REGISTRY)
REBUILD_SECONDS = Histogram(
    "freshnets_model_rebuild_seconds",
    "Time to load a model: database read, freshcore.from_bytes and materialize().",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "freshnets_predict_batch_samples",
    "Samples per forward pass of the micro-batcher.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
QUEUE_SAMPLES = Gauge(
    "freshnets_predict_queue_samples",
    "Samples waiting for or inside a forward pass, over all models.",
    registry=REGISTRY,
)
REJECTED = Counter(
    "freshnets_predict_rejected_total",
    "Predictions refused with 503 because the batcher's queue was full.",
    registry=REGISTRY,
)
