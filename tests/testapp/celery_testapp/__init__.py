"""A small Celery app the scenarios and the demo provision and prove with real tasks."""
from .app import app

__all__ = ["app"]
