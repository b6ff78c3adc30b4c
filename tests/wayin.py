"""One Feishu message, four ways in: what each way's row must hold, given the webhook's row.

The README's field x way-in table ("One message, one row") says the same; this module is what the
tests check it with: tests/message/test_openclaw_rows.py on the payloads captured from the real
gateway (tests/samples/openclaw_gateway/), tests/intake/test_openclaw_gateway.py on the rows the real
gateway's hook, `backfill openclaw` and `backfill feishu` put into the archive.

``expected(kind, way, webhook_row)`` is the webhook's row with each documented difference applied;
every field not named by a difference must be equal. ``kind`` is a name of
openclawgateway.event_builders() (or "reply").
"""

FIELDS = ("message_id", "chat_id", "chat_type", "sender_id", "msg_type", "text", "mentions", "parent_id",
          "root_id", "thread_id", "created_at")
WAYS = ("webhook", "hook", "backfill openclaw", "backfill feishu")
OPENCLAW_WAYS = ("hook", "backfill openclaw")

# What OpenClaw gives for the types it renders as words (its rendering: parseMessageContent in
# @openclaw/feishu): the msg_type is not in the hook's event nor in the transcript, so these are text.
RENDERED = {
    "post": ("周报\n\n**本周进度：**[报告](https://example.com/report)@Tom\n\n数据库迁移完成 SMILE\n"
             "```GO\nfunc main() {}\n```"),
    "sticker": '<sticker key="v3_sticker_0001"/>',
    "interactive": "部署通知\n**v2.3** 已上线\n查看",
    "merge_forward": "[Merged and Forwarded Messages]\n- 原来的第一条消息\n- [Image]\n- [File: 纪要.docx]",
}
RENDERED["post_locale"] = RENDERED["post"]


def row_of(message_or_row):
    """The compared fields of a Message or of a target row (a dict)."""
    get = message_or_row.get if isinstance(message_or_row, dict) else lambda f: getattr(message_or_row, f)
    row = {f: get(f) for f in FIELDS}
    row["mentions"] = mention_ids(row["mentions"])
    for f in ("parent_id", "root_id", "thread_id"):
        row[f] = row[f] or None  # '' and NULL alike: no such id
    return row


def mention_ids(mentions):
    """Mentions as (open_id, name): the event's form carries key, union_id, user_id and tenant_key
    besides, which only the webhook has (the Open API names one id, OpenClaw only the open_id)."""
    out = []
    for m in mentions or ():
        ident = m.get("id") if isinstance(m, dict) else None
        out.append(((ident or {}).get("open_id") if isinstance(ident, dict) else ident, m.get("name")))
    return out


def expected(kind, way, webhook, bot_open_id=None):
    """The row `way` must give for the message whose webhook row (row_of) is `webhook`."""
    row = dict(webhook)
    if way == "webhook":
        return row
    if way == "backfill feishu":
        # The Open API item has no chat_type: groups the bot lists are `group`, any other chat (a
        # p2p one, read because the archive holds it) has none.
        if row["chat_type"] != "group":
            row["chat_type"] = None
        return row
    # The hook's event and the transcript line: OpenClaw's view of the message.
    row["root_id"] = row["thread_id"] = None  # neither names them (default groupSessionScope "group")
    if way == "hook":
        row["parent_id"] = None  # not mapped into message:received; the transcript has replyToId
        if row["chat_type"] == "p2p":
            row["chat_id"] = row["sender_id"]  # conversationId user:<open_id>: no p2p oc_ id in the event
    if kind in RENDERED:
        row["msg_type"], row["text"] = "text" if not kind.startswith("post") else "post", RENDERED[kind]
        row["mentions"] = []  # a post's `at` is rendered as @name, without its id
    if bot_open_id is not None and any(oid == bot_open_id for oid, _ in row["mentions"]):
        # OpenClaw removes a mention of the bot itself (normalizeMentions), from the words too.
        bot = [name for oid, name in row["mentions"] if oid == bot_open_id]
        row["mentions"] = [m for m in row["mentions"] if m[0] != bot_open_id]
        for name in bot:
            row["text"] = row["text"].replace(" @" + name, "").replace("@" + name + " ", "").replace("@" + name, "")
        row["text"] = row["text"].strip()
    return row


def differences(kind, way, got, webhook, bot_open_id=None):
    """[(field, expected, got)] where `got` (row_of) is not what `way` must give."""
    want = expected(kind, way, webhook, bot_open_id)
    return [(f, want[f], got[f]) for f in FIELDS if want[f] != got[f]]
