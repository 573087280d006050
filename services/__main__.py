"""``python -m services`` is the ``dimsebus`` command."""

from services.cli import app

app()
