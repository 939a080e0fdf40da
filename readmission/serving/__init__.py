"""The FastAPI inference service: request schemas, model store, metrics, app and launcher."""
