"""The tracker: C-MOVE progress folded from the event log (progress.py), and its shell (app.py)."""
