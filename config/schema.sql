-- The example schema of a Shopify app that the example rulebook tracks.
create table merchants (
  id bigserial primary key, shop_domain text not null unique, owner_name text, email text,
  plan_name text, current_monthly_total numeric(12,2), can_backdate boolean default false,
  onboarding_completed boolean default false, last_payout_fetch timestamptz,
  currency char(3), xero_connection_ok boolean default false,
  created_at timestamptz default now(), updated_at timestamptz default now());
alter table merchants replica identity full;
create table payouts (
  id bigserial primary key, merchant_id bigint not null references merchants,
  amount numeric(12,2) not null, currency char(3) not null, status text not null,
  created_at timestamptz default now());
-- What `replay --since` pages by (the rulebook's cursor, then the key).
create index on merchants (updated_at, id);
create index on payouts (created_at, id);
