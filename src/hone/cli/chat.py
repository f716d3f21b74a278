"""`hone chat`."""
