"""The FastAPI inference service: request and response models (`api_models`), model store, metrics, app and launcher."""
