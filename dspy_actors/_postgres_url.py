"""A PostgreSQL URL as messages and logs may show it: without its password.

Shared by the runtime's stores and the LM cache's shared tier (both layers may import it).
"""

from __future__ import annotations

__all__ = ["display_url", "is_database_url"]


def is_database_url(where: object) -> bool:
    """True for a PostgreSQL URL (``postgresql://`` or ``postgres://``)."""
    return isinstance(where, str) and where.startswith(("postgresql://", "postgres://"))


def display_url(url: str) -> str:
    """``url`` without its password (or any other parameter), for messages and logs."""
    from psycopg import ProgrammingError, conninfo  # the postgres extra

    try:
        params = conninfo.conninfo_to_dict(url)
    except ProgrammingError:
        return "<an unparsable PostgreSQL URL>"
    user = params.get("user")
    host = params.get("host") or "localhost"
    port = params.get("port")
    db = params.get("dbname") or ""
    return f"postgresql://{f'{user}@' if user else ''}{host}{f':{port}' if port else ''}/{db}"
