"""A synthetic Chinese chat archive made inside the server (fast: no row crosses the wire), for the
search and stats tests and `make bench-archive`. Each message is 3-14 words of a vocabulary of
everyday Chinese chat words, English words in three cases, emoji, and the characters LIKE treats
specially (%, _, \\); a few words are rare on purpose (RARE: one message in RARE_EVERY). created_at
is unique per row (7 s apart, newest = row 1), so "newest first" has one answer; each was received
and relayed a second after it was sent, as in a live archive.

    fill_sql(dialect, first, last) -> one INSERT … SELECT of rows first..last (PostgreSQL or MySQL)
"""

WORDS = [
    "今天", "明天", "我们", "大家", "会议", "开会", "测试", "项目", "进度", "上线", "发布", "需求", "评审", "代码",
    "周报", "日报", "客户", "产品", "设计", "文档", "问题", "修复", "已经", "完成", "一下", "确认", "收到", "好的",
    "谢谢", "辛苦了", "没问题", "稍等", "马上", "下午", "上午", "晚上", "时间", "安排", "同步", "一下子", "服务器",
    "数据库", "接口", "报错", "日志", "监控", "告警", "排查", "回滚", "版本", "分支", "合并", "的", "了", "是",
    "在", "吗", "吧", "呢", "，", "。", "！", "？", " ", " ", "Deploy", "deploy", "DEPLOY", "OK", "bug", "PR",
    "meeting", "Review", "100%", "50%", "a_b", "file_name", "C:\\temp", "\\n", "👍", "🎉", "😂", "🙏", "好的👍",
    "测试环境", "生产环境", "代码评审通过", "会议纪要", "PR已合并", "bug修复", "x\ue000y",
]
RARE_EVERY = 997
RARE = "罕见词语鑫"  # one message in RARE_EVERY ends with it: "罕", "罕见", "罕见词", "罕见词语鑫" are rare
EPOCH_S = 1_767_225_600  # 2026-01-01T00:00:00Z; row g was created EPOCH_S - 7 g seconds
CHATS, SENDERS = 50, 300


def _literal(word, dialect):
    escaped = word.replace("'", "''")
    if dialect == "mysql":
        escaped = escaped.replace("\\", "\\\\")
    return f"'{escaped}'"


def fill_sql(dialect, first, last, table="feishu_messages"):
    """INSERT … SELECT of rows first..last; the same text for row g on both servers is not promised
    (each server's own hash picks the words), the distribution is."""
    words = ", ".join(_literal(w, dialect) for w in WORDS)
    n = len(WORDS)
    if dialect == "postgresql":
        pick = f"(ARRAY[{words}])[1 + abs(hashint8(g::bigint * 7919 + k)) % {n}]"
        text = (f"(SELECT string_agg({pick}, '' ORDER BY k) FROM generate_series(1, 3 + g % 12) AS k)"
                f" || CASE WHEN g % {RARE_EVERY} = 0 THEN '{RARE}' ELSE '' END")
        return (f"INSERT INTO {table} (message_id, chat_id, sender_id, msg_type, text, created_at, source,"
                f" received_at, relayed_at) SELECT 'g_' || g, 'oc_' || (g % {CHATS}), 'ou_' || (g * 7 % {SENDERS}),"
                f" CASE g % 20 WHEN 0 THEN 'post' WHEN 1 THEN 'image' ELSE 'text' END, {text},"
                f" to_timestamp({EPOCH_S} - 7 * g::bigint), 'api', to_timestamp({EPOCH_S} - 7 * g::bigint + 1),"
                f" to_timestamp({EPOCH_S} - 7 * g::bigint + 1) FROM generate_series({first}, {last}) AS g")
    pick = f"ELT(1 + (CRC32(s.seq * 7919 + k.seq) % {n}), {words})"
    text = (f"CONCAT(GROUP_CONCAT({pick} ORDER BY k.seq SEPARATOR ''),"
            f" IF(s.seq % {RARE_EVERY} = 0, '{RARE}', ''))")
    return (f"INSERT INTO {table} (message_id, chat_id, sender_id, msg_type, text, created_at, source, received_at,"
            f" relayed_at)"
            f" SELECT CONCAT('g_', s.seq), CONCAT('oc_', s.seq % {CHATS}), CONCAT('ou_', s.seq * 7 % {SENDERS}),"
            f" ELT(1 + (s.seq % 20 = 1) + 2 * (s.seq % 20 > 1), 'post', 'image', 'text'), {text},"
            f" FROM_UNIXTIME({EPOCH_S} - 7 * s.seq), 'api', FROM_UNIXTIME({EPOCH_S} - 7 * s.seq + 1),"
            f" FROM_UNIXTIME({EPOCH_S} - 7 * s.seq + 1)"
            f" FROM seq_{first}_to_{last} AS s JOIN seq_1_to_14 AS k ON k.seq <= 3 + s.seq % 12 GROUP BY s.seq")
