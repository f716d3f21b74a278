"""The web dashboard: server-rendered pages over the same /v1 API the SDK uses (see hone.web.app)."""
