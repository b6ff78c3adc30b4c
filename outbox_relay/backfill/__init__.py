"""Recover messages that never reached the archive from what other systems kept."""
