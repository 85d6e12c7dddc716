-- Demo rows for Tzurot (seed 001): two Discord users, alice (111111111111111111) and bob
-- (222222222222222222), each talking with their own personality in their own channel.
--
-- alice talks with Lilith in channel 900000000000000001: she reaches Lilith's memories
-- (alice-mem-*). bob talks with Sage in channel 900000000000000002 (bob-mem-*). Nobody has talked
-- with Echo, so its memory (echo-mem-1) is reachable by neither.
--
-- Embeddings are NULL: the application has not embedded these memories yet; rowscope embeds what
-- it adds itself. Ids and "updatedAt" are explicit because Prisma sets them in the client.

INSERT INTO "Personality" ("id", "name", "systemPrompt", "isActive", "createdAt", "updatedAt") VALUES
  ('personality-lilith', 'Lilith', 'You are Lilith, a dry-witted archivist.', true, '2025-10-01 09:00:00', '2025-10-01 09:00:00'),
  ('personality-sage', 'Sage', 'You are Sage, a patient gardener.', true, '2025-10-01 09:00:00', '2025-10-01 09:00:00'),
  ('personality-echo', 'Echo', 'You repeat the last thing said, slightly wrong.', false, '2025-10-01 09:00:00', '2025-10-01 09:00:00');

INSERT INTO "LlmConfig" ("id", "personalityId", "model", "temperature", "createdAt", "updatedAt") VALUES
  ('llm-lilith', 'personality-lilith', 'anthropic/claude-sonnet-4.5', 0.8, '2025-10-01 09:00:00', '2025-10-01 09:00:00'),
  ('llm-sage', 'personality-sage', 'anthropic/claude-sonnet-4.5', 0.6, '2025-10-01 09:00:00', '2025-10-01 09:00:00'),
  ('llm-echo', 'personality-echo', 'openai/gpt-4o-mini', 1.0, '2025-10-01 09:00:00', '2025-10-01 09:00:00');

INSERT INTO "ConversationHistory" ("id", "channelId", "personalityId", "userId", "role", "content", "createdAt") VALUES
  ('alice-history-1', '900000000000000001', 'personality-lilith', '111111111111111111', 'user', 'Lilith, where did I leave the lighthouse notes?', '2025-11-01 10:00:00'),
  ('alice-history-2', '900000000000000001', 'personality-lilith', '111111111111111111', 'assistant', 'In the blue folder, under the tide tables.', '2025-11-01 10:00:05'),
  ('alice-history-3', '900000000000000001', 'personality-lilith', '111111111111111111', 'user', 'Remind me what the keeper''s name was.', '2025-11-02 18:30:00'),
  ('alice-history-4', '900000000000000001', 'personality-lilith', '111111111111111111', 'assistant', 'Morwenna, keeper from 1891 to 1923.', '2025-11-02 18:30:04'),
  ('bob-history-1', '900000000000000002', 'personality-sage', '222222222222222222', 'user', 'Sage, my tomatoes have yellow leaves.', '2025-11-01 11:00:00'),
  ('bob-history-2', '900000000000000002', 'personality-sage', '222222222222222222', 'assistant', 'Water less often, and check for early blight.', '2025-11-01 11:00:06'),
  ('bob-history-3', '900000000000000002', 'personality-sage', '222222222222222222', 'user', 'When should I plant garlic?', '2025-11-03 08:15:00'),
  ('bob-history-4', '900000000000000002', 'personality-sage', '222222222222222222', 'assistant', 'Mid-autumn, a few weeks before the ground freezes.', '2025-11-03 08:15:03');

-- Memories are the personality's, per channel; the ids name the demo user who can reach them.
INSERT INTO "memories" ("id", "personalityId", "channelId", "content", "embedding", "metadata", "createdAt", "updatedAt") VALUES
  ('alice-mem-1', 'personality-lilith', '900000000000000001', 'Alice keeps her lighthouse research notes in a blue folder under the tide tables.', NULL, '{"kind": "fact"}', '2025-11-01 10:01:00', '2025-11-01 10:01:00'),
  ('alice-mem-2', 'personality-lilith', '900000000000000001', 'The lighthouse keeper Alice researches is Morwenna, who served from 1891 to 1923.', NULL, '{"kind": "fact"}', '2025-11-02 18:31:00', '2025-11-02 18:31:00'),
  ('alice-mem-3', 'personality-lilith', '900000000000000001', 'Alice prefers short answers with dates first.', NULL, NULL, '2025-11-02 18:32:00', '2025-11-02 18:32:00'),
  ('bob-mem-1', 'personality-sage', '900000000000000002', 'Bob grows tomatoes on a balcony; the leaves yellowed in early November.', NULL, '{"kind": "fact"}', '2025-11-01 11:01:00', '2025-11-01 11:01:00'),
  ('bob-mem-2', 'personality-sage', '900000000000000002', 'Bob plans to plant garlic this autumn.', NULL, '{"kind": "plan"}', '2025-11-03 08:16:00', '2025-11-03 08:16:00'),
  ('bob-mem-3', 'personality-sage', '900000000000000002', 'Bob''s secret compost recipe: coffee grounds, eggshells and bracken.', NULL, NULL, '2025-11-03 08:17:00', '2025-11-03 08:17:00'),
  ('echo-mem-1', 'personality-echo', '900000000000000003', 'Echo once repeated a password someone typed by mistake.', NULL, NULL, '2025-10-15 12:00:00', '2025-10-15 12:00:00');
