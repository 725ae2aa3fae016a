"""Running it in production: health and metrics endpoints, ``status``, ``doctor``."""
