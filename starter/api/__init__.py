"""The HTTP API (issue 13): who is calling, and what they may do."""
