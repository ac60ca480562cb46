"""Running dhserve's processes: the HTTP API under Gunicorn."""
