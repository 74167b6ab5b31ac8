"""A Django project with per-user live notifications over WebSockets (wsthreads.django)."""
