"""A stand-in mail service for the schedule example: mails are lines in a file that every
worker process shares (``MAILBOX``, default ``mailbox.txt``)."""

from __future__ import annotations

import os


def send(to: str, subject: str) -> None:
    """Deliver a mail."""
    with open(os.environ.get("MAILBOX", "mailbox.txt"), "a", encoding="utf-8") as box:
        box.write(f"{to}\t{subject}\n")


def received(to: str) -> list[str]:
    """The subjects ``to`` received, in order."""
    try:
        with open(os.environ.get("MAILBOX", "mailbox.txt"), encoding="utf-8") as box:
            return [
                line.rstrip("\n").split("\t", 1)[1] for line in box if line.startswith(f"{to}\t")
            ]
    except FileNotFoundError:
        return []
