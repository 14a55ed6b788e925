"""Framework integrations and example apps: Django, Flask, FastAPI, OpenTelemetry, the dashboard."""
