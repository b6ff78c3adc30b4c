"""Reads of the target, the archive itself: search (search.py) and statistics (stats.py)."""
