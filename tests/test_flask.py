"""examples/flask_app.py: Flask's pages and our WebSocket endpoint on one server and port, end to end.

The example runs as a real subprocess, under our Werkzeug serving and under
gunicorn; the clients are http.client, the ``websockets`` package and, last,
Chromium driven by Selenium (Debian's, as in test_browser.py; nothing is downloaded).
"""

from __future__ import annotations

import contextlib
import http.client
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlencode

import pytest
from helpers import ROOT, WAIT, Program
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

import wsthreads

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

#: Log lines that mean something went wrong, on either stream.
PROBLEM = re.compile(r"Traceback|ERROR|Error handling|Socket error| failed")


class FlaskExample(Program):
    """The example running; ``port`` serves both Flask's pages and ``/ws``."""

    port: int

    def problems(self) -> list[str]:
        return [line for line in self.stdout + self.stderr if PROBLEM.search(line)]


class WerkzeugExample(FlaskExample):
    """``python examples/flask_app.py --port 0``: our Werkzeug serving."""

    def __init__(self) -> None:
        super().__init__(str(ROOT / "examples" / "flask_app.py"), "--port", "0")
        self.port = int(self.wait_for(r"log in at http://127\.0\.0\.1:(\d+)/login").group(1))


def howto_gunicorn_command() -> list[str]:
    """The gunicorn command ``docs/howto/flask.md`` shows, as its arguments."""
    text = (ROOT / "docs" / "howto" / "flask.md").read_text()
    return shlex.split(next(line for line in text.splitlines() if line.startswith("gunicorn ")))


def test_the_flask_example_keeps_off_the_quickstarts_port() -> None:
    """Run after the quickstart's server (8080), the how-to's commands must not find it taken."""
    command = howto_gunicorn_command()
    assert command[command.index("-b") + 1] == "127.0.0.1:8000"
    help_text = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "flask_app.py"), "--help"], capture_output=True, text=True
    ).stdout
    assert "(default 8000)" in help_text


class GunicornExample(FlaskExample):
    """The how-to's gunicorn command (``-w 1 examples.flask_app:application``), on a free port.

    One worker: a notification reaches only the connections of the worker
    whose request sent it (see the example's docstring).
    """

    def __init__(self) -> None:
        command = howto_gunicorn_command()
        command[command.index("-b") + 1] = "127.0.0.1:0"
        command[command.index("-c") + 1] = str(ROOT / "gunicorn.conf.py")
        super().__init__(*command[:-1], "--chdir", str(ROOT), command[-1])
        self.port = int(self.wait_for(r"Listening at: http://127\.0\.0\.1:(\d+)", stream="stderr").group(1))
        self.wait_for(r"Booting worker", stream="stderr")


SERVERS = {"werkzeug": WerkzeugExample, "gunicorn": GunicornExample}


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[FlaskExample]:
    """One running example per server, shared by the tests that leave it running."""
    example = SERVERS[request.param]()
    yield example
    example.kill()


# --- Clients: HTTP for Flask's pages, websockets for /ws ------------------------------------


class Answer(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    text: str


def http_request(
    port: int, method: str, path: str, form: dict[str, str] | None = None, cookie: str = ""
) -> Answer:
    """One HTTP request (a form is posted urlencoded); redirects are not followed."""
    headers = {"Cookie": cookie} if cookie else {}
    if form is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request(method, path, urlencode(form) if form is not None else None, headers)
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read().decode())
    finally:
        conn.close()


def log_in(port: int, user: str) -> str:
    """Log in through the form; the ``Cookie`` header value that carries Flask's session."""
    answer = http_request(port, "POST", "/login", {"username": user})
    assert answer.status == 302 and answer.headers["Location"] == "/"
    return answer.headers["Set-Cookie"].split(";", 1)[0]


def post(port: int, path: str, cookie: str, **form: str) -> str:
    """POST /notify or /broadcast; the server's one-line answer."""
    answer = http_request(port, "POST", path, form, cookie)
    assert answer.status == 200, answer
    return answer.text.strip()


