"""The plain text of a message, for search: text -> its text (mentions named), post -> its runs joined,
anything else -> a short placeholder. Pure: no I/O."""

import re

from .fields import MAX_MESSAGE_BYTES


def strip_at_tags(text):
    """`<at open_id="…">@name</at>` -> `@name`, exactly what the regex `<at\\b[^>]*>(.*?)</at>` would
    replace, in one pass: the regex rescans to the end for every unclosed `<at`, which is quadratic
    (a 160 KB body of "<at>" took 28 s)."""
    out, pos = [], 0
    start = text.find("<at", pos)
    while start >= 0:
        if re.match(r"\w", text[start + 3:start + 4]):  # `<attr`: not an at tag
            start = text.find("<at", start + 3)
            continue
        # No `>` or `</at>` after this point means no later tag can match either.
        open_end = text.find(">", start + 3)
        if open_end < 0:
            break
        close = text.find("</at>", open_end + 1)
        if close < 0:
            break
        out.append(text[pos:start])
        out.append(text[open_end + 1:close])
        pos = close + 5
        start = text.find("<at", pos)
    out.append(text[pos:])
    return "".join(out)



_PLACEHOLDERS = {
    "image": "[image]", "file": "[file]", "audio": "[audio]", "media": "[video]",
    "sticker": "[sticker]", "interactive": "[card]", "share_chat": "[shared chat]",
    "share_user": "[shared contact]", "location": "[location]", "video_chat": "[video call]",
    "merge_forward": "[forwarded messages]", "system": "[system]", "hongbao": "[red packet]",
    "todo": "[todo]", "vote": "[vote]", "calendar": "[calendar]", "share_calendar_event": "[calendar]",
}
_POST_LOCALES = ("zh_cn", "en_us", "ja_jp")


def extract_text(msg_type, content, mentions=()):
    """Plain text for search: text -> text, post -> its runs joined, others -> a placeholder."""
    if msg_type == "text" and isinstance(content, dict):
        text = content.get("text")
        text = text if isinstance(text, str) else ""
        for m in mentions or ():
            if isinstance(m, dict) and isinstance(m.get("key"), str) and isinstance(m.get("name"), str):
                key, name = m["key"], "@" + m["name"]
                # An empty or one-letter key with a long name would multiply the text (gigabytes
                # from a 1 MB payload); real keys are "@_user_N" and names are short.
                if key and len(text) + text.count(key) * (len(name) - len(key)) <= MAX_MESSAGE_BYTES:
                    text = text.replace(key, name)
        return text
    if msg_type == "post" and isinstance(content, dict):
        return _post_text(content)
    if msg_type == "file" and isinstance(content, dict) and isinstance(content.get("file_name"), str):
        return f"[file] {content['file_name']}"
    return _PLACEHOLDERS.get(msg_type, f"[{msg_type}]")


def _post_text(content):
    body = content
    if "content" not in content:
        # A locale wrapper: {"zh_cn": {"title": …, "content": […]}, "en_us": …}
        wrapped = [content[k] for k in _POST_LOCALES if isinstance(content.get(k), dict)]
        wrapped += [v for k, v in content.items() if k not in _POST_LOCALES and isinstance(v, dict)]
        body = wrapped[0] if wrapped else {}
    lines = []
    title = body.get("title")
    if isinstance(title, str) and title:
        lines.append(title)
    paragraphs = body.get("content")
    for para in paragraphs if isinstance(paragraphs, list) else ():
        runs = para if isinstance(para, list) else [para]
        line = "".join(_run_text(r) for r in runs if isinstance(r, dict))
        if line:
            lines.append(line)
    return "\n".join(lines)


def _run_text(run):
    tag = run.get("tag")
    if tag in ("text", "a", "code_block", "md"):
        text = run.get("text")
        return text if isinstance(text, str) else ""
    if tag == "at":
        name = run.get("user_name") or run.get("user_id")
        return "@" + name if isinstance(name, str) else ""
    if tag == "img":
        return "[image]"
    if tag == "media":
        return "[video]"
    if tag == "emotion":
        emoji = run.get("emoji_type")
        return f"[{emoji}]" if isinstance(emoji, str) else ""
    return ""
