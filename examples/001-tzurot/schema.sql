-- Tzurot v3 (seed 001): the tables as `prisma migrate` creates them from prisma/schema.prisma.
--
-- From the seed: "memories" (model Memory, @@map("memories")) and "ConversationHistory" (no
-- @@map). Prisma generates String ids (@default(uuid())) in the client, so no id has a database
-- default; a `String` is TEXT, a `DateTime` TIMESTAMP(3), `@updatedAt` is set by the client (NOT
-- NULL, no default), `Json` is JSONB.
--
-- ASSUMPTIONS (the seed only references these models): "Personality" and "LlmConfig" get the
-- fewest columns the seed's code uses (name, systemPrompt, isActive; personalityId, model,
-- temperature). The seed's raw SQL casts personality ids with ::uuid, but its models declare them
-- `String` (no @db.Uuid), so they are TEXT here, as memories."personalityId" must match them.
-- Users are Discord ids (text) and there is no users table.

CREATE EXTENSION IF NOT EXISTS vector;

-- Assumed (referenced by Memory.personality and the seed's queries).
CREATE TABLE "Personality" (
    "id" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "systemPrompt" TEXT NOT NULL,
    "isActive" BOOLEAN NOT NULL DEFAULT true,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "Personality_pkey" PRIMARY KEY ("id")
);

-- The seed's P2002 handler says a personality's name is unique.
CREATE UNIQUE INDEX "Personality_name_key" ON "Personality"("name");

-- Assumed (the seed creates one per personality and finds it by personalityId).
CREATE TABLE "LlmConfig" (
    "id" TEXT NOT NULL,
    "personalityId" TEXT NOT NULL,
    "model" TEXT NOT NULL,
    "temperature" DOUBLE PRECISION,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "LlmConfig_pkey" PRIMARY KEY ("id")
);

CREATE UNIQUE INDEX "LlmConfig_personalityId_key" ON "LlmConfig"("personalityId");

ALTER TABLE "LlmConfig" ADD CONSTRAINT "LlmConfig_personalityId_fkey"
    FOREIGN KEY ("personalityId") REFERENCES "Personality"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- model Memory (@@map("memories")): a personality's long-term memories, per Discord channel.
CREATE TABLE "memories" (
    "id" TEXT NOT NULL,
    "personalityId" TEXT NOT NULL,
    "channelId" TEXT NOT NULL,
    "content" TEXT NOT NULL,
    "embedding" vector(1536),
    "metadata" JSONB,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "memories_pkey" PRIMARY KEY ("id")
);

CREATE INDEX "memories_personalityId_channelId_idx" ON "memories"("personalityId", "channelId");

-- The seed's hand-written migration: ivfflat, cosine, lists = 100.
CREATE INDEX "memories_embedding_idx" ON "memories" USING ivfflat ("embedding" vector_cosine_ops) WITH (lists = 100);

ALTER TABLE "memories" ADD CONSTRAINT "memories_personalityId_fkey"
    FOREIGN KEY ("personalityId") REFERENCES "Personality"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- model ConversationHistory (no @@map, no relations declared): who said what to which
-- personality in which channel. "userId" is the Discord user id.
CREATE TABLE "ConversationHistory" (
    "id" TEXT NOT NULL,
    "channelId" TEXT NOT NULL,
    "personalityId" TEXT NOT NULL,
    "userId" TEXT NOT NULL,
    "role" TEXT NOT NULL,
    "content" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "ConversationHistory_pkey" PRIMARY KEY ("id")
);

CREATE INDEX "ConversationHistory_channelId_personalityId_createdAt_idx"
    ON "ConversationHistory"("channelId", "personalityId", "createdAt");
CREATE INDEX "ConversationHistory_userId_idx" ON "ConversationHistory"("userId");
CREATE INDEX "ConversationHistory_personalityId_idx" ON "ConversationHistory"("personalityId");
