"""The tracker's web page: moves for the people on shift, live through Server-Sent Events."""
