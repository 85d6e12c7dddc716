"""The one settings object. Built once (by the CLI or a test) and passed down; nothing reads the
environment anywhere else.

Every field can be set from the environment with the ``ROWSCOPE_`` prefix; the three variables that
other tools already use keep their usual names: ``DATABASE_URL``, ``OPENAI_API_KEY`` and
``OPENAI_BASE_URL``. ``tests/test_docs.py`` fails when a field here is missing from the README.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
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
    tool_database_url: SecretStr | None = Field(
        default=None,
        description=(
            "Where tool transactions log in. Unset: database_url's server and database as the role "
            "rowscope_tool, without a password. Set it to give that role's password, or a pooler's "
            "user name form (rowscope_tool.<project-ref> on Supabase)."
        ),
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the embedded PostgreSQL keeps its cluster (data_dir/pgdata).",
    )
    policy: Path | None = Field(
        default=None,
        description="A scoping policy TOML file. Unset: the bundled Spark policy.",
    )
    rls_check: bool = Field(
        default=True,
        description="Before serving (serve, stdio), prove that lock 2 (row-level security) gives the "
        "sampled users the same rows as the policy (`rowscope rls check`); off (or --no-rls-check) "
        "skips only that comparison, never the check that every policy table has row-level security.",
    )
    pool_size: int = Field(
        default=10, ge=1, le=200, description="Connections per process, in each of its three pools."
    )

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
    embedding_timeout: float = Field(
        default=20.0,
        ge=1,
        le=300,
        description="Seconds one embedding call may take in all, retries and backoff included; then "
        "the tool fails with a clear error and changes nothing.",
    )

    host: str = Field(default="127.0.0.1", description="Address `rowscope serve` binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `rowscope serve` binds.")
    workers: int = Field(default=1, ge=1, le=64, description="Worker processes of `rowscope serve`.")
    direct_tool_calls: bool = Field(
        default=True,
        description="Answer read-only tools/call requests without the SDK's per-request session "
        "(rowscope/server/direct.py); false sends every request through the SDK's transport.",
    )
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
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description=(
            'Addresses or networks (JSON list, e.g. ["10.0.0.0/8"]) of reverse proxies whose '
            "X-Forwarded-For names the client. Unset: nobody's; the peer address is the client's."
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
    signin_max_failures: int = Field(
        default=5,
        ge=1,
        description="Failed password sign-ins of one account within signin_failure_window; "
        "after that its sign-ins are refused (429) until the oldest ages out.",
    )
    signin_max_failures_per_address: int = Field(
        default=50,
        ge=1,
        description="Failed password sign-ins from one client address within signin_failure_window, "
        "whatever the accounts; after that the address's sign-ins are refused (429).",
    )
    signin_failure_window: int = Field(
        default=15 * 60,
        ge=1,
        le=86400,
        description="Seconds a failed password sign-in counts against its account and address.",
    )
    stale_client_days: int = Field(
        default=30,
        ge=1,
        description="Registered clients unused this long (and holding no live token) are deleted.",
    )
    allow_private_client_documents: bool = Field(
        default=False,
        description="Fetch client metadata documents from private and loopback addresses (tests only).",
    )
    client_document_max_fetches: int = Field(
        default=8,
        ge=1,
        description="Client metadata document fetches one process runs at once; more are refused (503).",
    )
    client_document_fetches_per_minute: int = Field(
        default=60,
        ge=1,
        description="Client metadata document fetches one process starts per minute; more are refused (503).",
    )
    register_max_per_address: int = Field(
        default=60,
        ge=1,
        description="Dynamic client registrations from one client address within register_window; "
        "more are refused (429 with Retry-After).",
    )
    register_window: int = Field(
        default=600, ge=1, le=86400, description="Seconds a registration counts against its address."
    )
    max_unused_clients: int = Field(
        default=1000,
        ge=1,
        description="Registered clients younger than unused_client_ttl that never got a token; at this "
        "many, registration is refused (429 with Retry-After) until one is used or ages out.",
    )
    unused_client_ttl: int = Field(
        default=86400,
        ge=60,
        description="Seconds a registered client that never got a token is kept; then it is purged.",
    )
    purge_interval: float = Field(
        default=3600.0,
        gt=0,
        le=86400,
        description="Seconds between the server's purges of expired codes, tokens, sessions and "
        "unused clients (also `rowscope purge`).",
    )

    max_content_chars: int = Field(
        default=2_000_000, ge=1, description="Largest text add_training_content accepts."
    )
    training_max_chunks: int = Field(
        default=3000,
        ge=0,
        description="New chunks one user may add within training_window (chunks a spark already has "
        "are free); over it add_training_content fails, saying when to try again, and changes "
        "nothing. 0: no limit.",
    )
    training_window: int = Field(
        default=60, ge=1, le=86400, description="Seconds an added chunk counts against training_max_chunks."
    )
    training_max_stored_chunks: int = Field(
        default=50_000,
        ge=0,
        description="Chunks the items one user added may hold in all (remove_training_content frees "
        "them); over it add_training_content fails and changes nothing. 0: no limit.",
    )
    index_batch_size: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description="Chunks the background indexer adds to the HNSW index per transaction.",
    )
    index_interval: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="Seconds between the background indexer's passes when no insert wakes it.",
    )

    oidc_issuer: str | None = Field(
        default=None,
        description=(
            "Issuer URL of an upstream OpenID Connect provider to sign in with (discovery at "
            "issuer/.well-known/openid-configuration). Unset: password sign-in only."
        ),
    )
    oidc_client_id: str | None = Field(default=None, description="rowscope's client id at the OIDC provider.")
    oidc_client_secret: SecretStr | None = Field(
        default=None,
        description="rowscope's client secret at the OIDC provider. Unset: a public client (PKCE).",
    )
    oidc_name: str = Field(
        default="your organisation's account", description="Label of the sign-in button: 'Sign in with …'."
    )
    oidc_scopes: str = Field(default="openid email profile", description="Scopes asked of the OIDC provider.")
    secret_key: SecretStr | None = Field(
        default=None,
        description="Signs the short-lived OIDC sign-in cookie (state, nonce, PKCE); needed by oidc_issuer.",
    )

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"ROWSCOPE_TRUSTED_PROXIES: {entry!r} is not an IP address or network"
                ) from None
        return value

    @field_validator("secret_key")
    @classmethod
    def _long_secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError(
                "ROWSCOPE_SECRET_KEY must be at least 32 characters (e.g. `openssl rand -hex 32`)"
            )
        return value

    @field_validator("oidc_issuer")
    @classmethod
    def _secure_issuer(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        loopback = parts.hostname in {"localhost", "127.0.0.1", "::1"}
        if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
            raise ValueError("ROWSCOPE_OIDC_ISSUER must be an https URL (http only on loopback)")
        if parts.query or parts.fragment:
            raise ValueError("ROWSCOPE_OIDC_ISSUER has no query or fragment (OpenID Connect Discovery §2)")
        return value

    @field_validator("oidc_scopes")
    @classmethod
    def _openid_scope(cls, value: str) -> str:
        if "openid" not in value.split():
            raise ValueError("ROWSCOPE_OIDC_SCOPES must include openid (OpenID Connect Core §3.1.2.1)")
        return value

    @model_validator(mode="after")
    def _base_url_needs_key(self) -> Settings:
        # Without a key rowscope would embed offline, with vectors that the endpoint's never meet:
        # an endpoint named but unused is a mistake to say at start, not a fallback to make silently.
        if self.openai_base_url and not self.openai_api_key:
            raise ValueError(
                "OPENAI_BASE_URL is set but OPENAI_API_KEY is not: set the key too (any non-empty "
                "value for a server that needs none), or unset OPENAI_BASE_URL to embed offline"
            )
        return self

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        if self.oidc_issuer is None:
            return self
        missing = [
            name
            for name, value in (
                ("ROWSCOPE_OIDC_CLIENT_ID", self.oidc_client_id),
                ("ROWSCOPE_SECRET_KEY", self.secret_key),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"ROWSCOPE_OIDC_ISSUER is set, so {' and '.join(missing)} must be set too")
        return self

    @property
    def oidc_discovery_url(self) -> str | None:
        """OpenID Connect Discovery §4: the issuer, less a trailing slash, + the well-known path."""
        if self.oidc_issuer is None:
            return None
        return self.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def resource_url(self) -> str:
        """The exact public URL of the MCP endpoint (an RFC 8707 resource identifier)."""
        return f"{self.base_url}/mcp"

    @property
    def host_resources(self) -> dict[str, str]:
        """Each accepted ``Host`` value and the resource identifier of the MCP endpoint reached on it:
        the public URL's host (its resource_url), loopback by name and by address on this port
        (http), and the extra allowed hosts (with the public URL's scheme). The DNS-rebinding
        protection accepts exactly these hosts."""
        scheme = urlsplit(self.base_url).scheme
        resources = {host.lower(): f"{scheme}://{host}/mcp" for host in self.allowed_hosts}
        for host in (f"127.0.0.1:{self.port}", f"localhost:{self.port}"):
            resources[host] = f"http://{host}/mcp"
        resources[urlsplit(self.base_url).netloc.lower()] = self.resource_url
        return resources
