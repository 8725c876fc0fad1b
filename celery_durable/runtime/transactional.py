"""Running a ``@durable.step(transactional=True)``: its writes and its outcome in one
transaction of the store's database (``Store.run_step_in_transaction``).

The step's function gets the transaction's SQLAlchemy ``Connection`` first. Celery's
retry options still apply, outside the transaction: a retry (``self.retry()`` or
``autoretry_for``) rolls the step's writes back with everything else, then the retry is
journaled and published as for any step. A crash before the commit undoes the writes
too, and the step is sent again: its effect happens exactly once.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from celery.exceptions import Retry
from celery.utils.time import get_exponential_backoff_interval

from celery_durable.errors import ConfigurationError, StoreError

if TYPE_CHECKING:
    from datetime import datetime

    from celery_durable.runtime.orchestrator import Loaded
    from celery_durable.runtime.steps import DurableStep
    from celery_durable.stores.step_transactions import StepTransaction

logger = logging.getLogger("celery_durable")

_Retry = tuple[str, int, int, "datetime"]

_deferred: contextvars.ContextVar[list[_Retry] | None] = contextvars.ContextVar(
    "celery_durable_step_transaction", default=None
)
"""While a transactional step's body runs: the retries it asked for, journaled after
its transaction is rolled back (journaling them inside would wait on its own locks)."""


def in_transaction(task: DurableStep, retry: _Retry) -> bool:
    """Defer journaling ``retry`` if a step transaction is running here."""
    deferred = _deferred.get()
    if deferred is None:
        return False
    deferred.append(retry)
    return True


def run_transactional(
    task: DurableStep,
    identity: tuple[str, int, int],
    journal: Loaded | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[BaseException | None, Any]:
    """Run the step's body and journal its outcome in one transaction.

    Returns:
        ``(None, result)``, or ``(exception, None)`` for a step that raised (its failure
        is journaled, its writes rolled back); ``(None, None)`` when the step was not
        pending any more (nothing ran).

    Raises:
        Retry: Celery retries the step (nothing of this run was written).
        ConfigurationError: the store is not a SQL store.
    """
    # Imported here: importing celery_durable must not load SQLAlchemy (it is loaded with
    # the store, on first use).
    from celery_durable.stores.step_transactions import RetryStep, StepTransactions

    durable = task.durable
    store: Any = durable.store
    django = task.transactional == "django"
    if django:
        from celery_durable.contrib.django import DjangoStepTransactions

        store = DjangoStepTransactions()
    elif not isinstance(store, StepTransactions):
        raise ConfigurationError(
            f"step {task.name} is transactional=True, which needs a SQL store (SQLite or "
            f"PostgreSQL) to run in; durable_store is {store!r}"
        )
    workflow_id, run, seq = identity
    serializer = journal[0].serializer if journal is not None else None
    encode = durable.codec(serializer).dumps
    # Without Celery's autoretry wrapper: a retry must happen outside the transaction.
    body: Callable[..., Any] = getattr(task, "_orig_run", None) or task.run
    deferred: list[_Retry] = []

    def attempt(call: Callable[[Any], Any]) -> StepTransaction:
        now = durable.now()
        done: StepTransaction = store.run_step_in_transaction(
            workflow_id,
            run,
            seq,
            task.name,
            call,
            encode,
            at=now,
            wake_by=now + durable.redrive_after,
            retry_on=lambda exc: _wants_retry(task, exc),
        )
        return done

    cause: BaseException | None = None
    token = _deferred.set(deferred)
    try:
        if django:  # the step writes with the ORM, in the atomic block
            done = attempt(lambda _: body(*args, **kwargs))
        else:
            done = attempt(lambda conn: body(conn, *args, **kwargs))
    except RetryStep as retry:
        cause = retry.cause
    finally:
        _deferred.reset(token)
    if cause is not None:
        if isinstance(cause, Retry):  # self.retry() in the body: its message is sent
            for wid, r, s, due in deferred:
                try:
                    durable.store.reschedule_step(wid, r, s, due, due + durable.redrive_after)
                except StoreError as exc:
                    logger.warning("step %s: cannot journal its retry (%s)", task.request.id, exc)
            raise cause
        try:
            _autoretry(task, cause)
        except Retry:
            raise
        except Exception as final:  # retries used up: journal the failure
            error = final
        attempt(lambda conn: _raise(error))
        return error, None
    if not done.ran:
        logger.info("step %s of %s is not pending any more; not run", seq, workflow_id)
        return None, None
    return done.error, done.result


def _wants_retry(task: DurableStep, exc: BaseException) -> bool:
    if isinstance(exc, Retry):
        return True
    retry_for = tuple(getattr(task, "autoretry_for", ()) or ())
    never = tuple(getattr(task, "dont_autoretry_for", ()) or ())
    return bool(retry_for) and isinstance(exc, retry_for) and not isinstance(exc, never)


def _autoretry(task: DurableStep, exc: BaseException) -> NoReturn:
    """What Celery's ``autoretry_for`` wrapper does with ``exc``: retry with the task's
    ``retry_kwargs`` and backoff options (raises ``Retry``, or ``exc`` once retries are
    used up)."""
    options = dict(getattr(task, "retry_kwargs", None) or {})
    backoff = getattr(task, "retry_backoff", False)
    if backoff:
        options["countdown"] = get_exponential_backoff_interval(
            factor=int(max(1.0, backoff)),
            retries=task.request.retries,
            maximum=getattr(task, "retry_backoff_max", 600),
            full_jitter=getattr(task, "retry_jitter", True),
        )
    raise task.retry(exc=exc, **options)


def _raise(exc: BaseException) -> Any:
    raise exc
