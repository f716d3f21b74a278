"""`hone eval`."""
