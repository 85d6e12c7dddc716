"""The one settings object. Built once (by the CLI or a test) and passed down; nothing reads the
environment anywhere else.

Every field can be set from the environment with the ``ROWSCOPE_`` prefix; the three variables that
other tools already use keep their usual names: ``DATABASE_URL``, ``OPENAI_API_KEY`` and
``OPENAI_BASE_URL``. ``tests/test_docs.py`` fails when a field here is missing from the README.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "rowscope"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROWSCOPE_", extra="ignore", frozen=True)

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "ROWSCOPE_DATABASE_URL"),
        description="PostgreSQL URL. Unset: an embedded PostgreSQL with pgvector under data_dir.",
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the embedded PostgreSQL keeps its cluster (data_dir/pgdata).",
    )
    policy: Path | None = Field(
        default=None,
        description="A scoping policy TOML file. Unset: the bundled Spark policy.",
    )
    pool_size: int = Field(default=10, ge=1, le=200, description="Connections per process.")

    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "ROWSCOPE_OPENAI_API_KEY"),
        description="Set: embed with OpenAI (or a compatible API). Unset: the offline embedder.",
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "ROWSCOPE_OPENAI_BASE_URL"),
        description="Base URL of an OpenAI-compatible embeddings API.",
    )
    embedding_model: str = Field(default="text-embedding-3-large", description="The OpenAI embedding model.")
    embedding_batch_size: int = Field(default=64, ge=1, le=2048, description="Texts per embedding request.")

    host: str = Field(default="127.0.0.1", description="Address `rowscope serve` binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `rowscope serve` binds.")
    public_url: str | None = Field(
        default=None,
        description="The public base URL (behind a TLS proxy). Unset: http://host:port.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Extra Host header values accepted (DNS-rebinding protection); "
            "the public URL's host is always allowed."
        ),
    )

    access_token_ttl: int = Field(
        default=3600, ge=60, le=86400, description="Access-token lifetime, seconds."
    )
    refresh_token_ttl: int = Field(
        default=30 * 86400, ge=3600, description="Refresh-token lifetime, seconds (renewed on each rotation)."
    )
    code_ttl: int = Field(default=300, ge=30, le=600, description="Authorization-code lifetime, seconds.")
    session_ttl: int = Field(default=12 * 3600, ge=300, description="Sign-in session lifetime, seconds.")
    stale_client_days: int = Field(
        default=30,
        ge=1,
        description="Registered clients unused this long (and holding no live token) are deleted.",
    )
    allow_private_client_documents: bool = Field(
        default=False,
        description="Fetch client metadata documents from private and loopback addresses (tests only).",
    )

    max_content_chars: int = Field(
        default=2_000_000, ge=1, description="Largest text add_training_content accepts."
    )

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def resource_url(self) -> str:
        """The exact public URL of the MCP endpoint (an RFC 8707 resource identifier)."""
        return f"{self.base_url}/mcp"
