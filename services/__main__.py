"""``python -m dimsebus.services`` is the ``dimsebus`` command."""

from dimsebus.services.cli import main

main()
