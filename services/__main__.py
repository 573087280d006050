"""``python -m services`` is the ``dimsebus`` command."""

from services.cli import main

main()
