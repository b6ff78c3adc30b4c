"""Every accepted input shape -> one `Message` (pure: no I/O)."""

from .shapes import (  # noqa: F401
    MAX_MESSAGE_BYTES, RECALLED_TEXT, SHAPES, SOURCES, Message, detect, extract_text, normalize, parse_payload,
    parse_timestamp)
