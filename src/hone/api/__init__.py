"""hone's HTTP API: one FastAPI application (`hone.api.app.create_app`) composed of routers over the stages'
Python API, with API-key auth and typed pydantic bodies for every request and response."""
