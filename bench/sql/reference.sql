-- The write set of a `scrip` update (merge attributes, replace tags, bump the version) as
-- PostgreSQL functions over profile-gateway's own tables, with the history record
-- profile-gateway writes too. Run by the benchmark after the migrations.
--
-- - `scrip_write` is the write alone. The raw baseline and the HTTP floor call it: they send no
--   change notice, so they stay above what profile-gateway, which sends one after each commit
--   (several in one statement), can do with the same SQL.
-- - `scrip_update` is `scrip_write` and a change notice sent in the transaction, the way a
--   function or trigger feeds PostGraphile's subscriptions. PostGraphile exposes it as its
--   `scripUpdate` mutation, and `scrip_write` as `scripWrite`, which the "no notice"
--   PostGraphile contender calls.
--
-- Bare names are columns; the parameters are always qualified (scrip_write.tags).
CREATE OR REPLACE FUNCTION scrip_write(profile_id uuid, attributes jsonb, tags text[])
RETURNS profiles
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
  updated profiles;
  keys text[] := ARRAY(SELECT DISTINCT k FROM unnest(coalesce(scrip_write.tags, '{}')) AS k);
BEGIN
  -- The row lock: a concurrent update of this profile waits here, then sees this one's result.
  UPDATE profiles AS p
     SET attributes = (p.attributes - ARRAY(SELECT e.key FROM jsonb_each(scrip_write.attributes) AS e
                                            WHERE e.value = 'null'::jsonb))
                      || jsonb_strip_nulls(scrip_write.attributes),
         version = p.version + 1,
         updated_at = now()
   WHERE p.id = scrip_write.profile_id AND p.status <> 'CLOSED'
  RETURNING * INTO updated;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no open profile %', scrip_write.profile_id USING ERRCODE = 'no_data_found';
  END IF;
  DELETE FROM profile_tags AS t WHERE t.profile_id = updated.id AND t.key <> ALL (keys);
  INSERT INTO profile_tags (profile_id, key, value)
  SELECT updated.id, k, NULL FROM unnest(keys) AS k
  ON CONFLICT (profile_id, key) DO UPDATE SET value = NULL
   WHERE profile_tags.value IS NOT NULL;
  INSERT INTO profile_changes (id, tenant_id, profile_id, version, operation, changes, at)
  VALUES (gen_random_uuid(), updated.tenant_id, updated.id, updated.version, 'updateProfile.scrip',
          jsonb_build_object('attributes', scrip_write.attributes, 'tags', to_jsonb(keys)),
          updated.updated_at);
  RETURN updated;
END
$$;

CREATE OR REPLACE FUNCTION scrip_update(profile_id uuid, attributes jsonb, tags text[])
RETURNS profiles
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  updated profiles := scrip_write(scrip_update.profile_id, scrip_update.attributes, scrip_update.tags);
BEGIN
  PERFORM pg_notify('profile_changes', json_build_object('tenant', updated.tenant_id,
                    'profile_id', updated.id, 'version', updated.version)::text);
  RETURN updated;
END
$$;
