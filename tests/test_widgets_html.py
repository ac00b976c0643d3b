"""The explorers respond in the book's static HTML, with no kernel: Chromium moves a slider on the
built page and the picture changes to the one stored for the new position.

A tiny book of one notebook with two explorers (``tests/test_book.py`` builds it the same way);
Chromium is driven over its DevTools protocol (JSON over a websocket, through tornado's client,
which Jupyter installs) so that a real key press reaches the slider. Screenshots of the picture
before and after land in ``_build/screenshots/widgets_html/`` for a person to look at.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from tornado.websocket import websocket_connect

from .test_book import (
    CHROMIUM_FLAGS,
    SCREENSHOTS,
    Book,
    _build,
    _chromium,
    _Server,
    _tiny_notebook,
    _tiny_toc,
)

CELLS = [
    "from deepsim_edu.data.demo_pair import make_demo_pair\n"
    "from deepsim_edu.widgets import metric_explorer, warp_explorer",
    'warp_explorer(make_demo_pair(size=48)["moving"], seed=1)',
    # 7 shifts, 3 of them stored (-3, 0, 3): the others show the placeholder in the page
    "metric_explorer(max_shift=3, crop=32, noise=0.0, shift=0, max_frames=3)",
]
STORED = {"amplitude (voxels)": 9, "shift (voxels)": 3}  # stored pictures of each main control


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Book:
    folder = tmp_path_factory.mktemp("widgets_html")
    toc = _tiny_toc(folder / "src", "explorers")
    _tiny_notebook(folder / "src" / "book" / "explorers.ipynb", CELLS)
    return _build("widgets_html", folder / "_build", toc, run_experiment=False, preset="ci")


def _stored_pictures(book: Book) -> dict[str, list[bytes | None]]:
    """Main control's description → the picture stored at each of its positions (None: the
    placeholder), read from the executed notebook's widget state as the page embeds it."""
    notebook = nbformat.read(book.stage / "book" / "explorers.ipynb", as_version=4)
    state = notebook.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]

    def model(ref: str) -> dict:
        return state[ref.removeprefix("IPY_MODEL_")]

    pictures = {}
    for link in (m for m in state.values() if m["model_name"] == "DirectionalLinkModel"):
        (source, _), (stack, _) = link["state"]["source"], link["state"]["target"]
        frames = []
        for child in model(stack)["state"]["children"]:
            frame = model(child)
            if frame["model_name"] != "VBoxModel":  # the placeholder (an HTML)
                frames.append(None)
                continue
            image = model(frame["state"]["children"][0])
            frames.append(base64.b64decode(image["buffers"][0]["data"]))
        pictures[model(source)["state"]["description"]] = frames
    return pictures


def test_the_page_stores_one_picture_per_stored_position(book: Book) -> None:
    pictures = _stored_pictures(book)
    assert {name: sum(p is not None for p in frames) for name, frames in pictures.items()} == STORED
    assert [p is not None for p in pictures["shift (voxels)"]] == [1, 0, 0, 1, 0, 0, 1]
    page = (book.html / "book" / "explorers.html").read_text()
    (state,) = re.findall(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)'
                          r"</script>", page, flags=re.S)  # fmt: skip
    models = json.loads(state)["state"].values()
    images = [m for m in models if m["model_name"] == "ImageModel" and m.get("buffers")]
    assert len(images) == sum(STORED.values())  # no picture beyond the stored ones weighs on it
    print(f"page {len(page) / 1e3:.0f} kB, widget state {len(state) / 1e3:.0f} kB")


# --- Chromium over the DevTools protocol ---------------------------------------------------------