def open_ws(port: int, cookie: str = "", origin: str | None = None) -> ClientConnection:
    """A WebSocket to /ws with the session cookie, as a browser on the page would open it."""
    return connect(
        f"ws://127.0.0.1:{port}/ws",
        additional_headers={"Cookie": cookie} if cookie else None,
        origin=Origin(origin) if origin else None,
        open_timeout=WAIT,
        close_timeout=WAIT,
    )


def refusal(port: int, cookie: str = "", origin: str | None = None) -> tuple[int, bytes]:
    """The status and body of a WebSocket handshake the server must refuse."""
    with pytest.raises(InvalidStatus) as refused:
        open_ws(port, cookie, origin).close()
    return refused.value.response.status_code, bytes(refused.value.response.body or b"")


@contextlib.contextmanager
def listening(port: int, user: str) -> Iterator[ClientConnection]:
    """``user`` logged in, with a WebSocket open and already listed for notifications."""
    with open_ws(port, log_in(port, user)) as ws:
        # The greeting comes from the handler, which runs once the connection is listed;
        # the 101 alone comes a little earlier, and a notification sent then would miss it.
        assert ws.recv(timeout=WAIT) == f"connected as {user}"
        yield ws


# --- Under Werkzeug and under gunicorn ------------------------------------------------------


@pytest.mark.slow
def test_flask_pages_still_work(server: FlaskExample) -> None:
    """Flask serves its own pages and login on the mounted app; only /ws is the endpoint's."""
    assert http_request(server.port, "GET", "/login").status == 200
    anonymous = http_request(server.port, "GET", "/")
    assert anonymous.status == 302 and anonymous.headers["Location"] == "/login"
    home = http_request(server.port, "GET", "/", cookie=log_in(server.port, "pages"))
    assert home.status == 200 and "Logged in as <b>pages</b>" in home.text
    plain_get = http_request(server.port, "GET", "/ws")
    assert plain_get.status == 400 and "speaks WebSocket only" in plain_get.text
    assert http_request(server.port, "POST", "/notify", {"to": "pages", "text": "hi"}).status == 401


def test_upgrade_without_a_login_gets_401_with_one_line(server: FlaskExample) -> None:
    """No session cookie, or one whose signature is wrong: 401, one line, no traceback."""
    assert refusal(server.port) == (401, b"authentication required\n")
    forged = log_in(server.port, "mallory").rsplit(".", 1)[0] + ".forged-signature"
    assert refusal(server.port, forged) == (401, b"authentication required\n")
    assert server.problems() == []


def test_a_foreign_origin_gets_403_even_when_logged_in(server: FlaskExample) -> None:
    """The origin check still runs in front of Flask's cookie: a page elsewhere cannot borrow it."""
    cookie = log_in(server.port, "olivia")
    status, body = refusal(server.port, cookie, origin="http://evil.example")
    assert status == 403 and body == b"origin http://evil.example is not allowed\n"
    with open_ws(server.port, cookie, origin=f"http://127.0.0.1:{server.port}") as ws:
        assert ws.recv(timeout=WAIT) == "connected as olivia"
    assert server.problems() == []


def test_a_notification_reaches_its_user_only(server: FlaskExample) -> None:
    """Each one's next message is their own: a connection receives in order, so nobody got another's."""
    sender = log_in(server.port, "sender")
    with listening(server.port, "alice") as alice, listening(server.port, "bob") as bob:
        assert post(server.port, "/notify", sender, to="alice", text="for alice") == (
            "sent to 1 connection(s) of alice"
        )
        assert (
            post(server.port, "/notify", sender, to="bob", text="for bob") == "sent to 1 connection(s) of bob"
        )
        assert post(server.port, "/notify", sender, to="alice", text="again for alice").startswith(
            "sent to 1 "
        )
        assert bob.recv(timeout=WAIT) == "for bob"
        assert [alice.recv(timeout=WAIT), alice.recv(timeout=WAIT)] == ["for alice", "again for alice"]
        assert post(server.port, "/notify", sender, to="nobody", text="lost") == (
            "sent to 0 connection(s) of nobody"
        )


