"""``python -m headwater`` is the ``headwater`` command."""

from headwater._cli import main

main()
