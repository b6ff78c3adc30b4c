"""The ways in before the outbox, each ending in the same normalizer and the same commit: the webhook
(webhook.py, with Feishu's envelope in envelope.py and group commit in groupcommit.py), the spool
directory the OpenClaw hook writes (spool.py), the seed's in-process call (compat.py) and the old JSON
queue file (import_json.py)."""
