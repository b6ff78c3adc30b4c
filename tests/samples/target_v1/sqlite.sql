-- The target's DDL as the release before events (issue 19) printed it with `outbox-relay schema --sql`:
-- an archive of that release is what tests/archive/test_migration.py migrates.
-- outbox-relay target schema for feishu_messages (sqlite), version 1
CREATE TABLE IF NOT EXISTS outbox_relay_schema (table_name varchar(130) PRIMARY KEY, version integer NOT NULL, applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
CREATE TABLE IF NOT EXISTS "feishu_messages" (
    message_id   TEXT PRIMARY KEY,
    chat_id      TEXT,
    chat_type    TEXT,
    thread_id    TEXT,
    root_id      TEXT,
    parent_id    TEXT,
    sender_id    TEXT,
    sender_type  TEXT,
    msg_type     TEXT NOT NULL,
    content      TEXT,
    text         TEXT NOT NULL DEFAULT '',
    mentions     TEXT,
    created_at   TEXT NOT NULL,
    source       TEXT NOT NULL,
    raw          TEXT,
    received_at  TEXT NOT NULL,
    relayed_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    outbox_host  TEXT,
    outbox_id    INTEGER
);
CREATE INDEX IF NOT EXISTS "feishu_messages_chat_created" ON "feishu_messages" (chat_id, created_at);
CREATE INDEX IF NOT EXISTS "feishu_messages_created" ON "feishu_messages" (created_at);
CREATE INDEX IF NOT EXISTS "feishu_messages_sender_created" ON "feishu_messages" (sender_id, created_at);
CREATE INDEX IF NOT EXISTS "feishu_messages_relayed" ON "feishu_messages" (relayed_at);
INSERT INTO outbox_relay_schema (table_name, version, applied_at) VALUES ('feishu_messages', 1, (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))) ON CONFLICT (table_name) DO UPDATE SET version = excluded.version, applied_at = excluded.applied_at;
