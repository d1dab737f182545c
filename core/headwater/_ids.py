"""Fresh ids: the ground floor every other module may import."""

from __future__ import annotations

from random import getrandbits

__all__ = ["new_id"]

_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)


def new_id() -> str:
    """A fresh random run id in UUID4 form (ids need to be unique, not secret).

    Example::

        run_id = new_id()   # "8c0f…-…": also fine for thread ids
    """
    h = "%032x" % ((getrandbits(128) & _UUID_CLEAR) | _UUID_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
