"""`hone train CONFIG.yaml`."""
