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
    assert client.get("/").status_code == 404


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
    response = client.get("/ws", headers=handshake)
    assert response.status_code == 503
