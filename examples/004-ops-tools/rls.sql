-- Row-level security for rowscope's tool role (rowscope_tool): lock 2 for the policy file examples/004-ops-tools/policy.toml,
-- written by `rowscope rls plan` from the policy and this database's catalog.
-- Review it before applying it, as the owner of these tables (psql -f, or in your migrations),
-- then run `rowscope rls check`. The same policy and schema always give this same text.
-- Enabling row-level security hides these tables' rows from every role that neither owns
-- them nor has BYPASSRLS and has no policy of its own: give such roles (an application
-- that does not connect as the owner) a policy. rowscope_tool gets no UPDATE: rowscope only
-- ever inserts with ON CONFLICT DO NOTHING.
BEGIN;

GRANT USAGE ON SCHEMA "public" TO rowscope_tool;

CREATE OR REPLACE FUNCTION "public"."rowscope_role_profiles_role_029c5763"() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT EXISTS (SELECT 1 FROM "public"."profiles" u WHERE u."id" = "public"."rowscope_subject"()::uuid AND u."role" IN ('ADMIN')) $fn$;
REVOKE ALL ON FUNCTION "public"."rowscope_role_profiles_role_029c5763"() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "public"."rowscope_role_profiles_role_029c5763"() TO rowscope_tool;

CREATE OR REPLACE FUNCTION "public"."rowscope_project_readable"() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT p."id" FROM "public"."projects" p WHERE (p."ownerId" = "public"."rowscope_subject"()::uuid OR "public"."rowscope_role_profiles_role_029c5763"()) $fn$;
REVOKE ALL ON FUNCTION "public"."rowscope_project_readable"() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "public"."rowscope_project_readable"() TO rowscope_tool;

CREATE OR REPLACE FUNCTION "public"."rowscope_role_profiles_role_1c02c849"() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT EXISTS (SELECT 1 FROM "public"."profiles" u WHERE u."id" = "public"."rowscope_subject"()::uuid AND u."role" IN ('USER', 'MANAGER', 'ADMIN')) $fn$;
REVOKE ALL ON FUNCTION "public"."rowscope_role_profiles_role_1c02c849"() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "public"."rowscope_role_profiles_role_1c02c849"() TO rowscope_tool;

CREATE OR REPLACE FUNCTION "public"."rowscope_project_writable"() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT p."id" FROM "public"."projects" p WHERE (p."ownerId" = "public"."rowscope_subject"()::uuid OR "public"."rowscope_role_profiles_role_029c5763"()) $fn$;
REVOKE ALL ON FUNCTION "public"."rowscope_project_writable"() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "public"."rowscope_project_writable"() TO rowscope_tool;

-- analytics_jobs: model AnalyticsJob
GRANT SELECT ON "public"."analytics_jobs" TO rowscope_tool;
ALTER TABLE "public"."analytics_jobs" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_analytics_jobs_select" ON "public"."analytics_jobs";
CREATE POLICY "rowscope_analytics_jobs_select" ON "public"."analytics_jobs" FOR SELECT TO rowscope_tool
  USING ("projectId" IN (SELECT "public"."rowscope_project_readable"()));

-- bonus_windows: model BonusWindow
GRANT SELECT ON "public"."bonus_windows" TO rowscope_tool;
ALTER TABLE "public"."bonus_windows" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_bonus_windows_select" ON "public"."bonus_windows";
CREATE POLICY "rowscope_bonus_windows_select" ON "public"."bonus_windows" FOR SELECT TO rowscope_tool
  USING ("public"."rowscope_role_profiles_role_1c02c849"());

-- data_records: model DataRecord, knowledge
GRANT SELECT ON "public"."data_records" TO rowscope_tool;
ALTER TABLE "public"."data_records" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_data_records_select" ON "public"."data_records";
CREATE POLICY "rowscope_data_records_select" ON "public"."data_records" FOR SELECT TO rowscope_tool
  USING ("projectId" IN (SELECT "public"."rowscope_project_readable"()));
