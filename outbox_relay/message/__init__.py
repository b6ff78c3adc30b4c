"""Every accepted input shape -> one `Message`, or one `Event` about a message (pure: no I/O). model.py
is the Message, events.py the Event (edits, recalls, reactions), shapes.py the shapes and the
normalizer, fields.py the rules a shape reads its fields by, text.py the searchable text,
openclaw_text.py the text OpenClaw writes into a transcript line."""

from .events import Event, restore  # noqa: F401
from .fields import MAX_MESSAGE_BYTES, parse_timestamp  # noqa: F401
from .model import Message, parse_payload  # noqa: F401
from .shapes import RECALLED_TEXT, SHAPES, SOURCES, detect, normalize, parse_lines  # noqa: F401
from .text import extract_text  # noqa: F401
