-- The target's DDL as the release before events (issue 19) printed it with `outbox-relay schema --sql`:
-- an archive of that release is what tests/archive/test_migration.py migrates.
-- outbox-relay target schema for feishu_messages (postgresql), version 1
CREATE TABLE IF NOT EXISTS outbox_relay_schema (table_name varchar(130) PRIMARY KEY, version integer NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS "feishu_messages" (
    message_id   varchar(128) PRIMARY KEY,
    chat_id      varchar(128),
    chat_type    varchar(64),
    thread_id    varchar(128),
    root_id      varchar(128),
    parent_id    varchar(128),
    sender_id    varchar(128),
    sender_type  varchar(64),
    msg_type     varchar(64) NOT NULL,
    content      jsonb,
    text         text NOT NULL DEFAULT '',
    mentions     jsonb,
    created_at   timestamptz NOT NULL,
    source       varchar(32) NOT NULL,
    raw          jsonb,
    received_at  timestamptz NOT NULL,
    relayed_at   timestamptz NOT NULL DEFAULT now(),
    outbox_host  varchar(255),
    outbox_id    bigint
);
CREATE INDEX IF NOT EXISTS "feishu_messages_chat_created" ON "feishu_messages" (chat_id, created_at);
CREATE INDEX IF NOT EXISTS "feishu_messages_created" ON "feishu_messages" (created_at);
CREATE INDEX IF NOT EXISTS "feishu_messages_sender_created" ON "feishu_messages" (sender_id, created_at);
CREATE INDEX IF NOT EXISTS "feishu_messages_relayed" ON "feishu_messages" (relayed_at);
-- Optional, for fast substring search (needs the pg_trgm extension):
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX IF NOT EXISTS "feishu_messages_text_trgm" ON "feishu_messages" USING gin (text gin_trgm_ops);
INSERT INTO outbox_relay_schema (table_name, version, applied_at) VALUES ('feishu_messages', 1, now()) ON CONFLICT (table_name) DO UPDATE SET version = excluded.version, applied_at = excluded.applied_at;
