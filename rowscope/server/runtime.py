"""What a running rowscope holds: the database pool, the compiled policy, the embedder, the limiter
of password verifications and, when the knowledge store defers indexing, the background indexer
(run by the MCP server's lifespan).

Built by :func:`rowscope.server.app.build` from the settings, started inside the MCP server's
lifespan (which reflects the policy's tables), and reached by tools through
``ctx.request_context.lifespan_context``. Nothing here is global.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import MetaData

from rowscope.auth import passwords
from rowscope.db.engine import Database
from rowscope.db.indexer import Indexer
from rowscope.db.knowledge import KnowledgeStore
from rowscope.db.policy import CompiledPolicy, PolicyFile, table_key
from rowscope.db.subjects import Subjects
from rowscope.embeddings import Embedder
from rowscope.server.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    database: Database
    policy_file: PolicyFile
    embedder: Embedder
    # The one user every request runs as on stdio; None over HTTP, where the token names the user.
    stdio_user: uuid.UUID | None = None
    _policy: CompiledPolicy | None = field(default=None, init=False)
    # Sign-ins' argon2 verifications run in worker threads, this many at a time (auth/passwords.py).
    hashing: anyio.CapacityLimiter = field(
        default_factory=lambda: anyio.CapacityLimiter(passwords.CONCURRENCY)
    )
    # Built by start() when the policy has a knowledge store; None otherwise.
    knowledge: KnowledgeStore | None = field(default=None, init=False)
    # Built by start() when the policy's knowledge store has an indexed_column; None otherwise.
    indexer: Indexer | None = field(default=None, init=False)
    # Accounts' subjects (the application's ids for them), cached.
    subjects: Subjects = field(init=False)

    def __post_init__(self) -> None:
        self.subjects = Subjects(self.database, linked=not self.policy_file.users.own)

    @property
    def policy(self) -> CompiledPolicy:
        if self._policy is None:
            raise RuntimeError("the runtime has not been started")
        return self._policy

    async def start(self) -> None:
        if self._policy is not None:
            return
        self._policy = await compile_policy(self.database, self.policy_file)
        # lock 2 holds for every table, or refuse (db/guard.py)
        await self.database.verify(self.policy_file.table_names())
        knowledge = self.policy_file.knowledge
        if knowledge is not None:
            # Built once: its columns fit the policy, or PolicyError (db/knowledge.py).
            self.knowledge = KnowledgeStore(self._policy)
        if knowledge is not None and knowledge.indexed_column is not None:
            self.indexer = Indexer(
                self.database,
                knowledge,
                batch_size=self.settings.index_batch_size,
                interval=self.settings.index_interval,
            )

    async def close(self) -> None:
        await self.embedder.aclose()
        await self.database.dispose()


async def compile_policy(database: Database, policy_file: PolicyFile) -> CompiledPolicy:
    """The policy bound to the database's tables, reflected; :class:`PolicyError` names a table or
    column the policy needs and the database does not have."""
    import pgvector.sqlalchemy  # noqa: F401  (teaches reflection the vector type)

    metadata = MetaData()
    by_schema: dict[str | None, set[str]] = {}
    for name in map(table_key, policy_file.table_names()):
        schema, _, table = name.rpartition(".")
        by_schema.setdefault(schema or None, set()).add(table)

    def reflect(sync: Any) -> None:
        for schema, names in by_schema.items():
            # A callable `only` skips absent tables, so CompiledPolicy can name them in its error.
            metadata.reflect(sync, schema=schema, only=lambda name, _, names=names: name in names)

    async with database.engine.connect() as conn:
        await conn.run_sync(reflect)
    return CompiledPolicy(policy_file, metadata)
