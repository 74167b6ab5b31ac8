"""Live notifications in an existing Flask app: a WebSocket endpoint mounted beside its pages.

    python examples/flask_app.py [--port 8000]
    gunicorn -c gunicorn.conf.py -w 1 -b 127.0.0.1:8000 examples.flask_app:application

Port 8000 (gunicorn's own default), so that it runs beside the quickstart's
server on 8080.

A demo, not a product: anyone may log in under any name, with no password.
What it shows someone adding WebSockets to a Flask app they already have:

* the Flask app stays as it is: ``ws.mount(app)`` answers ``/ws`` and hands
  every other request to Flask, on the same server and port;
* the endpoint knows who connects from Flask's own signed session cookie,
  which the browser sends with the handshake: no token to hand the page;
* any view can push to open connections: ``ws.broadcast`` only queues, so a
  slow browser never holds up the request that notifies it.

``broadcast`` reaches the connections of its own process only, hence one
gunicorn worker (``-w 1``; each connection gets one of its threads). With
several workers, clients subscribe to topics and views publish through Redis
(``docs/howto/publish.md``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import flask
from flask.typing import ResponseReturnValue

import wsthreads
from wsthreads import Connection, Request

app = flask.Flask(__name__)
# Signs the session cookie. Every worker and every restart must share it (a random key per
# process would make each worker refuse the others' cookies), so it comes from the environment.
app.secret_key = os.environ.get("FLASK_SECRET_KEY", "demo-only-not-a-secret")
# Lax: a page on another site cannot make the browser post our forms with the user's cookie.
app.config["SESSION_COOKIE_SAMESITE"] = "Lax"

LOGIN_PAGE = """<!doctype html>
<title>Log in</title>
<p>A demo: any name will do, no password.</p>
{% if error %}<p><b>{{ error }}</b></p>{% endif %}
<form method="post" action="/login">
  <input name="username" placeholder="your name" autofocus> <button>Log in</button>
</form>
"""

HOME_PAGE = """<!doctype html>
<title>Notifications for {{ user }}</title>
<form method="post" action="/logout">Logged in as <b>{{ user }}</b> <button>Log out</button></form>
<p>Live: <span id="state">connecting</span></p>
<ul id="notifications"></ul>
<form method="post" action="/notify" data-background>
  <input name="to" placeholder="user" required> <input name="text" placeholder="message" required>
  <button>Notify</button>
</form>
<form method="post" action="/broadcast" data-background>
  <input name="text" placeholder="message for everyone" required> <button>Broadcast</button>
</form>
<p id="result"></p>
<script>
"use strict";
// Same origin, so the browser sends the session cookie with the handshake: that is how /ws knows us.
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
const state = document.getElementById("state");
ws.onopen = () => { state.textContent = "open"; };
ws.onclose = (event) => { state.textContent = `closed: ${event.code} ${event.reason}`; };
ws.onmessage = (event) => {
  const item = document.createElement("li");
  item.textContent = event.data;  // text, never HTML
  document.getElementById("notifications").append(item);
};
// The forms post in the background, so that this page, and its WebSocket, stay open.
for (const form of document.querySelectorAll("form[data-background]")) {
  form.onsubmit = async (event) => {
    event.preventDefault();
    const response = await fetch(form.action, {method: "POST", body: new FormData(form)});
    document.getElementById("result").textContent = await response.text();
  };
}
</script>
"""


def authenticate(request: Request) -> str | None:
    """Who opens the WebSocket: the user Flask's session cookie names (None: refused with 401).

    The handshake is an HTTP request like any other, so Flask can read its
    cookie for us; the signature check stays Flask's business.
    """
    # A copy: Flask wants a dict, and may write into the environ it is given.
    with app.request_context(dict(request.environ)):
        user: str | None = flask.session.get("user")
        return user


def notifications(conn: Connection) -> None:
    """One browser tab's session, in its own thread: greet it, then keep it open until it goes."""
    # Once this runs, broadcasts find the connection: the greeting tells the page it is listed.
    conn.send(f"connected as {conn.user}")
    for _message in conn:  # the page only listens; whatever it sends is dropped
        pass


ws = wsthreads.create_app(handler=notifications, authenticate=authenticate)
#: The WSGI application to serve: /ws is ours, every other path is Flask's.
application = ws.mount(app)


def require_login() -> None:
    """End this Flask request with 401 unless someone has logged in: only users may send."""
    if flask.session.get("user") is None:
        flask.abort(401)


def sent(count: int, to: str) -> ResponseReturnValue:
    """One line for the page (or curl): how many open connections the message was queued for."""
    return f"sent to {count} connection(s) of {to}\n", {"Content-Type": "text/plain; charset=utf-8"}


@app.get("/login")
def login_form() -> ResponseReturnValue:
    """The login form."""
    return flask.render_template_string(LOGIN_PAGE)


@app.post("/login")
def login() -> ResponseReturnValue:
    """Log in under any name (a demo: no password), then go to the notifications page."""
    username = flask.request.form.get("username", "").strip()
    if not username:
        return flask.render_template_string(LOGIN_PAGE, error="Type a name."), 400
    flask.session["user"] = username  # signed into the cookie; the WebSocket handshake carries it
    return flask.redirect("/")


@app.post("/logout")
def logout() -> ResponseReturnValue:
    """Forget the user; WebSockets already open stay open until their tab goes."""
    flask.session.clear()
    return flask.redirect("/login")


@app.get("/")
def home() -> ResponseReturnValue:
    """The logged-in user's page, whose script opens the WebSocket."""
    user: str | None = flask.session.get("user")
    if user is None:
        return flask.redirect("/login")
    return flask.render_template_string(HOME_PAGE, user=user)


@app.post("/notify")
def notify() -> ResponseReturnValue:
    """Push ``text`` to every tab ``to`` has open, and to nobody else (any user may notify any)."""
    require_login()
    to, text = flask.request.form.get("to", ""), flask.request.form.get("text", "")
    if not to or not text:
        flask.abort(400, "notify needs 'to' and 'text'")
    return sent(ws.broadcast(text, where=lambda conn: conn.user == to), to)


@app.post("/broadcast")
def broadcast() -> ResponseReturnValue:
    """Push ``text`` to every open tab."""
    require_login()
    text = flask.request.form.get("text", "")
    if not text:
        flask.abort(400, "broadcast needs 'text'")
    return sent(ws.broadcast(text), "everyone")


def main() -> int:
    """Serve the app on Werkzeug until Ctrl+C; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (default 8000)")
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(asctime)s [%(threadName)s] %(message)s"
    )
    # Werkzeug's threaded server, as `flask run` would use, but with our deadlines and shutdown.
    server = wsthreads.start_server(application, "127.0.0.1", args.port)
    print(f"log in at {server.page_url}login (WebSocket endpoint {server.url})", flush=True)
    server.serve_until_signal()  # Ctrl+C or SIGTERM: every session is closed with 1001
    return 0


if __name__ == "__main__":
    sys.exit(main())
