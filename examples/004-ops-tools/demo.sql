-- Demo rows for Operations Tools (seed 004): alice and bob are approved users (role USER), each
-- owning a project with records, jobs and their own Likert ratings; carol is an ADMIN, who owns
-- nothing and sees every project and rating. Ids name their owner. Ids and "updatedAt" are
-- explicit because Prisma sets them in the client.
--
--   alice  11111111-1111-4111-8111-111111111111  USER
--   bob    22222222-2222-4222-8222-222222222222  USER
--   carol  33333333-3333-4333-8333-333333333333  ADMIN
--
-- Embeddings are empty ('{}', "vectorization pending" in the seed): the application has not
-- embedded these records yet; rowscope embeds what it adds itself.

-- The trigger (schema.sql) creates each profile as PENDING; an admin then approves it.
INSERT INTO auth.users (id, email) VALUES
  ('11111111-1111-4111-8111-111111111111', 'alice@example.com'),
  ('22222222-2222-4222-8222-222222222222', 'bob@example.com'),
  ('33333333-3333-4333-8333-333333333333', 'carol@example.com');

UPDATE public.profiles SET "role" = 'USER', "updatedAt" = '2025-10-01 09:00:00'
  WHERE "id" IN ('11111111-1111-4111-8111-111111111111', '22222222-2222-4222-8222-222222222222');
UPDATE public.profiles SET "role" = 'ADMIN', "updatedAt" = '2025-10-01 09:00:00'
  WHERE "id" = '33333333-3333-4333-8333-333333333333';

INSERT INTO "projects" ("id", "name", "ownerId", "guidelines", "guidelinesFileName", "lastTaskAnalysis", "lastFeedbackAnalysis", "createdAt", "updatedAt") VALUES
  ('alice-project-1', 'Travel assistant prompts', '11111111-1111-4111-8111-111111111111', NULL, 'travel-guidelines.pdf', 'Tasks are realistic; few cover cancellations.', NULL, '2025-10-02 09:00:00', '2025-10-05 09:00:00'),
  ('bob-project-1', 'Code review feedback', '22222222-2222-4222-8222-222222222222', NULL, NULL, NULL, 'Feedback is specific but often misses tests.', '2025-10-02 10:00:00', '2025-10-05 10:00:00');

INSERT INTO "ingest_jobs" ("id", "projectId", "type", "status", "totalRecords", "savedCount", "skippedCount", "skippedDetails", "error", "createdAt", "updatedAt") VALUES
  ('alice-ingest-1', 'alice-project-1', 'TASK', 'COMPLETED', 3, 2, 1, '{"duplicate": 1}', NULL, '2025-10-03 09:00:00', '2025-10-03 09:05:00'),
  ('bob-ingest-1', 'bob-project-1', 'FEEDBACK', 'QUEUED_FOR_VEC', 2, 2, 0, NULL, NULL, '2025-10-03 10:00:00', '2025-10-03 10:02:00');

INSERT INTO "analytics_jobs" ("id", "projectId", "status", "totalRecords", "processedCount", "error", "createdAt", "updatedAt") VALUES
  ('alice-analytics-1', 'alice-project-1', 'COMPLETED', 2, 2, NULL, '2025-10-04 09:00:00', '2025-10-04 09:10:00'),
  ('bob-analytics-1', 'bob-project-1', 'FAILED', 2, 1, 'LLM provider timed out', '2025-10-04 10:00:00', '2025-10-04 10:03:00');