def test_a_broadcast_reaches_everyone(server: FlaskExample) -> None:
    sender = log_in(server.port, "sender")
    with listening(server.port, "carol") as carol, listening(server.port, "dan") as dan:
        answer = post(server.port, "/broadcast", sender, text="for everyone")
        assert re.fullmatch(r"sent to \d+ connection\(s\) of everyone", answer)
        assert carol.recv(timeout=WAIT) == dan.recv(timeout=WAIT) == "for everyone"


@pytest.mark.parametrize(
    ("kind", "signum", "within"),
    [
        pytest.param("werkzeug", signal.SIGINT, 2.0, id="werkzeug-SIGINT"),
        pytest.param("gunicorn", signal.SIGTERM, 5.0, id="gunicorn-SIGTERM"),
        pytest.param("gunicorn", signal.SIGINT, 5.0, id="gunicorn-SIGINT"),
    ],
)
@pytest.mark.slow
def test_a_stop_closes_sessions_with_1001(kind: str, signum: int, within: float) -> None:
    """Ctrl+C (or gunicorn's graceful SIGTERM) with a session open: 1001 for it, exit status 0."""
    example = SERVERS[kind]()
    try:
        with listening(example.port, "alice") as alice:
            started = time.monotonic()
            example.signal(signum)
            with pytest.raises(ConnectionClosed):
                alice.recv(timeout=WAIT)
            assert (alice.close_code, alice.close_reason) == (1001, "server shutting down")
            assert example.wait(timeout=within + WAIT) == 0, example.output()
            assert time.monotonic() - started < within
        assert example.problems() == []
    finally:
        example.kill()


# --- In Chromium ----------------------------------------------------------------------------


@pytest.mark.slow
def test_notifications_in_chromium(server: FlaskExample, browser: WebDriver) -> None:
    """Log in through the form; the page's WebSocket shows a notification and its own broadcast."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT)

    def notifications() -> list[str]:
        return [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#notifications li")]

    browser.get(f"http://127.0.0.1:{server.port}/")  # not logged in: redirected to the form
    assert browser.current_url.endswith("/login")
    browser.find_element(By.NAME, "username").send_keys("erin", Keys.ENTER)
    assert wait.until(lambda _: notifications() == ["connected as erin"])
    assert browser.find_element(By.ID, "state").text == "open"

    post(server.port, "/notify", log_in(server.port, "boss"), to="erin", text="your report is ready")
    assert wait.until(lambda _: notifications()[-1:] == ["your report is ready"])

    box = browser.find_element(By.CSS_SELECTOR, "form[action='/broadcast'] input[name=text]")
    box.send_keys("hello, everyone", Keys.ENTER)  # posted in the background: the page stays
    assert wait.until(lambda _: notifications()[-1:] == ["hello, everyone"])
    assert browser.find_element(By.ID, "result").text.startswith("sent to ")
    assert notifications() == ["connected as erin", "your report is ready", "hello, everyone"]


# --- In this process, with the test kit (wsthreads.testing's ws_serve) --------------------------


def test_a_logged_in_flask_user_gets_a_notification_through_the_kit(ws_serve: Any) -> None:
    """The example's own application, served by ws_serve; the session cookie from Flask's test client."""
    sys.path.insert(0, str(ROOT / "examples"))
    import flask_app

    with flask_app.app.test_client() as browser:
        browser.post("/login", data={"username": "ada"})
        cookie = browser.get_cookie("session")
        assert cookie is not None
    server = ws_serve(flask_app.application)
    client = server.connect(cookies={"session": cookie.value})
    client.expect("connected as ada")
    page = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    try:
        body = urlencode({"to": "ada", "text": "your report is ready"})
        headers = {"Cookie": f"session={cookie.value}", "Content-Type": "application/x-www-form-urlencoded"}
        page.request("POST", "/notify", body, headers)
        assert page.getresponse().read() == b"sent to 1 connection(s) of ada\n"
    finally:
        page.close()
    client.expect("your report is ready")
    with pytest.raises(wsthreads.ConnectError, match="401 Unauthorized"):
        server.connect()  # no cookie, no session
