"""The browser page in a real browser: Debian's Chromium, headless, driven by Selenium.

Nothing is downloaded: Selenium uses /usr/bin/chromium and /usr/bin/chromedriver.
Set WSTHREADS_SCREENSHOT=docs/browser-page.png to refresh the README's screenshot.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import ServerProgram

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README


def test_page_in_chromium(
    start_server: Callable[..., ServerProgram], browser: object, tmp_path: Path
) -> None:
    """The page shows every server message, sends what is typed, and shows 1001 on shutdown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    server = start_server("--count", "3", "--interval", "0.1")
    browser.get(f"http://127.0.0.1:{server.port}/")
    wait = WebDriverWait(browser, 10)

    def texts(kind: str) -> list[str]:
        return [item.text for item in browser.find_elements(By.CSS_SELECTOR, f"#log .{kind} span")]

    assert wait.until(lambda _: len(texts("received")) == 3)
    assert texts("received") == [f"server message {i} of 3" for i in range(1, 4)]
    assert browser.find_element(By.ID, "state").text == "open"

    box = browser.find_element(By.ID, "text")
    box.send_keys("hello from Chromium", Keys.ENTER)
    server.wait_for(r"\[conn-1-reader\] received: hello from Chromium")
    assert texts("sent") == ["hello from Chromium"]

    server.signal()
    assert server.wait() == 0
    assert wait.until(
        lambda _: browser.find_element(By.ID, "state").text == "closed: 1001 server shutting down"
    )
    assert texts("closed") == ["closed with code 1001 server shutting down"]

    screenshot = os.environ.get("WSTHREADS_SCREENSHOT") or str(tmp_path / "page.png")
    assert browser.save_screenshot(screenshot)


def test_chromium_and_our_server_agree_on_compression(
    start_server: Callable[..., ServerProgram], browser: object
) -> None:
    """Chromium offers permessage-deflate (page code cannot turn it off); with --compression it is
    agreed, and a 180 KB message goes both ways compressed."""
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    server = start_server("--echo", "--compression", "--quiet", "--metrics")
    browser.get(f"http://127.0.0.1:{server.port}/")
    browser.set_script_timeout(10)
    result = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const ws = new WebSocket(`ws://${location.host}/ws`);
        const big = "chromium and wsthreads ".repeat(8000);
        ws.onopen = () => ws.send(big);
        ws.onmessage = (event) => {
            done({extensions: ws.extensions, echoed: event.data === big});
            ws.close();
        };
        ws.onerror = () => done({error: "the connection failed"});
        """
    )
    assert result == {
        "extensions": "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
        "echoed": True,
    }
    assert server.count_lines(r"connected: .* \(permessage-deflate\)") == 2  # the page's and ours
    # Both ways compressed: 184,000 characters each way took a few KB on the wire.
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    for direction in ("in", "out"):
        found = re.search(rf'^wsthreads_bytes_total{{direction="{direction}"}} (\S+)$', metrics, re.M)
        assert found is not None and float(found.group(1)) < 20_000, metrics


def test_page_subscribes_and_resumes_after_a_drop(browser: object) -> None:
    """/?topic=news: published messages show as [news] DATA; after a drop the page resumes, nothing lost."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    import wsthreads

    assert isinstance(browser, WebDriver)
    pubsub = wsthreads.PubSub(wsthreads.MemoryBroker())
    server = wsthreads.start_server(wsthreads.create_app(extensions=[pubsub]), "127.0.0.1", 0)
    app = server.app
    try:
        browser.get(f"{server.page_url}?topic=news")
        wait = WebDriverWait(browser, 10)

        def texts(kind: str) -> list[str]:
            return [item.text for item in browser.find_elements(By.CSS_SELECTOR, f"#log .{kind} span")]

        assert wait.until(lambda _: any(t.startswith("subscribed to news") for t in texts("state")))
        published = [pubsub.publish("news", f"before the drop {i}") for i in range(3)]
        assert wait.until(lambda _: len(texts("received")) == 3)
        cut = app.connections()[0]
        cut.abort()  # the network drops: the page sees 1006 and reconnects
        assert wait.until(lambda _: cut.done.is_set())
        published += [pubsub.publish("news", f"while away {i}") for i in range(3)]
        pubsub.publish("other", "not for this page")

        def resumed() -> bool:
            conns = app.connections()
            return len(conns) == 1 and conns[0].request is not None and "last_id" in conns[0].request.query

        assert wait.until(lambda _: resumed())
        published += [pubsub.publish("news", f"after {i}") for i in range(3)]
        assert wait.until(lambda _: len(texts("received")) == 9)
        wanted = [f"{when} {i}" for when in ("before the drop", "while away", "after") for i in range(3)]
        assert texts("received") == [f"[news] {data}" for data in wanted]
        assert any(re.fullmatch(r"reconnecting in 0\.[2-5] s", t) for t in texts("state"))
        assert len(published) == 9
    finally:
        server.shutdown()


def test_page_backs_off_while_every_session_fails_at_once(browser: object) -> None:
    """A subscription that keeps ending with 1011 at once: the waits grow (0.25-0.5 s, 0.5-1 s, ...)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    import wsthreads

    def may_subscribe(user: object, topic: str) -> bool:
        raise RuntimeError("the permissions table is gone")

    assert isinstance(browser, WebDriver)
    app = wsthreads.create_app(extensions=[wsthreads.PubSub(wsthreads.MemoryBroker(), may_subscribe)])
    server = wsthreads.start_server(app, "127.0.0.1", 0)
    try:
        browser.get(f"{server.page_url}?topic=news")
        time.sleep(4.5)  # what the page does meanwhile is the point
        states = [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#log .state span")]
        delays = [float(m[1]) for t in states if (m := re.fullmatch(r"reconnecting in ([0-9.]+) s", t))]
    finally:
        server.shutdown()
    assert 3 <= len(delays) <= 5, states
    for number, delay in enumerate(delays[:4]):  # equal jitter: between half and all of the ceiling
        assert 0.25 * 2**number - 0.05 <= delay <= 0.5 * 2**number + 0.05, delays
