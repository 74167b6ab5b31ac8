"""examples/django_app: a real Django project (Django from PyPI) with wsthreads.django, end to end.

Served by ``manage.py runwsserver`` (our Werkzeug serving) and by gunicorn with our
worker; Chromium logs in and receives a push; refused sessions get 401; and once
the sessions are over the server holds no connection to the database. Last, the
project in this process through the test kit (``ws_serve``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket
from helpers import ROOT, WAIT, Program, wait_until

PROJECT = ROOT / "examples" / "django_app"
PASSWORD = "not-a-real-password"


def manage(environment: dict[str, str], *args: str) -> str:
    """``python manage.py ARGS`` in the example project, with the test's database; its output."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def project(tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh project database, migrated, with users alice and bob."""
    environment = dict(os.environ, DJANGO_DB=str(tmp_path / "db.sqlite3"), PYTHONUNBUFFERED="1")
    manage(environment, "migrate", "-v", "0")
    for name in ("alice", "bob"):
        manage(
            environment,
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model;"
            f" get_user_model().objects.create_user({name!r}, password={PASSWORD!r})",
        )
    return environment


@contextlib.contextmanager
def running(project: dict[str, str], *args: str) -> Iterator[Program]:
    """``python manage.py ARGS`` running on the test's database; killed at the end, with the
    reloader's child, which is the one that serves."""
    os.environ["DJANGO_DB"] = project["DJANGO_DB"]  # Program passes os.environ on
    try:
        program = Program(sys.executable, str(PROJECT / "manage.py"), *args)
    finally:
        del os.environ["DJANGO_DB"]
    try:
        yield program
    finally:
        for child in children(program.proc.pid):
            os.kill(child, signal.SIGKILL)
        program.kill()


class Served(Program):
    """The project served, on a free port: by runwsserver or by gunicorn (one worker)."""

    def __init__(self, how: str, environment: dict[str, str]) -> None:
        self.database = environment["DJANGO_DB"]
        os.environ["DJANGO_DB"] = self.database  # Program passes os.environ on
        try:
            if how == "werkzeug":
                super().__init__(
                    sys.executable, str(PROJECT / "manage.py"), "runwsserver", "127.0.0.1:0", "--noreload"
                )
                self.port = int(self.wait_for(r"serving pages on http://127\.0\.0\.1:(\d+)/").group(1))
            else:
                config = str(ROOT / "gunicorn.conf.py")
                super().__init__(
                    "gunicorn",
                    "-c",
                    config,
                    "-b",
                    "127.0.0.1:0",
                    "-w",
                    "1",
                    "--chdir",
                    str(PROJECT),
                    "notifier.wsgi:application",
                )
                self.port = int(
                    self.wait_for(r"Listening at: http://127\.0\.0\.1:(\d+)", stream="stderr").group(1)
                )
                assert wait_until(lambda: any("worker ready" in line for line in self.stderr)), self.output()
        finally:
            del os.environ["DJANGO_DB"]
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    def database_connections(self) -> int:
        """The server's open descriptors on the SQLite file: one per database connection."""
        count = 0
        for pid in [self.proc.pid, *children(self.proc.pid)]:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    count += os.readlink(f"/proc/{pid}/fd/{fd}") == self.database
                except OSError:
                    continue
        return count


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listed:
            return [int(child) for child in listed.read().split()]
    except OSError:
        return []


@pytest.fixture(params=["werkzeug", "gunicorn"])
def served(request: pytest.FixtureRequest, project: dict[str, str]) -> Iterator[Served]:
    server = Served(request.param, project)
    try:
        yield server
    finally:
        server.kill()


def logged_in(port: int, name: str) -> str:
    """Log ``name`` in through the project's own login form; the session cookie's value."""
    import http.client

    page = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        page.request("GET", "/login/")
        answer = page.getresponse()
        form = answer.read().decode()
        csrf = re.search(r"csrftoken=([^;]+)", answer.getheader("Set-Cookie", "")).group(1)  # type: ignore[union-attr]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
        body = f"username={name}&password={PASSWORD}&csrfmiddlewaretoken={token}"
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={csrf}"}
        page.request("POST", "/login/", body, headers)
        answer = page.getresponse()
        answer.read()
        assert answer.status == 302, answer.status
        return re.search(r"sessionid=([^;]+)", answer.getheader("Set-Cookie", "")).group(1)  # type: ignore[union-attr]
    finally:
        page.close()


