-- Row-level security for rowscope's tool role (rowscope_tool): lock 2 for the policy file examples/002-arrakis/policy.toml,
-- written by `rowscope rls plan` from the policy and this database's catalog.
-- Review it before applying it, as the owner of these tables (psql -f, or in your migrations),
-- then run `rowscope rls check`. The same policy and schema always give this same text.
-- Enabling row-level security hides these tables' rows from every role that neither owns
-- them nor has BYPASSRLS and has no policy of its own: give such roles (an application
-- that does not connect as the owner) a policy. rowscope_tool gets no UPDATE: rowscope only
-- ever inserts with ON CONFLICT DO NOTHING.
BEGIN;

GRANT USAGE ON SCHEMA "public" TO rowscope_tool;

CREATE OR REPLACE FUNCTION "public"."rowscope_conversation_readable"() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT p."id" FROM "public"."conversations" p WHERE true $fn$;
REVOKE ALL ON FUNCTION "public"."rowscope_conversation_readable"() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "public"."rowscope_conversation_readable"() TO rowscope_tool;

CREATE OR REPLACE FUNCTION "public"."rowscope_conversation_writable"() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT p."id" FROM "public"."conversations" p WHERE true $fn$;
REVOKE ALL ON FUNCTION "public"."rowscope_conversation_writable"() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "public"."rowscope_conversation_writable"() TO rowscope_tool;

-- conversation_embeddings: knowledge
GRANT SELECT ON "public"."conversation_embeddings" TO rowscope_tool;
ALTER TABLE "public"."conversation_embeddings" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_conversation_embeddings_select" ON "public"."conversation_embeddings";
CREATE POLICY "rowscope_conversation_embeddings_select" ON "public"."conversation_embeddings" FOR SELECT TO rowscope_tool
  USING ("conversation_id" IN (SELECT "public"."rowscope_conversation_readable"()));
GRANT INSERT, DELETE ON "public"."conversation_embeddings" TO rowscope_tool;
DROP POLICY IF EXISTS "rowscope_conversation_embeddings_insert" ON "public"."conversation_embeddings";
CREATE POLICY "rowscope_conversation_embeddings_insert" ON "public"."conversation_embeddings" FOR INSERT TO rowscope_tool
  WITH CHECK ("conversation_id" IN (SELECT "public"."rowscope_conversation_writable"()));
DROP POLICY IF EXISTS "rowscope_conversation_embeddings_delete" ON "public"."conversation_embeddings";
CREATE POLICY "rowscope_conversation_embeddings_delete" ON "public"."conversation_embeddings" FOR DELETE TO rowscope_tool
  USING ("conversation_id" IN (SELECT "public"."rowscope_conversation_writable"()));

-- conversations: model Conversation, access conversation
GRANT SELECT ON "public"."conversations" TO rowscope_tool;
ALTER TABLE "public"."conversations" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_conversations_select" ON "public"."conversations";
CREATE POLICY "rowscope_conversations_select" ON "public"."conversations" FOR SELECT TO rowscope_tool
  USING (true);

-- messages: model Message
GRANT SELECT ON "public"."messages" TO rowscope_tool;
ALTER TABLE "public"."messages" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_messages_select" ON "public"."messages";
CREATE POLICY "rowscope_messages_select" ON "public"."messages" FOR SELECT TO rowscope_tool
  USING (true);

-- tool_uses: model ToolUse
GRANT SELECT ON "public"."tool_uses" TO rowscope_tool;
ALTER TABLE "public"."tool_uses" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_tool_uses_select" ON "public"."tool_uses";
CREATE POLICY "rowscope_tool_uses_select" ON "public"."tool_uses" FOR SELECT TO rowscope_tool
  USING (true);

-- knowledge_chunks: rowscope's bookkeeping for the chunks of conversation_embeddings
GRANT SELECT, INSERT, DELETE ON "public"."knowledge_chunks" TO rowscope_tool;
ALTER TABLE "public"."knowledge_chunks" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_conversation_embeddings_chunks_select" ON "public"."knowledge_chunks";
CREATE POLICY "rowscope_conversation_embeddings_chunks_select" ON "public"."knowledge_chunks" FOR SELECT TO rowscope_tool
  USING ("store" = 'conversation_embeddings' AND "parent_id" IN (SELECT "public"."rowscope_conversation_readable"()::text));
DROP POLICY IF EXISTS "rowscope_conversation_embeddings_chunks_insert" ON "public"."knowledge_chunks";
CREATE POLICY "rowscope_conversation_embeddings_chunks_insert" ON "public"."knowledge_chunks" FOR INSERT TO rowscope_tool
  WITH CHECK ("store" = 'conversation_embeddings' AND "parent_id" IN (SELECT "public"."rowscope_conversation_writable"()::text));
DROP POLICY IF EXISTS "rowscope_conversation_embeddings_chunks_delete" ON "public"."knowledge_chunks";
CREATE POLICY "rowscope_conversation_embeddings_chunks_delete" ON "public"."knowledge_chunks" FOR DELETE TO rowscope_tool
  USING ("store" = 'conversation_embeddings' AND "parent_id" IN (SELECT "public"."rowscope_conversation_writable"()::text));

COMMIT;
