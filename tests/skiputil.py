"""What a test needs from the machine (a database server, Node, systemd-analyze, a mount): when it
is missing the test is skipped on a developer's machine but fails in CI, so CI can never go green
by skipping."""

import pytest

from serverproc import in_ci

__all__ = ["unavailable"]


def unavailable(reason):
    """Skip locally, fail in CI ($CI set to anything but "", "0", "false")."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)
