"""Patches: changing workflow code while instances of it are in flight.

``if ctx.patched("id"):`` lets new code and old journals live together. The first time a
run reaches the call on new ground (past the end of its journal), it journals a PATCH
marker named ``id`` and answers ``True``: the run takes the new branch, and every replay
of it finds the marker at that seq and answers ``True`` again. A journal written before
the patch existed has no marker there (it holds whatever the old code did next), so the
call answers ``False`` without consuming anything and the run replays the old branch.
An instance that had not reached the call when the patch was deployed takes the new one.

A run answers once per id: later calls with the same id give the first answer without
touching the journal, so ``if ctx.patched("x")`` may guard several places.

Markers have no effect of their own, so replay passes over markers the code does not ask
for (a retired patch's, in the journals that recorded it). Retiring a patch therefore
takes one deploy, once no open instance replays the old branch
(``celery -A app durable patches`` says so): replace ``if ctx.patched("x"): new else:
old`` with the new code alone, optionally after ``ctx.deprecate_patch("x")``, which says
so in the code, consumes the marker where a journal holds one and journals nothing.
Removing the old branch too early is still caught: the old journals then hold the old
branch's commands where the code asks for others.
"""

from __future__ import annotations

from celery_durable.engine.awaitables import _Cursor
from celery_durable.engine.journal import Event, Kind, State

MAX_PATCH_ID = 255
"""The longest patch id: it is journaled as the marker's name."""


def check_patch_id(patch_id: object, call: str) -> str:
    """``patch_id`` if it can name a marker.

    Raises:
        TypeError: not a string.
        ValueError: empty or longer than :data:`MAX_PATCH_ID` characters.
    """
    if not isinstance(patch_id, str):
        raise TypeError(f"{call} takes a patch id string, got {type(patch_id).__name__!r}")
    if not patch_id or len(patch_id) > MAX_PATCH_ID:
        raise ValueError(
            f"{call} needs a patch id of 1 to {MAX_PATCH_ID} characters, got {patch_id!r}"
        )
    return patch_id


def skip_markers(cursor: _Cursor) -> None:
    """Move the cursor past the patch markers at it (the code asked for a command)."""
    journal = cursor.journal
    while cursor.seq < len(journal) and journal[cursor.seq].kind == Kind.PATCH:
        cursor.seq += 1


def _command_ahead(cursor: _Cursor) -> bool:
    """True if the journal holds a command (not only markers) from the cursor on."""
    journal = cursor.journal
    return any(event.kind != Kind.PATCH for event in journal[cursor.seq :])


def _marker_ahead(cursor: _Cursor, patch_id: str) -> int | None:
    """The seq of ``patch_id``'s marker among the markers at the cursor, if there."""
    journal = cursor.journal
    seq = cursor.seq
    while seq < len(journal) and journal[seq].kind == Kind.PATCH:
        if journal[seq].name == patch_id and seq not in cursor.taken:
            return seq
        seq += 1
    return None


def _take(cursor: _Cursor, seq: int) -> None:
    """Answer the marker at ``seq``; the cursor moves past the markers answered so far
    (a marker further on waits for its own call: patches met in another order)."""
    cursor.taken.add(seq)
    journal = cursor.journal
    while cursor.seq in cursor.taken and cursor.seq < len(journal):
        cursor.seq += 1


def patched(cursor: _Cursor, patch_id: str) -> bool:
    """``ctx.patched(patch_id)`` at the cursor (see the module's docstring)."""
    check_patch_id(patch_id, "ctx.patched()")
    answer = cursor.patches.get(patch_id)
    if answer is not None:
        return answer
    found = _marker_ahead(cursor, patch_id)
    if cursor.discarding:
        # A ``finally`` block run while the engine closes the coroutine: nothing is
        # journaled then; answer as the journal does.
        return found is not None
    if found is not None:
        _take(cursor, found)
        answer, how = True, "marker"
    elif _command_ahead(cursor):
        answer, how = False, "old"  # written by code before the patch: the old branch
    else:
        skip_markers(cursor)  # other patches' markers, then new ground
        if not cursor.checking:
            cursor.new_events.append(
                Event(
                    seq=cursor.seq,
                    kind=Kind.PATCH,
                    name=patch_id,
                    input=None,
                    state=State.COMPLETED,
                    scheduled_at=cursor.now,
                    completed_at=cursor.now,
                )
            )
        cursor.seq += 1
        answer, how = True, "new"
    cursor.patches[patch_id] = answer
    cursor.patch_log.append((patch_id, how))
    return answer


def deprecate_patch(cursor: _Cursor, patch_id: str) -> None:
    """``ctx.deprecate_patch(patch_id)``: consume the marker where the journal holds one."""
    check_patch_id(patch_id, "ctx.deprecate_patch()")
    if patch_id in cursor.patches or cursor.discarding:
        return
    found = _marker_ahead(cursor, patch_id)
    if found is not None:
        _take(cursor, found)
        cursor.patch_log.append((patch_id, "marker"))
    cursor.patches[patch_id] = True
