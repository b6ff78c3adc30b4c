"""`import-json`: the old JSON queue file (an array of flat message dicts) into the outbox.

Idempotent because the outbox and the target both key on message_id. Bad
entries are reported by index and skipped; the good ones are imported; the
file is only read.
"""

import json

from ..errors import InvalidMessage
from ..message import normalize
from ..progress import NO_PROGRESS

CHUNK = 500


def import_json_file(outbox, path, progress=NO_PROGRESS):
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidMessage(f"{path} is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InvalidMessage(f"{path} is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidMessage(f"{path} is nested too deeply to be a queue of messages") from None
    except OSError as e:
        raise InvalidMessage(f"{path} cannot be read: {e.strerror}") from None
    if isinstance(data, dict) and "message_id" in data:
        data = [data]
    if not isinstance(data, list):
        raise InvalidMessage(f"{path} must hold a JSON array of messages, not {type(data).__name__}")
    report = {"file": str(path), "total": len(data), "imported": 0, "duplicates": 0, "errors": []}
    good = []
    for index, entry in enumerate(data):
        try:
            good.append(normalize(entry))
        except InvalidMessage as e:
            report["errors"].append({"index": index, "error": str(e)})
    task = progress.task("importing", total=len(good))
    for start in range(0, len(good), CHUNK):
        chunk = good[start:start + CHUNK]
        for result in outbox.put_many(chunk):
            report["duplicates" if result.duplicate else "imported"] += 1
        task.advance(len(chunk))
    return report
