-- The target's DDL as the release before events (issue 19) printed it with `outbox-relay schema --sql`:
-- an archive of that release is what tests/archive/test_migration.py migrates.
-- outbox-relay target schema for feishu_messages (mysql), version 1
CREATE TABLE IF NOT EXISTS outbox_relay_schema (table_name varchar(130) PRIMARY KEY, version integer NOT NULL, applied_at datetime(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3));
CREATE TABLE IF NOT EXISTS `feishu_messages` (
    message_id   varchar(128) PRIMARY KEY,
    chat_id      varchar(128),
    chat_type    varchar(64),
    thread_id    varchar(128),
    root_id      varchar(128),
    parent_id    varchar(128),
    sender_id    varchar(128),
    sender_type  varchar(64),
    msg_type     varchar(64) NOT NULL,
    content      json,
    text         longtext NOT NULL,
    mentions     json,
    created_at   datetime(3) NOT NULL,
    source       varchar(32) NOT NULL,
    raw          json,
    received_at  datetime(3) NOT NULL,
    relayed_at   datetime(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    outbox_host  varchar(255),
    outbox_id    bigint,
    KEY `feishu_messages_chat_created` (chat_id, created_at),
    KEY `feishu_messages_created` (created_at),
    KEY `feishu_messages_sender_created` (sender_id, created_at),
    KEY `feishu_messages_relayed` (relayed_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT INTO outbox_relay_schema (table_name, version, applied_at) VALUES ('feishu_messages', 1, CURRENT_TIMESTAMP(3)) ON DUPLICATE KEY UPDATE version = VALUES(version), applied_at = VALUES(applied_at);
