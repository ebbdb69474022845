"""The lab -> core acquisition shift: feature drift and the session shortcut audit."""
