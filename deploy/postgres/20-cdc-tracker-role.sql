-- The role cdc-tracker connects as, with only what it needs: the REPLICATION
-- attribute (slot and logical decoding), SELECT on the tracked tables, and CREATE
-- on the database for its own schema (dead letters and checkpoints).
create role cdc_tracker login replication password 'cdc_tracker';
grant select on merchants, payouts to cdc_tracker;
do $$
begin
  execute format('grant create on database %I to cdc_tracker', current_database());
end
$$;