@pytest.mark.slow
def test_chromium_logs_in_and_receives_a_push(served: Served, browser: object) -> None:
    """Django's login form, the page's WebSocket on the user's topic, the notify view publishing to it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    wait = WebDriverWait(browser, WAIT)
    browser.get(f"http://127.0.0.1:{served.port}/login/")
    browser.find_element(By.NAME, "username").send_keys("alice")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()

    def notifications() -> list[str]:
        return [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#notifications li")]

    assert wait.until(lambda _: "connected as alice" in notifications())
    browser.find_element(By.NAME, "to").send_keys("alice")
    browser.find_element(By.NAME, "text").send_keys("your report is ready")
    browser.find_element(By.CSS_SELECTOR, "#notify button").click()
    assert wait.until(lambda _: "your report is ready" in notifications())
    assert browser.find_element(By.ID, "result").text == "published to alice"
    during = served.database_connections()
    browser.execute_script("ws.close(1000)")  # the page's WebSocket ends: so does its session
    assert wait.until(lambda _: browser.find_element(By.ID, "state").text.startswith("closed: 1000"))
    assert wait_until(lambda: served.database_connections() == 0), (
        f"{during} during, still open:\n{served.output()}"
    )


@pytest.mark.slow
def test_who_is_not_logged_in_gets_401_and_the_database_is_left_alone(
    served: Served, project: dict[str, str]
) -> None:
    """No cookie, a tampered one, a deleted user: 401 each; sessions over, no connection open."""
    session = logged_in(served.port, "bob")
    sessions = [
        websocket.create_connection(served.url, cookie=f"sessionid={session}", timeout=WAIT) for _ in range(5)
    ]
    assert [ws.recv() for ws in sessions] == ["connected as bob"] * 5
    tampered = session[:-1] + ("y" if session.endswith("x") else "x")  # one in 36 keys ends in x
    for cookie in ("", "sessionid=forged", f"sessionid={tampered}"):
        try:
            websocket.create_connection(served.url, cookie=cookie, timeout=WAIT).close()
        except websocket.WebSocketBadStatusException as refused:
            assert refused.status_code == 401, cookie
        else:
            pytest.fail(f"a 101 for the cookie {cookie!r} (bob's: {session!r}):\n{served.output()}")
    for ws in sessions:
        ws.close()
    assert wait_until(lambda: served.database_connections() == 0), served.output()
    manage(
        project,
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model;"
        " get_user_model().objects.filter(username='bob').delete()",
    )
    with pytest.raises(websocket.WebSocketBadStatusException) as gone:
        websocket.create_connection(served.url, cookie=f"sessionid={session}", timeout=WAIT)
    assert gone.value.status_code == 401


@pytest.mark.slow
def test_runserver_gets_a_501_that_says_what_to_use_instead(project: dict[str, str]) -> None:
    """Django's own runserver cannot hand a connection over: not simple-websocket's words, ours."""
    with running(project, "runserver", "127.0.0.1:0", "--noreload") as server:
        port = int(server.wait_for(r"http://127\.0\.0\.1:(\d+)/").group(1))
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=WAIT)
        assert refused.value.status_code == 501
        assert b"manage.py runwsserver" in (refused.value.resp_body or b"")


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The example project set up in this process (once: Django's settings are the process's)."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "notifier.settings"
    os.environ["DJANGO_DB"] = str(tmp_path_factory.mktemp("django") / "db.sqlite3")
    sys.path.insert(0, str(PROJECT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model

    return get_user_model()


@pytest.mark.slow
def test_the_project_in_this_process_through_the_test_kit(ws_serve: Any, in_process: Any) -> None:
    """Django's test client logs in; ws_serve serves the project's application; the kit checks for leaks."""
    from django.test import Client
    from notifier.live import pubsub
    from notifier.wsgi import application

    user = in_process.objects.create_user("carol", password=PASSWORD)
    browser = Client()
    assert browser.login(username="carol", password=PASSWORD)
    server = ws_serve(application)
    cookie = browser.cookies["sessionid"].value
    client = server.connect({"topic": f"user.{user.pk}"}, cookies={"sessionid": cookie})
    client.expect(lambda message: "subscribed" in str(message))
    client.expect("connected as carol")
    pubsub.publish(f"user.{user.pk}", "hello carol")
    client.expect(lambda message: '"data": "hello carol"' in str(message))


def test_the_handshake_leaves_the_session_as_it_is_and_reads_cookies_as_django(in_process: Any) -> None:
    """After a SECRET_KEY rotation Django's get_user would give the session a new key, which no
    WebSocket can hand the browser: the user would be logged out of the whole site. And of two
    cookies of one name, Django reads the last: so must the handshake, or page and /ws disagree."""
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import Client, override_settings

    from wsthreads.django import authenticate, closing_db
    from wsthreads.request import Request

    for name in ("dave", "erin"):
        in_process.objects.create_user(name, password=PASSWORD)
    sessions = {}
    for name in ("dave", "erin"):
        browser = Client()
        assert browser.login(username=name, password=PASSWORD)
        sessions[name] = browser.cookies["sessionid"].value
    with override_settings(SECRET_KEY="rotated", SECRET_KEY_FALLBACKS=["demo-only-not-a-secret"]):
        user = authenticate(Request.from_environ({"HTTP_COOKIE": f"sessionid={sessions['dave']}"}))
    assert user is not None and user.username == "dave"
    assert SessionStore().exists(sessions["dave"])  # still there: the browser's cookie still works
    both = f"sessionid={sessions['dave']}; sessionid={sessions['erin']}"
    assert authenticate(Request.from_environ({"HTTP_COOKIE": both})).username == "erin"
    assert authenticate(Request.from_environ({"HTTP_COOKIE": "sessionid=\xff"})) is None
    assert closing_db(lambda user, topic: topic == "news")("dave", "news") is True  # any function


@pytest.mark.slow
def test_runwsserver_reloads_when_the_code_changes(project: dict[str, str]) -> None:
    """Django's reloader drives it, as it drives runserver: a changed file, a server anew."""
    with running(project, "runwsserver", "127.0.0.1:0") as server:
        first = int(server.wait_for(r"serving pages on http://127\.0\.0\.1:(\d+)/").group(1))
        time.sleep(1.5)  # the reloader's first look at the files' times
        os.utime(PROJECT / "notifier" / "urls.py")
        assert wait_until(lambda: server.count_lines(r"serving pages on") == 2, timeout=15), server.output()
        second = int(re.findall(r"serving pages on http://127\.0\.0\.1:(\d+)/", "\n".join(server.stdout))[1])
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:  # the new one answers
            websocket.create_connection(f"ws://127.0.0.1:{second}/ws", timeout=WAIT)
        assert refused.value.status_code == 401
        assert first > 0


@pytest.mark.slow
def test_runwsserver_under_the_reloader_says_1001_and_fails_in_one_line(project: dict[str, str]) -> None:
    """SIGTERM to the serving process: sessions get 1001. A busy port: one line, exit 1, no hang."""
    import wsthreads

    with running(project, "runwsserver", "127.0.0.1:0") as server:
        port = int(server.wait_for(r"serving pages on http://127\.0\.0\.1:(\d+)/").group(1))
        cookie = f"sessionid={logged_in(port, 'alice')}"
        client = wsthreads.WebSocketClient(f"ws://127.0.0.1:{port}/ws", headers={"Cookie": cookie})
        with client:
            assert client.recv(timeout=WAIT) == "connected as alice"
            busy = subprocess.run(
                [sys.executable, "manage.py", "runwsserver", f"127.0.0.1:{port}"],
                cwd=PROJECT,
                env=project,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert busy.returncode == 1, busy.stderr
            last = busy.stderr.strip().splitlines()[-1]
            assert last.startswith(f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"), last
            for child in children(server.proc.pid):  # the reloader's child serves
                os.kill(child, signal.SIGTERM)
            with pytest.raises(wsthreads.Closed) as closed:
                client.recv(timeout=WAIT)
            assert closed.value.code == 1001
