"""Realistic Feishu v2 `im.message.receive_v1` events: the sample's shape, mixed Chinese/English text.

Deterministic (seeded), so every system in a comparison gets exactly the same data.
"""

import json
import random

_PHRASES = (
    "今天下午三点开会，讨论 Q3 roadmap 和 outbox-relay 的上线计划。",
    "Please review the PR before EOD, 谢谢！",
    "数据库连接数又满了，RDS max_connections 只有 200 个。",
    "The deploy to staging failed: timeout after 30 s, 我再试一次。",
    "周报已经发到群里了，大家有空看一下 📊",
    "Can someone check why the webhook returns 503? 好像是磁盘满了。",
    "客户反馈消息丢失，需要排查 JSON 队列的 rotation 逻辑。",
    "LGTM 👍 合并吧。",
    "明天的 on-call 是谁？I will be offline from 9pm.",
    "新版本的延迟 p99 降到了 40 ms，比之前好很多。",
    "Reminder: 请在周五之前提交报销单 (expense report)。",
    "这个 bug 只在 PgBouncer transaction pooling 模式下出现。",
)
_SENDERS = [f"ou_{i:032x}" for i in range(37)]
_CHATS = [f"oc_{i:032x}" for i in range(11)]


def id_prefix(run):
    return "om_" + run[:8].ljust(8, "_")


def message_id(run, n):
    """A unique, sortable Feishu-style id: om_ + 32 characters."""
    return f"{id_prefix(run)}{n:024d}"


def text(rng, target_bytes=300):
    """Mixed Chinese/English text of about `target_bytes` UTF-8 bytes."""
    parts, size = [], 0
    while size < target_bytes:
        p = rng.choice(_PHRASES)
        parts.append(p)
        size += len(p.encode()) + 1
    return " ".join(parts)


def event(run, n, rng, create_ms=1700000000000):
    """One v2 event dict, shaped like tests/samples/v2_text.json."""
    sender = rng.choice(_SENDERS)
    mid = message_id(run, n)
    return {
        "schema": "2.0",
        "header": {
            "event_id": f"{rng.getrandbits(128):032x}",
            "event_type": "im.message.receive_v1",
            "create_time": str(create_ms + n),
            "token": "rvaYgkND1GOiu5MM0E1rncYC6PLtF7JV",
            "app_id": "cli_9f5343c580712544",
            "tenant_key": "2ca1d211f64f6438",
        },
        "event": {
            "sender": {
                "sender_id": {"union_id": "on_" + sender[3:], "user_id": sender[-8:], "open_id": sender},
                "sender_type": "user",
                "tenant_key": "736588c9260f175e",
            },
            "message": {
                "message_id": mid,
                "root_id": "",
                "parent_id": "",
                "create_time": str(create_ms + n),
                "update_time": str(create_ms + n),
                "chat_id": rng.choice(_CHATS),
                "chat_type": "group",
                "message_type": "text",
                "content": json.dumps({"text": "@_user_1 " + text(rng)}, ensure_ascii=False),
                "mentions": [{
                    "key": "@_user_1",
                    "id": {"union_id": "on_8ed6aa67826108097d9ee143816345", "user_id": "e33ggbyz",
                           "open_id": "ou_84aad35d084aa403a838cf73ee18467"},
                    "name": "Tom",
                    "tenant_key": "736588c9260f175e",
                }],
                "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) Lark/6.7.5",
            },
        },
    }


def events(run, count, start=0, seed=6):
    rng = random.Random(f"{seed}-{run}")
    return [event(run, start + i, rng) for i in range(count)]


def body(ev):
    """The HTTP body Feishu would send: compact UTF-8 JSON."""
    return json.dumps(ev, ensure_ascii=False, separators=(",", ":")).encode()
