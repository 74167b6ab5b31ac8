"""gunicorn settings for running the demo server in production.

    gunicorn -c gunicorn.conf.py 'sync_server:create_app()'
    gunicorn -c gunicorn.conf.py 'sync_server:create_app(echo=True)'

A session parked in the netpoller (the echo's, and the sender's once it has
sent) holds no thread: ``max_connections`` per worker bounds those. A session
that holds its thread (a handler function, or ``netpoller=False``) holds one
gthread thread for its whole life: ``workers * threads`` of those are served at
once; our gthread worker takes no more connections than it has threads free,
leaving the rest to a worker that has, and answers those nobody has a thread
for with 503 "server full" within a tenth of a second (docs/deployment.md). With
``WSTHREADS_TRACE=trace.json`` each worker writes ``trace.PID.json`` as it exits.
With ``WSTHREADS_LOG_FORMAT=json`` the log is one JSON object per line.

With metrics (``'sync_server:create_app(metrics_path="/metrics")'``), every
scrape of ``/metrics`` sums all workers' (docs/operations.md).
"""

import logging
import os

from wsthreads import gunicorn as hooks
from wsthreads.connection import message_log
from wsthreads.logs import JsonFormatter
from wsthreads.serving import listen_backlog

bind = "127.0.0.1:8080"
worker_class = "wsthreads.gunicorn.ThreadWorker"  # gthread with our request threads; 503 when full
workers = 2
threads = 500
backlog = listen_backlog()  # the system's largest, as our own server's (gunicorn's default: 2048)
reuse_port = False  # one listening socket for all workers: a full worker leaves connections to the others
graceful_timeout = 10  # our hooks end sessions within 2 s
control_socket_disable = True  # gunicorn 27+: no control socket needed here


if os.environ.get("WSTHREADS_LOG_FORMAT") == "json":
    # gunicorn's own lines (booting, stopping, "server full") in JSON too, where its options send them.
    logger_class = "wsthreads.gunicorn.JsonLogger"


def on_starting(server: object) -> None:
    """In the master, before any worker: the workers' metrics in one directory, summed by every scrape."""
    hooks.share_metrics(server)


def post_worker_init(worker: object) -> None:
    """Show our session log lines, and close sessions with 1001 on a graceful stop."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d %(threadName)s] %(message)s")
        if os.environ.get("WSTHREADS_LOG_FORMAT") == "json":  # as --log-format json: for log shippers
            for handler in logging.getLogger().handlers:
                handler.setFormatter(JsonFormatter())
    if os.environ.get("WSTHREADS_QUIET"):  # as --quiet: no line for every message
        message_log.setLevel(logging.WARNING)
    hooks.post_worker_init(worker)


def worker_int(worker: object) -> None:
    """Ctrl+C: close sessions with 1001 before the worker exits."""
    hooks.worker_int(worker)


def child_exit(server: object, worker: object) -> None:
    """A worker has gone: its gauges (sessions open, threads) leave the metrics."""
    hooks.child_exit(server, worker)


def worker_exit(server: object, worker: object) -> None:
    """Write the worker's trace, with WSTHREADS_TRACE=FILE in the environment."""
    hooks.worker_exit(server, worker)
