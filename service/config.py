"""Settings from TASKALIGN_* environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path | None:
    shared = Path("../shared/data")
    return shared.resolve() if shared.is_dir() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKALIGN_", env_file=".env", extra="ignore")

    home: Path = Field(Path("var"), description="State directory: SQLite file, artifacts.")
    data_dir: Path | None = Field(default_factory=_default_data_dir,
                                  description="Datasets; default ../shared/data when present.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in home.")
    rules_dir: Path | None = Field(None, description="Alternative knowledge directory.")
    recommend_memo_mb: float = Field(128, ge=0, description="Memory for memoised "
                                     "recommendations (per rule signature); 0 turns it off.")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Largest JSON body accepted.")
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024,
                                  description="Largest encoder or dataset upload.")
    max_embed_bytes: int = Field(32 * 1024 * 1024, ge=1024,
                                 description="Largest image batch for /embed.")
    max_embed_values: int = Field(64 * 2**20, ge=4096, description="Decoded values (float32) "
                                  "one /embed request may hold: images x channels x size.")
    keep_alive_seconds: int = Field(75, ge=1, le=3600, description="How long an idle "
                                    "HTTP connection stays open. Hub clients reuse "
                                    "connections between downloads; uvicorn's 5 s default "
                                    "let a busy client send on a socket the server was "
                                    "closing.")
    seed_zoo: bool = Field(True, description="Register the shipped seed encoders at start-up.")
    worker: bool = Field(True, description="Run a local job worker inside the API process.")
    ray_address: str | None = Field(None, description="Ray dashboard/job API address, for "
                                    "`taskalign worker --executor ray` and Ray job logs.")
    job_stale_seconds: float = Field(15.0, gt=0, description="Heartbeat age that counts as a "
                                     "dead worker.")
    api_tokens: str = Field("", description="user=token pairs, comma-separated.")
    admin_tokens: str = Field("", description="Tokens that may see and act on everything.")
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'taskalign.db').resolve()}"


@cache
def get_settings() -> Settings:
    return Settings()
