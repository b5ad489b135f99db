"""TaskAlign HTTP service: FastAPI app, settings, database and CLI."""
