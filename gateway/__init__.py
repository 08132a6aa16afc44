"""The gateway: REST and WebSocket front of metastream (FastAPI on uvicorn)."""
