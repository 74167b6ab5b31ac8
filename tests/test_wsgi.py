"""create_app() is a plain WSGI application: it answers ordinary requests anywhere."""

from __future__ import annotations

from werkzeug.test import Client

from sync_server import create_app


def test_create_app_answers_plain_requests_without_a_server() -> None:
    """The WSGI app routes on its own: 400 for /ws without upgrade, 404 elsewhere."""
    client = Client(create_app())
    response = client.get("/ws")
    assert response.status_code == 400
    assert response.text.count("\n") == 1
    assert client.get("/nothing-here").status_code == 404


def test_root_serves_a_self_contained_page() -> None:
    """GET / is the browser page: HTML that opens /ws on its own host, nothing from elsewhere."""
    response = Client(create_app()).get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert 'location.host + "/ws"' in response.text
    assert "http://" not in response.text and "https://" not in response.text
    assert "connect-src 'self'" in response.headers["Content-Security-Policy"]


def test_after_shutdown_new_sessions_get_503() -> None:
    """Once shutdown has begun, an upgrade request is refused with 503."""
    app = create_app()
    assert app.shutdown(timeout=1)
    client = Client(app)
    handshake = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    # A server that can hand its socket over (Werkzeug's test client cannot: it would get 501).
    response = client.get("/ws", headers=handshake, environ_overrides={"werkzeug.socket": object()})
    assert response.status_code == 503


def test_a_server_that_cannot_hand_its_socket_over_gets_501_saying_what_to_use() -> None:
    """wsgiref, Django's runserver, a test client: no socket in the environ, so no session."""
    handshake = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    response = Client(create_app()).get("/ws", headers=handshake)
    assert response.status_code == 501
    assert "manage.py runwsserver or gunicorn" in response.text


def test_shutdown_returns_once_the_last_session_has_ended_not_at_its_timeout() -> None:
    """shutdown() waits for the last session only: 20 clients that answer the close at once
    (after a refused request, which must not leave the count behind), and none at all."""
    import contextlib
    import time

    from websockets.sync.client import connect

    import wsthreads

    started = time.monotonic()
    assert wsthreads.create_app().shutdown(timeout=10)  # no session: nothing to wait for
    assert time.monotonic() - started < 0.5
    app = wsthreads.create_app(echo=True, max_connections=20)
    server = wsthreads.start_server(app, "127.0.0.1", 0)
    with server, contextlib.ExitStack() as clients:
        for _ in range(20):
            clients.enter_context(connect(server.url, max_queue=None))
        refused = Client(app).get("/ws")  # a plain GET on the endpoint: 400, counted in and out
        assert refused.status_code == 400
        started = time.monotonic()
        assert server.shutdown(timeout=10)
        assert time.monotonic() - started < 2.0
