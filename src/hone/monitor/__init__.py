"""Production monitoring: captured traffic and feedback (`capture`), per-window health of each served model
(`report`), drift against the training data (`drift`), canary and shadow arms (`canary`), and the retraining loop
(`loop`). Import the submodules: each loads only what it needs."""
