"""Retrying a node that failed: ``graph.add_node(name, fn, retry=RetryPolicy(...))``.

A node with a retry policy that raises a retryable exception runs again, after an
exponentially growing pause, up to ``max_attempts`` times in all; only the attempt that
succeeds writes to the state. The node has one ``on_chain_start`` and one end (or, after
the last attempt, one error); what it streamed while failing (tokens, custom events, the
``on_chat_model_error`` of a model call) stays in the stream, since it did happen.

Example::

    from headwater import RetryPolicy

    graph.add_node("call_api", call_api, retry=RetryPolicy(max_attempts=5))
    graph.add_node("flaky", flaky, retry=RetryPolicy(retry_on=(TimeoutError, KeyError)))
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from typing import Any

import attrs

from headwater.errors import ChatModelError, GraphInterrupt, GraphValidationError

__all__ = ["RetryPolicy", "default_retry_on"]


def default_retry_on(exc: BaseException) -> bool:
    """Whether an error is worth another attempt, when a policy names no ``retry_on``.

    Transient failures are: a :class:`~headwater.errors.ChatModelError` that is not the
    request's fault (no HTTP status, 408, 409, 429 or 5xx), ``ConnectionError`` and
    ``TimeoutError``. A bug in the node (``KeyError``, ``TypeError``, ...) is not
    retried: it would only fail again.

    Example::

        assert default_retry_on(TimeoutError())
        assert not default_retry_on(KeyError("x"))
    """
    if isinstance(exc, ChatModelError):
        status = exc.status_code
        return status is None or status in (408, 409, 429) or status >= 500
    return isinstance(exc, (ConnectionError, TimeoutError))


RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def _check_retry_on(instance: Any, attribute: Any, value: Any) -> None:
    types = value if isinstance(value, tuple) else (value,)
    if all(inspect.isclass(t) and issubclass(t, BaseException) for t in types) and types:
        return
    if not isinstance(value, tuple) and not inspect.isclass(value) and callable(value):
        return
    raise GraphValidationError(
        f"RetryPolicy(retry_on=...) takes an exception class, a tuple of them, or a "
        f"function exc -> bool; got {type(value).__name__}: {value!r:.80}."
    )


def _positive(name: str, *, allow_zero: bool) -> Callable[[Any, Any, Any], None]:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or value < 0 or (value == 0 and not allow_zero):
            expected = "a number >= 0" if allow_zero else "a number > 0"
            raise GraphValidationError(
                f"RetryPolicy({name}=...) must be {expected}; got {value!r:.40}."
            )

    return check


def _attempts(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GraphValidationError(
            f"RetryPolicy(max_attempts=...) is the number of attempts in all, an int >= 1 "
            f"(1: no retry); got {value!r:.40}."
        )


@attrs.frozen
class RetryPolicy:
    """How often and when to run a failed node again.

    ``max_attempts`` counts every attempt, the first included. Before attempt *n* + 1
    the node waits ``min(max_interval, initial_interval * backoff_factor ** (n - 1))``
    seconds, scaled by a random factor between 0.5 and 1.5 when ``jitter`` is on (so
    many failing runs do not retry in lockstep). ``retry_on`` decides which errors are
    retried: an exception class, a tuple of them, or a function ``exc -> bool``; the
    default is :func:`default_retry_on` (transient provider and network errors).
    ``interrupt()`` is never retried.

    Example::

        graph.add_node("summarize", summarize, retry=RetryPolicy(max_attempts=4))
    """

    max_attempts: int = attrs.field(default=3, validator=_attempts)
    initial_interval: float = attrs.field(
        default=0.5, validator=_positive("initial_interval", allow_zero=True)
    )
    backoff_factor: float = attrs.field(
        default=2.0, validator=_positive("backoff_factor", allow_zero=False)
    )
    max_interval: float = attrs.field(
        default=60.0, validator=_positive("max_interval", allow_zero=True)
    )
    jitter: bool = True
    retry_on: RetryOn = attrs.field(default=default_retry_on, validator=_check_retry_on)

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` is one this policy retries (``interrupt()`` never is).

        Example::

            RetryPolicy(retry_on=KeyError).should_retry(KeyError("x"))  # True
        """
        if isinstance(exc, GraphInterrupt):
            return False
        retry_on = self.retry_on
        if isinstance(retry_on, tuple) or inspect.isclass(retry_on):
            return isinstance(exc, retry_on)
        return bool(retry_on(exc))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first).

        Example::

            RetryPolicy(initial_interval=1, jitter=False).delay(3)  # 4.0
        """
        base = min(self.max_interval, self.initial_interval * self.backoff_factor ** (attempt - 1))
        return base * random.uniform(0.5, 1.5) if self.jitter else base