class DevTools:
    """One page of a headless Chromium, driven by DevTools protocol commands."""

    def __init__(self, chromium: str, profile: Path) -> None:
        flags = [flag for flag in CHROMIUM_FLAGS if not flag.startswith("--virtual-time")]
        self.process = subprocess.Popen(
            [chromium, *flags, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not open its DevTools port (rc {self.process.poll()})")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            targets = json.load(answer)
        self.socket_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.ids = itertools.count(1)

    async def connect(self) -> None:
        self.socket = await websocket_connect(self.socket_url, max_message_size=2**26)

    async def call(self, method: str, **params) -> dict:
        """Send one command and return its result (events in between are skipped)."""
        number = next(self.ids)
        await self.socket.write_message(json.dumps({"id": number, "method": method,
                                                    "params": params}))  # fmt: skip
        while True:
            message = await asyncio.wait_for(self.socket.read_message(), 60)
            if message is None:
                pytest.fail(f"chromium closed the DevTools socket during {method}")
            answer = json.loads(message)
            if answer.get("id") == number:
                if "error" in answer:
                    pytest.fail(f"{method}: {answer['error']}")
                return answer["result"]

    async def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                                 returnByValue=True)  # fmt: skip
        if "exceptionDetails" in result:
            pytest.fail(f"{expression[:80]}…: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, seconds: float = 60):
        """Poll until the expression is truthy; returns its value."""
        deadline = time.monotonic() + seconds
        while not (value := await self.evaluate(expression)):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {expression}")
            await asyncio.sleep(0.2)
        return value

    async def press(self, key: str, code: int) -> None:
        """A real key press on the focused element (what a reader's keyboard sends)."""
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key,
                            windowsVirtualKeyCode=code, nativeVirtualKeyCode=code)  # fmt: skip

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def slider(name: str) -> str:
    """JavaScript: the slider whose label is ``name``."""
    return (f"[...document.querySelectorAll('.widget-slider .widget-label')]"
            f".find(l => l.textContent === {name!r}).closest('.widget-slider')")  # fmt: skip


def explorer(name: str) -> str:
    """JavaScript: the explorer (its VBox) of the slider ``name``."""
    return f"{slider(name)}.closest('.widget-vbox')"


PICTURE = """(async () => {{
  const img = {explorer}.querySelector('img');
  const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
  let text = '';
  for (const b of bytes) text += String.fromCharCode(b);
  return {{src: img.src, data: btoa(text)}};
}})()"""


async def _picture(page: DevTools, name: str) -> tuple[str, bytes]:
    """The src and the bytes of the picture the explorer of slider ``name`` shows."""
    shown = await page.evaluate(PICTURE.format(explorer=explorer(name)))
    return shown["src"], base64.b64decode(shown["data"])


async def _screenshot(page: DevTools, name: str, path: Path) -> bytes:
    """A PNG of the explorer's picture area as rendered."""
    box = await page.evaluate(f"(() => {{ const r = {explorer(name)}"
                              ".querySelector('img').getBoundingClientRect(); return {x: r.x + "
                              "scrollX, y: r.y + scrollY, width: r.width, height: r.height, "
                              "scale: 1}; })()")
    shot = await page.call("Page.captureScreenshot", format="png", clip=box,
                           captureBeyondViewport=True)  # fmt: skip
    data = base64.b64decode(shot["data"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


async def _move(page: DevTools, name: str, key: str, code: int) -> str:
    """Focus the slider ``name``'s handle, press ``key``; returns the slider's readout after."""
    await page.evaluate(f"{slider(name)}.querySelector('.noUi-handle').focus()")
    readout = f"{slider(name)}.querySelector('.widget-readout').textContent"
    before = await page.evaluate(readout)
    await page.press(key, code)
    return await page.wait_for(f"(() => {{ const r = {readout}; return r !== {before!r} && r; }})"
                               "()")


def test_a_slider_switches_the_picture_without_a_kernel(book: Book, tmp_path) -> None:
    chromium = _chromium()
    server = _Server(book.html)
    pictures = _stored_pictures(book)
    page = DevTools(chromium, tmp_path / "profile")
    shots = SCREENSHOTS / "widgets_html"

    async def scenario() -> None:
        await page.connect()
        await page.call("Page.enable")
        await page.call("Page.navigate", url=f"{server.url}/book/explorers.html")
        await page.wait_for("document.querySelectorAll('.widget-slider .noUi-handle').length"
                            " >= 6 && [...document.querySelectorAll('.jupyter-widgets img')]"
                            ".every(i => i.complete && i.naturalWidth > 0)")  # fmt: skip
        # the warp explorer: amplitude 2 → 3 (ArrowRight), a stored picture for each
        name = "amplitude (voxels)"
        src, first = await _picture(page, name)
        assert first == pictures[name][2]  # the first view: amplitude 2
        before = await _screenshot(page, name, shots / "amplitude_2.png")
        assert await _move(page, name, "ArrowRight", 39) == "3"
        await page.wait_for(f"{explorer(name)}.querySelector('img').src !== {src!r}")
        assert (await _picture(page, name))[1] == pictures[name][3] != first
        assert await _screenshot(page, name, shots / "amplitude_3.png") != before
        # the metric explorer: shift 0 → 3 (End, stored) → 2 (ArrowLeft, not stored)
        name = "shift (voxels)"
        src, first = await _picture(page, name)
        assert first == pictures[name][3]
        assert await _move(page, name, "End", 35) == "3"
        await page.wait_for(f"{explorer(name)}.querySelector('img').src !== {src!r}")
        assert (await _picture(page, name))[1] == pictures[name][6] != first
        assert await _move(page, name, "ArrowLeft", 37) == "2"
        text = await page.wait_for(f"(() => {{ const e = {explorer(name)}; return "
                                   "!e.querySelector('img') && e.textContent; })()")
        assert "No picture stored for this shift" in text and "stores -3, 0, 3" in text

    try:
        asyncio.run(scenario())
    finally:
        page.close()
        server.httpd.shutdown()
    failed = [(path, code) for path, code in server.requests
              if code >= 400 and not path.startswith("/favicon")]  # fmt: skip
    assert not failed, failed
