-- Demo rows for Arrakis (seed 002). Arrakis is single-tenant: its rows have no owner, so both demo
-- accounts (alice@example.com and bob@example.com, rowscope's own) see all of them. Ids name the
-- conversation they belong to. Embeddings are NULL: the application has not embedded these chunks
-- yet; rowscope embeds what it adds itself. Ids and updated_at are explicit because Prisma sets
-- them in the client.

INSERT INTO "conversations" ("id", "session_id", "project_path", "title", "description", "started_at", "ended_at", "metadata", "created_at", "updated_at") VALUES
  ('conv-auth', 'session_101', '/home/dev/arrakis', 'Fix the login redirect', 'Traced a redirect loop to a missing callback URL.', '2025-09-20 09:00:00', '2025-09-20 10:10:00', '{"model": "claude-sonnet-4"}', '2025-09-20 09:00:00', '2025-09-20 10:10:00'),
  ('conv-search', 'session_102', '/home/dev/arrakis', 'Add semantic search', 'Wired pgvector search over conversation chunks.', '2025-09-25 14:00:00', NULL, NULL, '2025-09-25 14:00:00', '2025-09-25 15:30:00'),
  ('conv-docs', 'session_103', '/home/dev/spice-docs', 'Write the deployment guide', NULL, '2025-09-28 08:30:00', '2025-09-28 09:00:00', NULL, '2025-09-28 08:30:00', '2025-09-28 09:00:00');

INSERT INTO "messages" ("id", "conversation_id", "role", "content", "tool_calls", "timestamp", "metadata", "created_at", "updated_at") VALUES
  ('conv-auth-msg-1', 'conv-auth', 'user', 'Login keeps redirecting back to /login. Can you find out why?', NULL, '2025-09-20 09:00:00', NULL, '2025-09-20 09:00:00', '2025-09-20 09:00:00'),
  ('conv-auth-msg-2', 'conv-auth', 'assistant', 'The OAuth callback URL is missing from the allowed list; I will read the config.', '[{"name": "Read", "path": "src/auth/config.ts"}]', '2025-09-20 09:00:20', NULL, '2025-09-20 09:00:20', '2025-09-20 09:00:20'),
  ('conv-auth-msg-3', 'conv-auth', 'tool', 'export const callbacks = ["https://arrakis.dev/auth/cb"]', NULL, '2025-09-20 09:00:21', NULL, '2025-09-20 09:00:21', '2025-09-20 09:00:21'),
  ('conv-search-msg-1', 'conv-search', 'user', 'Add semantic search over past conversations.', NULL, '2025-09-25 14:00:00', NULL, '2025-09-25 14:00:00', '2025-09-25 14:00:00'),
  ('conv-search-msg-2', 'conv-search', 'assistant', 'I will chunk each conversation and store embeddings in conversation_embeddings.', '[{"name": "Write", "path": "src/lib/vector-operations.ts"}]', '2025-09-25 14:01:00', NULL, '2025-09-25 14:01:00', '2025-09-25 14:01:00'),
  ('conv-docs-msg-1', 'conv-docs', 'user', 'Draft a deployment guide for Render.', NULL, '2025-09-28 08:30:00', NULL, '2025-09-28 08:30:00', '2025-09-28 08:30:00'),
  ('conv-docs-msg-2', 'conv-docs', 'assistant', 'Here is a first draft: build with npm run build, migrate with npm run db:deploy.', NULL, '2025-09-28 08:31:00', NULL, '2025-09-28 08:31:00', '2025-09-28 08:31:00');

INSERT INTO "tool_uses" ("id", "message_id", "tool_name", "parameters", "response", "duration", "status", "timestamp", "metadata", "created_at", "updated_at") VALUES
  ('conv-auth-tool-1', 'conv-auth-msg-2', 'Read', '{"path": "src/auth/config.ts"}', '{"lines": 42}', 35, 'success', '2025-09-20 09:00:21', NULL, '2025-09-20 09:00:21', '2025-09-20 09:00:21'),
  ('conv-search-tool-1', 'conv-search-msg-2', 'Write', '{"path": "src/lib/vector-operations.ts"}', '{"bytes": 2048}', 12, 'success', '2025-09-25 14:01:05', NULL, '2025-09-25 14:01:05', '2025-09-25 14:01:05'),
  ('conv-search-tool-2', 'conv-search-msg-2', 'Bash', '{"command": "npm test"}', '{"exitCode": 1}', 8120, 'error', '2025-09-25 14:02:00', NULL, '2025-09-25 14:02:00', '2025-09-25 14:02:00');

INSERT INTO "conversation_embeddings" ("id", "conversation_id", "chunk_text", "chunk_index", "embedding", "metadata", "created_at", "updated_at") VALUES
  ('conv-auth-chunk-0', 'conv-auth', 'Login redirect loop: the OAuth callback URL was missing from the allowed callbacks in src/auth/config.ts.', 0, NULL, '{"tokens": 24}', '2025-09-20 10:10:00', '2025-09-20 10:10:00'),
  ('conv-auth-chunk-1', 'conv-auth', 'Fix: add https://arrakis.dev/auth/cb and the preview domain to the callbacks list.', 1, NULL, '{"tokens": 19}', '2025-09-20 10:10:00', '2025-09-20 10:10:00'),
  ('conv-search-chunk-0', 'conv-search', 'Semantic search: chunk conversations, embed with text-embedding-3-small, search by cosine distance.', 0, NULL, '{"tokens": 21}', '2025-09-25 15:30:00', '2025-09-25 15:30:00'),
  ('conv-docs-chunk-0', 'conv-docs', 'Deployment on Render: npm run build, then npm run db:deploy before the app starts.', 0, NULL, '{"tokens": 20}', '2025-09-28 09:00:00', '2025-09-28 09:00:00');
