"""The one exception of PostgreSQL sources, and the one-line form of server messages."""


class QueryError(Exception):
    """A source that cannot be read; the message is for the operator (no trace, no password)."""


def one_line(message: str) -> str:
    return " ".join(message.split())
