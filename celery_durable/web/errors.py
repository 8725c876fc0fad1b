"""The one error the console's functions raise for a request they refuse."""

from __future__ import annotations


class ConsoleError(Exception):
    """A request the console refuses: an HTTP status (4xx) and a message for people.

    Raised before anything is changed, so a refused request leaves the store as it was.

    Attributes:
        status: the HTTP status code to answer with.
        message: what was wrong and, where it helps, what to do instead.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
