"""Table definitions for both sides, versioned (the design card's "schema"): the outbox's SQLite tables
(outbox.py) and the target's table (target.py)."""

from .outbox import OUTBOX_MIGRATIONS, OUTBOX_VERSION  # noqa: F401
from .target import (  # noqa: F401
    COLUMNS,
    INDEXES,
    JSON_COLUMNS,
    TARGET_COLUMNS,
    VERSION_TABLE,
    check_table_name,
    column_lines,
    index_name,
    schema_sql,
    target_migrations,
)
