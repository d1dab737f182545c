"""Retrievers: :class:`Document`, the :class:`Retriever` base and a BM25 in-memory one.

A retriever emits ``on_retriever_start`` (data ``query``, ``input``) and
``on_retriever_end`` (``documents``, ``output``) — or ``on_retriever_error`` — inside
the run of the node that calls it.

Example::

    from headwater.retrievers import InMemoryRetriever

    retriever = InMemoryRetriever.from_texts(["rivers flow", "mountains rise"], k=1)
    docs = retriever.invoke("where do rivers flow")
    assert docs[0].page_content == "rivers flow"
"""

from __future__ import annotations

import abc
import functools
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from headwater._observe import Observed
from headwater._sync import run_sync
from headwater.errors import InvalidInputError

__all__ = ["Document", "InMemoryRetriever", "Retriever"]


@attrs.frozen(kw_only=True)
class Document:
    """A piece of text with metadata, as retrievers return it.

    Example::

        Document(page_content="Rivers flow to the sea.", metadata={"source": "notes.md"})
    """

    page_content: str
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    id: str | None = None


class Retriever(abc.ABC):
    """Base class of retrievers; implement :meth:`_aretrieve`.

    Example::

        class Fixed(Retriever):
            async def _aretrieve(self, query):
                return [Document(page_content="always this")]
    """

    name: str | None = None

    @abc.abstractmethod
    async def _aretrieve(self, query: str) -> list[Document]:
        """Return the documents relevant to ``query``, best first."""

    async def ainvoke(self, query: str) -> list[Document]:
        """Retrieve documents for ``query``, emitting the retriever events.

        Example::

            docs = await retriever.ainvoke("rivers")
        """
        if not isinstance(query, str):
            raise InvalidInputError(
                f"A retriever takes a query string; got {type(query).__name__}: {query!r:.80}."
            )
        observed = Observed("retriever", self.name or type(self).__name__)
        observed.emit("start", {"query": query, "input": query})
        try:
            documents = await self._aretrieve(query)
        except BaseException as exc:  # cancelled too: every start gets an end
            observed.emit("error", {"error": exc})
            raise
        observed.emit("end", {"documents": documents, "output": documents})
        return documents

    def invoke(self, query: str) -> list[Document]:
        """Sync :meth:`ainvoke`.

        Example::

            docs = retriever.invoke("rivers")
        """
        return run_sync(
            functools.partial(self.ainvoke, query),
            what=f"{type(self).__name__}.invoke()",
            instead="In an async node use `await retriever.ainvoke(...)`.",
        )


_WORD = re.compile(r"\w+", re.UNICODE)


def _tokens(text: str) -> list[str]:
    return [t.lower() for t in _WORD.findall(text)]


class InMemoryRetriever(Retriever):
    """Okapi BM25 ranking over documents held in memory; returns the top ``k``.

    Documents scoring zero (sharing no term with the query) are not returned.

    Example::

        retriever = InMemoryRetriever.from_texts(["a river", "a hill"], k=1)
        retriever.invoke("river")[0].page_content  # "a river"
    """

    def __init__(
        self, documents: Sequence[Document], *, k: int = 4, k1: float = 1.5, b: float = 0.75
    ) -> None:
        if k < 1:
            raise InvalidInputError(f"InMemoryRetriever k must be at least 1; got {k}.")
        self.documents = list(documents)
        self.k = k
        self.k1 = k1
        self.b = b
        self._terms = [Counter(_tokens(d.page_content)) for d in self.documents]
        self._lengths = [sum(t.values()) for t in self._terms]
        self._avg = (sum(self._lengths) / len(self._lengths)) if self._lengths else 0.0
        frequency: Counter[str] = Counter()
        for terms in self._terms:
            frequency.update(terms.keys())
        n = len(self.documents)
        self._idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in frequency.items()}

    @classmethod
    def from_texts(
        cls, texts: Iterable[str], metadatas: Iterable[Mapping[str, Any]] | None = None, **kw: Any
    ) -> InMemoryRetriever:
        """Build from plain strings (and optional per-text metadata).

        Example::

            InMemoryRetriever.from_texts(["one", "two"], [{"n": 1}, {"n": 2}], k=1)
        """
        texts = list(texts)
        metas = list(metadatas) if metadatas is not None else [{}] * len(texts)
        docs = [
            Document(page_content=t, metadata=m, id=str(i))
            for i, (t, m) in enumerate(zip(texts, metas, strict=True))
        ]
        return cls(docs, **kw)

    def scores(self, query: str) -> list[float]:
        """The BM25 score of every document for ``query`` (in document order)."""
        terms = _tokens(query)
        out = []
        for doc_terms, length in zip(self._terms, self._lengths, strict=True):
            score = 0.0
            norm = self.k1 * (1 - self.b + self.b * (length / self._avg if self._avg else 0))
            for term in terms:
                tf = doc_terms.get(term, 0)
                if tf:
                    score += self._idf[term] * tf * (self.k1 + 1) / (tf + norm)
            out.append(score)
        return out

    async def _aretrieve(self, query: str) -> list[Document]:
        scores = self.scores(query)
        ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [self.documents[i] for i in ranked[: self.k] if scores[i] > 0]