GRANT INSERT, DELETE ON "public"."data_records" TO rowscope_tool;
DROP POLICY IF EXISTS "rowscope_data_records_insert" ON "public"."data_records";
CREATE POLICY "rowscope_data_records_insert" ON "public"."data_records" FOR INSERT TO rowscope_tool
  WITH CHECK ("projectId" IN (SELECT "public"."rowscope_project_writable"()));
DROP POLICY IF EXISTS "rowscope_data_records_delete" ON "public"."data_records";
CREATE POLICY "rowscope_data_records_delete" ON "public"."data_records" FOR DELETE TO rowscope_tool
  USING ("projectId" IN (SELECT "public"."rowscope_project_writable"()));

-- ingest_jobs: model IngestJob
GRANT SELECT ON "public"."ingest_jobs" TO rowscope_tool;
ALTER TABLE "public"."ingest_jobs" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_ingest_jobs_select" ON "public"."ingest_jobs";
CREATE POLICY "rowscope_ingest_jobs_select" ON "public"."ingest_jobs" FOR SELECT TO rowscope_tool
  USING ("projectId" IN (SELECT "public"."rowscope_project_readable"()));

-- likert_scores: model LikertScore
GRANT SELECT ON "public"."likert_scores" TO rowscope_tool;
ALTER TABLE "public"."likert_scores" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_likert_scores_select" ON "public"."likert_scores";
CREATE POLICY "rowscope_likert_scores_select" ON "public"."likert_scores" FOR SELECT TO rowscope_tool
  USING (("userId" = "public"."rowscope_subject"() OR "public"."rowscope_role_profiles_role_029c5763"()));

-- profiles: model Profile, role table, users
GRANT SELECT ON "public"."profiles" TO rowscope_tool;
ALTER TABLE "public"."profiles" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_profiles_select" ON "public"."profiles";
CREATE POLICY "rowscope_profiles_select" ON "public"."profiles" FOR SELECT TO rowscope_tool
  USING ("id" = "public"."rowscope_subject"()::uuid);

-- projects: model Project, access project
GRANT SELECT ON "public"."projects" TO rowscope_tool;
ALTER TABLE "public"."projects" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_projects_select" ON "public"."projects";
CREATE POLICY "rowscope_projects_select" ON "public"."projects" FOR SELECT TO rowscope_tool
  USING (("ownerId" = "public"."rowscope_subject"()::uuid OR "public"."rowscope_role_profiles_role_029c5763"()));

-- knowledge_chunks: rowscope's bookkeeping for the chunks of data_records
GRANT SELECT, INSERT, DELETE ON "public"."knowledge_chunks" TO rowscope_tool;
ALTER TABLE "public"."knowledge_chunks" ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "rowscope_data_records_chunks_select" ON "public"."knowledge_chunks";
CREATE POLICY "rowscope_data_records_chunks_select" ON "public"."knowledge_chunks" FOR SELECT TO rowscope_tool
  USING ("store" = 'data_records' AND "parent_id" IN (SELECT "public"."rowscope_project_readable"()::text));
DROP POLICY IF EXISTS "rowscope_data_records_chunks_insert" ON "public"."knowledge_chunks";
CREATE POLICY "rowscope_data_records_chunks_insert" ON "public"."knowledge_chunks" FOR INSERT TO rowscope_tool
  WITH CHECK ("store" = 'data_records' AND "parent_id" IN (SELECT "public"."rowscope_project_writable"()::text));
DROP POLICY IF EXISTS "rowscope_data_records_chunks_delete" ON "public"."knowledge_chunks";
CREATE POLICY "rowscope_data_records_chunks_delete" ON "public"."knowledge_chunks" FOR DELETE TO rowscope_tool
  USING ("store" = 'data_records' AND "parent_id" IN (SELECT "public"."rowscope_project_writable"()::text));

COMMIT;