INSERT INTO "data_records" ("id", "projectId", "type", "category", "source", "content", "metadata", "embedding", "alignmentAnalysis", "hasBeenReviewed", "isCategoryCorrect", "reviewedBy", "createdById", "createdByName", "createdByEmail", "ingestJobId", "createdAt", "updatedAt") VALUES
  ('alice-record-1', 'alice-project-1', 'TASK', 'TOP_10', 'csv:travel.csv', 'Rebook a cancelled flight from Lisbon to Oslo for two adults, cheapest option.', '{"row": 1}', '{}', 'Well aligned: concrete constraints.', true, true, 'alice@example.com', '11111111-1111-4111-8111-111111111111', 'Alice', 'alice@example.com', 'alice-ingest-1', '2025-10-03 09:01:00', '2025-10-03 09:01:00'),
  ('alice-record-2', 'alice-project-1', 'TASK', 'BOTTOM_10', 'csv:travel.csv', 'Plan a trip.', '{"row": 2}', '{}', NULL, false, NULL, NULL, '11111111-1111-4111-8111-111111111111', 'Alice', 'alice@example.com', 'alice-ingest-1', '2025-10-03 09:01:00', '2025-10-03 09:01:00'),
  ('bob-record-1', 'bob-project-1', 'FEEDBACK', 'TOP_10', 'csv:reviews.csv', 'The patch fixes the race but adds no test for the retry path.', '{"row": 1}', '{}', NULL, false, NULL, NULL, '22222222-2222-4222-8222-222222222222', 'Bob', 'bob@example.com', 'bob-ingest-1', '2025-10-03 10:01:00', '2025-10-03 10:01:00'),
  ('bob-record-2', 'bob-project-1', 'FEEDBACK', 'BOTTOM_10', 'csv:reviews.csv', 'LGTM.', '{"row": 2}', '{}', NULL, false, NULL, NULL, '22222222-2222-4222-8222-222222222222', 'Bob', 'bob@example.com', 'bob-ingest-1', '2025-10-03 10:01:00', '2025-10-03 10:01:00');

-- Each user's own ratings, and one LLM rating (userId all zeros) on each project's first record.
INSERT INTO "likert_scores" ("id", "recordId", "userId", "realismScore", "qualityScore", "llmModel", "createdAt", "updatedAt") VALUES
  ('alice-likert-1', 'alice-record-1', '11111111-1111-4111-8111-111111111111', 6, 7, NULL, '2025-10-04 09:00:00', '2025-10-04 09:00:00'),
  ('alice-likert-2', 'alice-record-2', '11111111-1111-4111-8111-111111111111', 3, 2, NULL, '2025-10-04 09:01:00', '2025-10-04 09:01:00'),
  ('bob-likert-1', 'bob-record-1', '22222222-2222-4222-8222-222222222222', 6, 5, NULL, '2025-10-04 10:00:00', '2025-10-04 10:00:00'),
  ('llm-likert-1', 'alice-record-1', '00000000-0000-0000-0000-000000000000', 5, 6, 'gpt-4', '2025-10-04 11:00:00', '2025-10-04 11:00:00'),
  ('llm-likert-2', 'bob-record-1', '00000000-0000-0000-0000-000000000000', 6, 4, 'claude-3', '2025-10-04 11:00:00', '2025-10-04 11:00:00');

INSERT INTO "bonus_windows" ("id", "name", "startTime", "endTime", "targetTaskCount", "targetFeedbackCount", "targetTaskCountTier2", "targetFeedbackCountTier2", "createdBy", "createdAt", "updatedAt") VALUES
  ('b0000000-0000-4000-8000-000000000001', 'October sprint', '2025-10-01 00:00:00+00', '2025-10-31 23:59:59+00', 50, 30, 100, 60, '33333333-3333-4333-8333-333333333333', '2025-09-30 12:00:00+00', '2025-09-30 12:00:00+00');

-- The reason system_settings is not in the policy: it holds the OpenRouter API key.
INSERT INTO "system_settings" ("key", "value", "description", "updatedAt") VALUES
  ('ai_provider', 'openrouter', 'lmstudio or openrouter', '2025-09-30 12:00:00'),
  ('embedding_model', 'nomic-embed-text-v1.5', 'Embedding model identifier', '2025-09-30 12:00:00'),
  ('openrouter_key', 'sk-or-v1-demo-not-a-real-key', 'OpenRouter API key (encrypted)', '2025-09-30 12:00:00');
