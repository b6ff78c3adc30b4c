"""The import path users of the seed wired in (`from outbox_relay.compat import FeishuMessageSync`,
README: "Replacing the old cron"), kept working; the code is in intake/compat.py."""

from .intake.compat import FeishuMessageSync, seed_payload  # noqa: F401
