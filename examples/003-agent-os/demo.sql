-- Demo rows for agent-os (seed 003): two users, alice (user-alice) and bob (user-bob), each with
-- their own agent, integration, sessions, events, conversations and documents. Ids name their
-- owner. Ids and "updatedAt" are explicit because Prisma sets them in the client.
--
-- Knowledge: each root document (parentDocumentId NULL) is a collection; its chunks are the rows
-- whose parentDocumentId is the root. Chunk embeddings are NULL: the application has not embedded
-- them yet; rowscope embeds what it adds itself.

INSERT INTO "User" ("id", "email", "name", "createdAt", "updatedAt") VALUES
  ('user-alice', 'alice@example.com', 'Alice', '2025-08-01 09:00:00', '2025-08-01 09:00:00'),
  ('user-bob', 'bob@example.com', 'Bob', '2025-08-01 09:00:00', '2025-08-01 09:00:00');

INSERT INTO "Agent" ("id", "userId", "name", "createdAt", "updatedAt") VALUES
  ('alice-agent-1', 'user-alice', 'Release notes writer', '2025-08-02 09:00:00', '2025-08-02 09:00:00'),
  ('bob-agent-1', 'user-bob', 'Inbox triager', '2025-08-02 09:00:00', '2025-08-02 09:00:00');

INSERT INTO "IntegrationConnection" ("id", "userId", "provider", "createdAt", "updatedAt") VALUES
  ('alice-integration-1', 'user-alice', 'github', '2025-08-03 09:00:00', '2025-08-03 09:00:00'),
  ('bob-integration-1', 'user-bob', 'gmail', '2025-08-03 09:00:00', '2025-08-03 09:00:00');

-- Sessions and conversations point at each other: sessions first, then conversations, then the
-- sessions' conversationId.
INSERT INTO "AgentSession" ("id", "userId", "agentId", "conversationId", "status", "context", "variables", "templateId", "templateVersion", "messagesCount", "toolsUsed", "startedAt", "lastActiveAt", "completedAt", "createdAt", "updatedAt") VALUES
  ('alice-session-1', 'user-alice', 'alice-agent-1', NULL, 'COMPLETED', '{"repo": "alice/app"}', '{"tone": "brief"}', 'release-notes', '1.2.0', 6, '["github.list_commits"]', '2025-08-17 10:00:00', '2025-08-17 10:20:00', '2025-08-17 10:20:00', '2025-08-17 10:00:00', '2025-08-17 10:20:00'),
  ('alice-session-2', 'user-alice', 'alice-agent-1', NULL, 'RUNNING', '{}', '{}', NULL, NULL, 1, '[]', '2025-08-18 09:00:00', '2025-08-18 09:05:00', NULL, '2025-08-18 09:00:00', '2025-08-18 09:05:00'),
  ('bob-session-1', 'user-bob', 'bob-agent-1', NULL, 'FAILED', '{"label": "inbox"}', '{"api_key_hint": "sk-...bob"}', 'triage', '0.9.1', 3, '["gmail.search"]', '2025-08-17 11:00:00', '2025-08-17 11:02:00', NULL, '2025-08-17 11:00:00', '2025-08-17 11:02:00');

INSERT INTO "Conversation" ("id", "userId", "title", "sessionId", "sessionContext", "metadata", "lastMessageAt", "createdAt", "updatedAt") VALUES
  ('alice-conv-1', 'user-alice', 'Release notes for 2.4', 'alice-session-1', '{}', '{"agent_id": "alice-agent-1"}', '2025-08-17 10:20:00', '2025-08-17 10:00:00', '2025-08-17 10:20:00'),
  ('alice-conv-2', 'user-alice', 'Scratch', NULL, '{}', NULL, NULL, '2025-08-18 12:00:00', '2025-08-18 12:00:00'),
  ('bob-conv-1', 'user-bob', 'Triage Monday inbox', 'bob-session-1', '{}', '{"agent_id": "bob-agent-1"}', '2025-08-17 11:02:00', '2025-08-17 11:00:00', '2025-08-17 11:02:00');

UPDATE "AgentSession" SET "conversationId" = 'alice-conv-1' WHERE "id" = 'alice-session-1';
UPDATE "AgentSession" SET "conversationId" = 'bob-conv-1' WHERE "id" = 'bob-session-1';

