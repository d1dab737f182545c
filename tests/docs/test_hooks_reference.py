"""docs/plugins/hooks.md has one heading per hook, with the hookspec's exact signature."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from headwater import hookspecs

PAGE = Path(__file__).parents[2] / "docs" / "plugins" / "hooks.md"
HEADING = re.compile(r"^## (headwater_\w+.*)$", re.M)


def signature_heading(name: str) -> str:
    """``name(param: annotation, ...) -> return``, annotations as written in hookspecs.py."""
    signature = inspect.signature(getattr(hookspecs, name))  # annotations stay strings
    params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    return f"{name}({params}) -> {signature.return_annotation}"


def hook_names() -> list[str]:
    return sorted(n for n in hookspecs.__all__ if n.startswith("headwater_"))


def test_every_hook_is_a_hookspec() -> None:
    for name in hook_names():
        assert hasattr(getattr(hookspecs, name), "headwater_spec"), name


def test_headings_match_the_hookspecs_exactly() -> None:
    headings = HEADING.findall(PAGE.read_text(encoding="utf-8"))
    assert sorted(headings) == sorted(signature_heading(n) for n in hook_names())
    assert len(headings) == len(set(headings)), "a hook has two headings"


def test_signature_heading_reads_like_the_source() -> None:
    assert signature_heading("headwater_run_end") == (
        "headwater_run_end(run: Run, error: BaseException | None) -> Any"
    )
