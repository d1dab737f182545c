"""Routing primitives: START, END, Send, Command."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import attrs

__all__ = ["END", "START", "Command", "Send"]

START: Final = "__start__"
"""The virtual node a run starts from.

Example::

    graph.add_edge(START, "first")
"""

END: Final = "__end__"
"""The virtual node a run ends at.

Example::

    graph.add_edge("last", END)          # or a router returning END
"""


@attrs.frozen(repr=False)
class Send:
    """Run ``node`` in the next step with ``arg`` as its input instead of the state.

    Return a list of ``Send`` from a router (``add_conditional_edges``) or put them in
    ``Command(goto=...)`` to fan out over data: one task per ``Send``, all concurrent,
    their writes merged through the reducers in a deterministic order.

    Example::

        def fan_out(state):
            return [Send("square", {"n": n}) for n in state["numbers"]]

        graph.add_conditional_edges("split", fan_out)
    """

    node: str
    arg: Any

    def __repr__(self) -> str:
        return f"Send(node={self.node!r}, arg={self.arg!r})"


def _goto(value: str | Send | Sequence[str | Send] | None) -> tuple[str | Send, ...]:
    if value is None:
        return ()
    if isinstance(value, str | Send):
        return (value,)
    return tuple(value)


if TYPE_CHECKING:  # a bare ``-> Command`` means Command[Any], also under mypy --strict
    from typing_extensions import TypeVar as _TypeVar

    N = _TypeVar("N", default=Any)
else:
    N = TypeVar("N")


@attrs.frozen
class Command(Generic[N]):
    """Returned by a node to update the state and choose where to go next in one value.

    ``update`` is applied like a node's ordinary return value; ``goto`` names the next
    node(s) — a name, a :class:`Send`, or a sequence of them (``END`` is allowed). The
    node's static edges still apply as well. Annotate the node ``-> Command[Literal["a",
    "b"]]`` to declare where it may go: ``compile()`` then checks those names and counts
    them as reachable. As a run's *input*, ``Command(resume=value)``
    continues a thread paused by :func:`~headwater.interrupt`: the paused node runs again
    and its ``interrupt()`` call returns ``value``.

    Example::

        def review(state) -> Command[Literal["publish", "__end__"]]:
            if state["score"] > 0.8:
                return Command(update={"status": "approved"}, goto="publish")
            return Command(update={"status": "rejected"}, goto=END)
    """

    update: Mapping[str, Any] | None = None
    goto: tuple[str | Send, ...] = attrs.field(default=(), converter=_goto)
    resume: Any = None