INSERT INTO "IntegrationEvent" ("id", "userId", "integrationId", "eventType", "eventData", "toolName", "toolParameters", "toolResult", "errorMessage", "errorCode", "occurredAt", "createdAt") VALUES
  ('alice-event-1', 'user-alice', 'alice-integration-1', 'CONNECTED', '{"scopes": ["repo"]}', NULL, NULL, NULL, NULL, NULL, '2025-08-03 09:00:00', '2025-08-03 09:00:00'),
  ('alice-event-2', 'user-alice', 'alice-integration-1', 'TOOL_USED', '{}', 'github.list_commits', '{"repo": "alice/app"}', '{"count": 14}', NULL, NULL, '2025-08-17 10:05:00', '2025-08-17 10:05:00'),
  ('bob-event-1', 'user-bob', 'bob-integration-1', 'CONNECTED', '{"scopes": ["gmail.readonly"]}', NULL, NULL, NULL, NULL, NULL, '2025-08-03 09:00:00', '2025-08-03 09:00:00'),
  ('bob-event-2', 'user-bob', 'bob-integration-1', 'ERROR', '{}', 'gmail.search', '{"q": "is:unread"}', NULL, 'token expired', 'AUTH_EXPIRED', '2025-08-17 11:02:00', '2025-08-17 11:02:00');

-- Root documents (the collections), then their chunks.
INSERT INTO "KnowledgeBase" ("id", "userId", "title", "content", "contentType", "source", "tags", "metadata", "embedding", "chunkIndex", "totalChunks", "parentDocumentId", "processingStatus", "s3Key", "s3Bucket", "fileSize", "createdAt", "updatedAt") VALUES
  ('alice-doc-1', 'user-alice', 'Release checklist', 'Before a release: freeze main, run the full suite, tag, write notes, announce.', 'text/markdown', 'upload', '{release,process}', NULL, NULL, 0, 2, NULL, 'COMPLETED', 'users/user-alice/release-checklist.md', 'agent-os-docs', 812, '2025-08-05 09:00:00', '2025-08-05 09:10:00'),
  ('alice-doc-2', 'user-alice', 'Style guide', 'Release notes use the imperative mood and group changes by area.', 'text/plain', 'upload', '{writing}', NULL, NULL, 0, 1, NULL, 'COMPLETED', NULL, NULL, 120, '2025-08-06 09:00:00', '2025-08-06 09:05:00'),
  ('bob-doc-1', 'user-bob', 'Inbox rules', 'Newsletters go to Reading; invoices go to Finance; anything from the bank is urgent.', 'text/plain', 'upload', '{email,process}', NULL, NULL, 0, 2, NULL, 'COMPLETED', 'users/user-bob/inbox-rules.txt', 'agent-os-docs', 640, '2025-08-05 10:00:00', '2025-08-05 10:10:00');

INSERT INTO "KnowledgeBase" ("id", "userId", "title", "content", "contentType", "source", "tags", "metadata", "embedding", "chunkIndex", "totalChunks", "parentDocumentId", "processingStatus", "createdAt", "updatedAt") VALUES
  ('alice-doc-1-chunk-0', 'user-alice', 'Release checklist', 'Before a release: freeze main and run the full test suite.', 'text/markdown', 'upload', '{release,process}', NULL, NULL, 0, 2, 'alice-doc-1', 'COMPLETED', '2025-08-05 09:10:00', '2025-08-05 09:10:00'),
  ('alice-doc-1-chunk-1', 'user-alice', 'Release checklist', 'Then tag the release, write the notes and announce it in #releases.', 'text/markdown', 'upload', '{release,process}', NULL, NULL, 1, 2, 'alice-doc-1', 'COMPLETED', '2025-08-05 09:10:00', '2025-08-05 09:10:00'),
  ('alice-doc-2-chunk-0', 'user-alice', 'Style guide', 'Release notes use the imperative mood and group changes by area.', 'text/plain', 'upload', '{writing}', NULL, NULL, 0, 1, 'alice-doc-2', 'COMPLETED', '2025-08-06 09:05:00', '2025-08-06 09:05:00'),
  ('bob-doc-1-chunk-0', 'user-bob', 'Inbox rules', 'Newsletters go to the Reading label; invoices go to Finance.', 'text/plain', 'upload', '{email,process}', NULL, NULL, 0, 2, 'bob-doc-1', 'COMPLETED', '2025-08-05 10:10:00', '2025-08-05 10:10:00'),
  ('bob-doc-1-chunk-1', 'user-bob', 'Inbox rules', 'Anything from the bank is urgent and is flagged at once.', 'text/plain', 'upload', '{email,process}', NULL, NULL, 1, 2, 'bob-doc-1', 'COMPLETED', '2025-08-05 10:10:00', '2025-08-05 10:10:00');
