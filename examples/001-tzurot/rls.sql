-- Row-level security for rowscope's tool role (rowscope_tool): lock 2 for the policy file examples/001-tzurot/policy.toml,
-- written by `rowscope rls plan` from the policy and this database's catalog.
-- Review it before applying it, as the owner of these tables (psql -f, or in your migrations),
-- then run `rowscope rls check`. The same policy and schema always give this same text.
-- Enabling row-level security hides these tables' rows from every role that neither owns
-- them nor has BYPASSRLS and has no policy of its own: give such roles (an application
-- that does not connect as the owner) a policy. rowscope_tool gets no UPDATE: rowscope only
-- ever inserts with ON CONFLICT DO NOTHING.
BEGIN;

GRANT USAGE ON SCHEMA "public" TO rowscope_tool;

CREATE OR REPLACE FUNCTION "public"."rowscope_member_ConversationHistory_personalityId_80403011"() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT m."personalityId" FROM "public"."ConversationHistory" m WHERE m."userId" = "public"."rowscope_subject"() $fn$;
REVOKE ALL ON FUNCTION "public"."rowscope_member_ConversationHistory_personalityId_80403011"() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "public"."rowscope_member_ConversationHistory_personalityId_80403011"() TO rowscope_tool;

CREATE OR REPLACE FUNCTION "public"."rowscope_personality_readable"() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT p."id" FROM "public"."Personality" p WHERE p."id" IN (SELECT "public"."rowscope_member_ConversationHistory_personalityId_80403011"()) $fn$;
REVOKE ALL ON FUNCTION "public"."rowscope_personality_readable"() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "public"."rowscope_personality_readable"() TO rowscope_tool;

CREATE OR REPLACE FUNCTION "public"."rowscope_personality_writable"() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT p."id" FROM "public"."Personality" p WHERE p."id" IN (SELECT "public"."rowscope_member_ConversationHistory_personalityId_80403011"()) $fn$;
REVOKE ALL ON FUNCTION "public"."rowscope_personality_writable"() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "public"."rowscope_personality_writable"() TO rowscope_tool;

-- ConversationHistory: model ConversationHistory, member table
GRANT SELECT ON "public"."ConversationHistory" TO rowscope_tool;
ALTER TABLE "public"."ConversationHistory" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_ConversationHistory_select" ON "public"."ConversationHistory";
CREATE POLICY "rowscope_ConversationHistory_select" ON "public"."ConversationHistory" FOR SELECT TO rowscope_tool
  USING ("userId" = "public"."rowscope_subject"());

-- Personality: model Personality, access personality
GRANT SELECT ON "public"."Personality" TO rowscope_tool;
ALTER TABLE "public"."Personality" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_Personality_select" ON "public"."Personality";
CREATE POLICY "rowscope_Personality_select" ON "public"."Personality" FOR SELECT TO rowscope_tool
  USING ("id" IN (SELECT "public"."rowscope_member_ConversationHistory_personalityId_80403011"()));

-- memories: model Memory, knowledge
GRANT SELECT ON "public"."memories" TO rowscope_tool;
ALTER TABLE "public"."memories" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_memories_select" ON "public"."memories";
CREATE POLICY "rowscope_memories_select" ON "public"."memories" FOR SELECT TO rowscope_tool
  USING ("personalityId" IN (SELECT "public"."rowscope_personality_readable"()));
GRANT INSERT, DELETE ON "public"."memories" TO rowscope_tool;
DROP POLICY IF EXISTS "rowscope_memories_insert" ON "public"."memories";
CREATE POLICY "rowscope_memories_insert" ON "public"."memories" FOR INSERT TO rowscope_tool
  WITH CHECK ("personalityId" IN (SELECT "public"."rowscope_personality_writable"()));
DROP POLICY IF EXISTS "rowscope_memories_delete" ON "public"."memories";
CREATE POLICY "rowscope_memories_delete" ON "public"."memories" FOR DELETE TO rowscope_tool
  USING ("personalityId" IN (SELECT "public"."rowscope_personality_writable"()));

-- knowledge_chunks: rowscope's bookkeeping for the chunks of memories
GRANT SELECT, INSERT, DELETE ON "public"."knowledge_chunks" TO rowscope_tool;
ALTER TABLE "public"."knowledge_chunks" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_memories_chunks_select" ON "public"."knowledge_chunks";
CREATE POLICY "rowscope_memories_chunks_select" ON "public"."knowledge_chunks" FOR SELECT TO rowscope_tool
  USING ("store" = 'memories' AND "parent_id" IN (SELECT "public"."rowscope_personality_readable"()::text));
DROP POLICY IF EXISTS "rowscope_memories_chunks_insert" ON "public"."knowledge_chunks";
CREATE POLICY "rowscope_memories_chunks_insert" ON "public"."knowledge_chunks" FOR INSERT TO rowscope_tool
  WITH CHECK ("store" = 'memories' AND "parent_id" IN (SELECT "public"."rowscope_personality_writable"()::text));
DROP POLICY IF EXISTS "rowscope_memories_chunks_delete" ON "public"."knowledge_chunks";
CREATE POLICY "rowscope_memories_chunks_delete" ON "public"."knowledge_chunks" FOR DELETE TO rowscope_tool
  USING ("store" = 'memories' AND "parent_id" IN (SELECT "public"."rowscope_personality_writable"()::text));

COMMIT;
