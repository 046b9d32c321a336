"""What leaves the agent is masked: results, failures and heartbeats of its activities.

A task's output is masked as it streams (`activities/logs.py` `SecretMasker`), but
Stageflow's own strings can carry a secret too: an error quoting a `working_dir`
or a URL rendered from one, a template's target path. Rather than masking each
message where it is made (and forgetting one), every agent activity is wrapped
by `masks_secrets`: whatever it returns or raises, and every heartbeat sent
through `heartbeat`, has the secret values of its request masked before
Temporal sees it (and so before workflow histories, `release show` and the
Web UI do). The log's own lines are masked by `LogWriter.note`, with the same
masker (`running_masker`).
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError, FailureError

from activities.logs import SecretMasker

R = TypeVar("R")
Req = TypeVar("Req")

NO_SECRETS = SecretMasker([])
# Errors chained by `raise … from …` travel with the failure; masked this deep.
MAX_CAUSES = 8

_running: contextvars.ContextVar[SecretMasker] = contextvars.ContextVar(
    "stageflow_running_masker", default=NO_SECRETS
)


class KnowsSecrets(Protocol):
    def secret_values(self, request: Any) -> list[str]:
        """The secret values a request's step works with (those that resolve)."""
        ...


def masks_secrets(
    method: Callable[[Any, Req], Awaitable[R]],
) -> Callable[[Any, Req], Awaitable[R]]:
    """Wrap an agent activity (a method taking one request) so nothing it sends back
    holds a secret of that request: its result's strings, the message and details
    of what it raises (re-raised as an `ApplicationError` of the same type and
    retry policy), and its heartbeats. Put it under `@activity.defn`."""

    @functools.wraps(method)
    async def masked_activity(self: KnowsSecrets, request: Req) -> R:
        masker = SecretMasker(self.secret_values(request))
        token = _running.set(masker)
        try:
            result = await method(self, request)
        except Exception as err:
            if not masker.values or (
                isinstance(err, FailureError) and not isinstance(err, ApplicationError)
            ):
                raise  # nothing to mask, or Temporal's own (a cancel)
            # Not `from None`: that would drop the masked causes. The original error
            # stays out of the failure: masked_error suppresses it as the context.
            raise masked_error(err, masker)  # noqa: B904
        finally:
            _running.reset(token)
        return masked(result, masker)

    masked_activity.__stageflow_masks_secrets__ = True  # type: ignore[attr-defined]
    return masked_activity


def is_masked(fn: Callable[..., Any]) -> bool:
    """Whether an activity is wrapped by `masks_secrets` (tests check every one is)."""
    return bool(getattr(fn, "__stageflow_masks_secrets__", False))


def running_masker() -> SecretMasker:
    """The masker of the agent activity running in this context (none outside one)."""
    return _running.get()


def heartbeat(*details: Any) -> None:
    """`activity.heartbeat`, with the running activity's secrets masked in the details."""
    masker = _running.get()
    activity.heartbeat(*(masked(d, masker) for d in details))


def masked(value: R, masker: SecretMasker) -> R:
    """`value` with every string in it masked: pydantic models, lists, dicts, tuples."""
    if not masker.values:
        return value
    return _masked(value, masker)


def _masked(value: Any, masker: SecretMasker) -> Any:
    if isinstance(value, str):
        return masker.mask(value)
    if isinstance(value, BaseModel):
        changes = {}
        for name in type(value).model_fields:
            current = getattr(value, name)
            new = _masked(current, masker)
            if new is not current:
                changes[name] = new
        return value.model_copy(update=changes) if changes else value
    if isinstance(value, list | tuple):
        items = [_masked(v, masker) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items)
    if isinstance(value, dict):
        return {_masked(k, masker): _masked(v, masker) for k, v in value.items()}
    return value


def masked_error(err: BaseException, masker: SecretMasker, depth: int = 0) -> ApplicationError:
    """An `ApplicationError` saying what `err` says, masked, with its causes masked too.

    An `ApplicationError` keeps its type, details, retry policy and category; any
    other exception becomes one typed by its class name, retryable, as Temporal
    would report it. The traceback is kept (it holds code, not values).
    """
    if isinstance(err, ApplicationError):
        error = ApplicationError(
            masker.mask(err.message),
            *masked(list(err.details), masker),
            type=err.type,
            non_retryable=err.non_retryable,
            next_retry_delay=err.next_retry_delay,
            category=err.category,
        )
    else:
        error = ApplicationError(masker.mask(str(err)), type=type(err).__name__)
    error = error.with_traceback(err.__traceback__)
    if err.__cause__ is not None and depth < MAX_CAUSES:
        error.__cause__ = masked_error(err.__cause__, masker, depth + 1)
    error.__suppress_context__ = True
    return error
