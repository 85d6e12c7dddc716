-- Row-level security for rowscope's tool role (rowscope_tool): lock 2 for the policy file examples/003-agent-os/policy.toml,
-- written by `rowscope rls plan` from the policy and this database's catalog.
-- Review it before applying it, as the owner of these tables (psql -f, or in your migrations),
-- then run `rowscope rls check`. The same policy and schema always give this same text.
-- Enabling row-level security hides these tables' rows from every role that neither owns
-- them nor has BYPASSRLS and has no policy of its own: give such roles (an application
-- that does not connect as the owner) a policy. rowscope_tool gets no UPDATE: rowscope only
-- ever inserts with ON CONFLICT DO NOTHING.
BEGIN;

GRANT USAGE ON SCHEMA "public" TO rowscope_tool;

CREATE OR REPLACE FUNCTION "public"."rowscope_document_readable"() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT p."id" FROM "public"."KnowledgeBase" p WHERE (p."userId" = "public"."rowscope_subject"() AND p."parentDocumentId" IS NULL) $fn$;
REVOKE ALL ON FUNCTION "public"."rowscope_document_readable"() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "public"."rowscope_document_readable"() TO rowscope_tool;

CREATE OR REPLACE FUNCTION "public"."rowscope_document_writable"() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT p."id" FROM "public"."KnowledgeBase" p WHERE (p."userId" = "public"."rowscope_subject"() AND p."parentDocumentId" IS NULL) $fn$;
REVOKE ALL ON FUNCTION "public"."rowscope_document_writable"() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "public"."rowscope_document_writable"() TO rowscope_tool;

-- AgentSession: model AgentSession
GRANT SELECT ON "public"."AgentSession" TO rowscope_tool;
ALTER TABLE "public"."AgentSession" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_AgentSession_select" ON "public"."AgentSession";
CREATE POLICY "rowscope_AgentSession_select" ON "public"."AgentSession" FOR SELECT TO rowscope_tool
  USING ("userId" = "public"."rowscope_subject"());

-- Conversation: model Conversation
GRANT SELECT ON "public"."Conversation" TO rowscope_tool;
ALTER TABLE "public"."Conversation" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_Conversation_select" ON "public"."Conversation";
CREATE POLICY "rowscope_Conversation_select" ON "public"."Conversation" FOR SELECT TO rowscope_tool
  USING ("userId" = "public"."rowscope_subject"());

-- IntegrationEvent: model IntegrationEvent
GRANT SELECT ON "public"."IntegrationEvent" TO rowscope_tool;
ALTER TABLE "public"."IntegrationEvent" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_IntegrationEvent_select" ON "public"."IntegrationEvent";
CREATE POLICY "rowscope_IntegrationEvent_select" ON "public"."IntegrationEvent" FOR SELECT TO rowscope_tool
  USING ("userId" = "public"."rowscope_subject"());

-- KnowledgeBase: model Document, model DocumentChunk, access document, knowledge
GRANT SELECT ON "public"."KnowledgeBase" TO rowscope_tool;
ALTER TABLE "public"."KnowledgeBase" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_KnowledgeBase_select" ON "public"."KnowledgeBase";
CREATE POLICY "rowscope_KnowledgeBase_select" ON "public"."KnowledgeBase" FOR SELECT TO rowscope_tool
  USING (("userId" = "public"."rowscope_subject"() AND "parentDocumentId" IS NULL)
      OR "parentDocumentId" IN (SELECT "public"."rowscope_document_readable"()));
GRANT INSERT, DELETE ON "public"."KnowledgeBase" TO rowscope_tool;
DROP POLICY IF EXISTS "rowscope_KnowledgeBase_insert" ON "public"."KnowledgeBase";
CREATE POLICY "rowscope_KnowledgeBase_insert" ON "public"."KnowledgeBase" FOR INSERT TO rowscope_tool
  WITH CHECK ("parentDocumentId" IN (SELECT "public"."rowscope_document_writable"()) AND "userId" = "public"."rowscope_subject"());
DROP POLICY IF EXISTS "rowscope_KnowledgeBase_delete" ON "public"."KnowledgeBase";
CREATE POLICY "rowscope_KnowledgeBase_delete" ON "public"."KnowledgeBase" FOR DELETE TO rowscope_tool
  USING ("parentDocumentId" IN (SELECT "public"."rowscope_document_writable"()));

-- User: model User, users
GRANT SELECT ON "public"."User" TO rowscope_tool;
ALTER TABLE "public"."User" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_User_select" ON "public"."User";
CREATE POLICY "rowscope_User_select" ON "public"."User" FOR SELECT TO rowscope_tool
  USING ("id" = "public"."rowscope_subject"());

-- knowledge_chunks: rowscope's bookkeeping for the chunks of KnowledgeBase
GRANT SELECT, INSERT, DELETE ON "public"."knowledge_chunks" TO rowscope_tool;
ALTER TABLE "public"."knowledge_chunks" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_KnowledgeBase_chunks_select" ON "public"."knowledge_chunks";
CREATE POLICY "rowscope_KnowledgeBase_chunks_select" ON "public"."knowledge_chunks" FOR SELECT TO rowscope_tool
  USING ("store" = 'KnowledgeBase' AND "parent_id" IN (SELECT "public"."rowscope_document_readable"()::text));
DROP POLICY IF EXISTS "rowscope_KnowledgeBase_chunks_insert" ON "public"."knowledge_chunks";
CREATE POLICY "rowscope_KnowledgeBase_chunks_insert" ON "public"."knowledge_chunks" FOR INSERT TO rowscope_tool
  WITH CHECK ("store" = 'KnowledgeBase' AND "parent_id" IN (SELECT "public"."rowscope_document_writable"()::text));
DROP POLICY IF EXISTS "rowscope_KnowledgeBase_chunks_delete" ON "public"."knowledge_chunks";
CREATE POLICY "rowscope_KnowledgeBase_chunks_delete" ON "public"."knowledge_chunks" FOR DELETE TO rowscope_tool
  USING ("store" = 'KnowledgeBase' AND "parent_id" IN (SELECT "public"."rowscope_document_writable"()::text));

COMMIT;
