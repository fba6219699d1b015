"""The web page at ``/`` (`service.routes.page`, ``service/static``), over plain HTTP and in a
real headless browser: Debian's Chromium (``apt-get install chromium``; `.ci/run` installs it)
driven by Playwright, against in-process servers (one with API keys, one without) and
in-process workers running the tiny model.

The browser tests skip, saying why, only where no Chromium is installed. They save a screenshot
of each state they reach to ``data/screenshots/page/`` (or ``$WEATHER_TEST_SCREENSHOTS``), which
the test run keeps; ``docs/page.png`` is one of them. A job is held before a given sampling call
(as in `test_service_gated.py`), so the page is seen mid-run on any machine.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from service_support import (
    INIT,
    KEYS,
    REPO,
    digest,
    hold_before_call,
    server_thread,
    service_files,
    wait_for,
)

from service.settings import Settings
from service.sql_store import open_store
from service.worker import Worker

STATIC = REPO / "service" / "static"
SHOTS = Path(os.environ.get("WEATHER_TEST_SCREENSHOTS", REPO / "data" / "screenshots" / "page"))
WAIT_MS = 180_000  # the first job compiles the sampling call
KEY = KEYS["alice"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, archive, statistics):  # type: ignore[no-untyped-def]
    return service_files(tmp_path_factory, archive, statistics)


@pytest.fixture(scope="module")
def servers(files, tmp_path_factory) -> Iterator[Callable[[bool], str]]:  # type: ignore[no-untyped-def]
    """A function giving the URL of the server with API keys (alice's) or without; each is
    started on first use, with its worker in this process, and stopped with the module."""
    started: dict[bool, str] = {}
    with contextlib.ExitStack() as stack:

        def url(keys: bool) -> str:
            if keys not in started:
                settings = Settings(
                    checkpoint=files.checkpoint,
                    archive=files.archive,
                    data_dir=tmp_path_factory.mktemp("service-page") / "data",
                    compilation_cache_dir=files.jax_cache,
                    api_keys=[digest(KEY)] if keys else [],
                    worker=False,
                    max_members=8,
                    batch_sizes=[8],
                    warmup=False,
                    poll_s=0.1,
                )
                started[keys] = stack.enter_context(server_thread(settings))
                store = open_store(settings.database, schema=settings.database_schema)
                stack.callback(store.close)
                worker = Worker(settings, store)
                worker.start()
                stack.callback(worker.stop)  # first: the stack unwinds last in, first out
            return started[keys]

        yield url


# ---- plain HTTP ----


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def test_the_page_and_its_assets_are_served_with_their_types_and_no_key(servers):
    url = servers(True)
    with httpx.Client(base_url=url, timeout=30) as client:  # no key: the page needs none
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "img-src 'self' blob:" in policy
        parser = _Links()
        parser.feed(page.text)
        assert sorted(parser.links) == ["static/app.css", "static/app.js", "static/favicon.svg"]
        types = {
            "static/app.js": "text/javascript; charset=utf-8",
            "static/app.css": "text/css; charset=utf-8",
            "static/favicon.svg": "image/svg+xml",
        }
        for link in parser.links:  # relative to the page, so they work behind a path prefix
            r = client.get(f"/{link}")
            assert r.status_code == 200, link
            assert r.headers["content-type"] == types[link]
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.content == (STATIC / link.removeprefix("static/")).read_bytes()
        for missing in ("/static/index.html.bak", "/static/..%2Fapp.py", "/static/nope.js"):
            assert client.get(missing).status_code == 404, missing
        # The API itself still wants the key.
        assert client.get("/archive").status_code == 401


def test_the_page_loads_nothing_from_outside_the_service():
    """No absolute URL in any of the page's files but the SVG namespace (a name, never
    fetched); every src, href and url() is relative to the page."""
    names = sorted(p.name for p in STATIC.iterdir())
    assert names == ["app.css", "app.js", "favicon.svg", "index.html"]
    for path in STATIC.iterdir():
        text = path.read_text()
        absolute = set(re.findall(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'`)<>]*", text))
        assert absolute <= {"http://www.w3.org/2000/svg"}, (path.name, absolute)
        for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", text) + re.findall(
            r"url\(\s*['\"]?([^'\")]*)", text
        ):
            assert not ref.startswith(("/", "data:")) and ":" not in ref, (path.name, ref)
        assert "@import" not in text and "import(" not in text, path.name


def test_archive_gives_the_usable_init_times_and_the_fields(servers, archive):
    with httpx.Client(base_url=servers(True), timeout=30) as client:
        r = client.get("/archive", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    info = r.json()
    times = archive.time.values  # 6-hourly: an init time needs the time 12 h before too
    assert info["first_init"] == f"{np.datetime_as_string(times[2], unit='s')}Z"
    assert info["last_init"] == f"{np.datetime_as_string(times[-1], unit='s')}Z"
    assert info["step_hours"] == 6.0 and info["init_times"] == times.size - 2
    assert info["level_variables"] == [
        "geopotential",
        "temperature",
        "u_component_of_wind",
        "v_component_of_wind",
    ]
    assert info["surface_variables"] == ["surface_pressure"]
    assert info["levels"] == [500, 850]
    assert info["max_members"] == 8 and info["max_lead_hours"] == 360


def _dark(pixels: np.ndarray) -> np.ndarray:
    """Near-black: the axes' frame (viridis's darkest colour has blue 84)."""
    return np.asarray((pixels < 60).all(axis=-1))


def test_the_map_says_where_its_axes_lie_in_the_image(servers, archive):
    """``X-Map-Axes`` is the map frame's place in the PNG: the black frame lines lie on its
    four edges (within a pixel), and ``X-Map-Extent`` the grid cells' outer edges."""
    client = httpx.Client(
        base_url=servers(True), headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    )
    with client:
        body = {
            "init_time": INIT,
            "lead": 12,
            "members": 2,
            "seed": 1,
            "variables": ["temperature"],
        }
        job = client.post("/forecast", json=body).json()
        assert (
            wait_for(client, job["id"], {"succeeded", "failed"}, WAIT_MS / 1000)["status"]
            == "succeeded"
        )
        r = client.get(f"/forecast/{job['id']}/map.png", params={"level": 850})
    assert r.status_code == 200, r.text
    left, top, right, bottom = map(float, r.headers["x-map-axes"].split(","))
    west, east, south, north = map(float, r.headers["x-map-extent"].split(","))
    lat, lon = archive.latitude.values, archive.longitude.values
    half_lat, half_lon = abs(lat[1] - lat[0]) / 2, abs(lon[1] - lon[0]) / 2
    np.testing.assert_allclose(
        [west, east, south, north],
        [lon.min() - half_lon, lon.max() + half_lon, lat.min() - half_lat, lat.max() + half_lat],
        atol=1e-4,
    )
    image = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
    height, width, _ = image.shape
    x0, x1, y0, y1 = left * width, right * width, top * height, bottom * height
    assert 0 < x0 < x1 < width and 0 < y0 < y1 < height
    inner_rows = slice(int(y0) + 3, int(y1) - 3)
    inner_cols = slice(int(x0) + 3, int(x1) - 3)

    def frame_at(lines: np.ndarray, edge: float) -> float:
        """The frame line's offset from ``edge`` (px): the line of ``lines`` [n, along] that
        is dark along most of its length, nearest ``edge``."""
        near = [i for i in range(int(edge) - 3, int(edge) + 4) if _dark(lines[i]).mean() > 0.9]
        assert near, f"no frame line within 3 px of {edge:.1f}"
        return min(abs(i + 0.5 - edge) for i in near)

    assert frame_at(image[inner_rows].transpose(1, 0, 2), x0) <= 1.0
    assert frame_at(image[inner_rows].transpose(1, 0, 2), x1) <= 1.0
    assert frame_at(image[:, inner_cols], y0) <= 1.0
    assert frame_at(image[:, inner_cols], y1) <= 1.0


# ---- in the browser ----


def chromium() -> str:
    """The system's Chromium, or skip saying why."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.skip(
            "no Chromium on this machine: the page's browser tests need Debian's chromium "
            "(apt-get install -y --no-install-recommends chromium; .ci/run installs it as root)"
        )
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


class Session:
    """One browser page on one server, recording every request it makes."""

    def __init__(self, browser: Any, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.context = browser.new_context(viewport={"width": 1280, "height": 1000})
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.requests: list[Any] = []
        self.problems: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request))
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on(
            "console",
            # Chromium logs every 4xx a fetch gets; the tests ask for some of those.
            lambda m: (
                self.problems.append(f"console: {m.text}")
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )
        SHOTS.mkdir(parents=True, exist_ok=True)

    def shot(self, state: str) -> Path:
        path = SHOTS / f"{self.name}-{state}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def image_loaded(self, selector: str, **data: str) -> None:
        """Wait until the image has loaded (``naturalWidth > 0``) with these data attributes;
        fail at once if the page shows an error instead."""
        outcome = self.page.wait_for_function(
            """([selector, data]) => {
                const errors = document.getElementById("errors");
                if (!errors.hidden) return `the page shows: ${errors.textContent}`;
                const img = document.querySelector(selector);
                return img && img.complete && img.naturalWidth > 0 && !img.hidden
                    && Object.entries(data).every(([k, v]) => img.dataset[k] === v);
            }""",
            arg=[selector, data],
            timeout=WAIT_MS,
        ).json_value()
        assert outcome is True, outcome

    def api_requests(self, since: int = 0) -> list[Any]:
        """The requests to the API (not the page and its files, not blob: images), from the
        ``since``-th request the page made on."""
        return [
            r
            for r in self.requests[since:]
            if r.url.startswith(self.url)
            and urlsplit(r.url).path != "/"
            and not urlsplit(r.url).path.startswith("/static/")
        ]

    def last_map_query(self) -> str:
        """The query of the page's latest map request."""
        asked = [r.url for r in self.requests if "/map.png?" in r.url]
        assert asked, "the page asked for no map"
        return urlsplit(asked[-1]).query

    def close(self) -> None:
        # Everything came from this server (or from the page's own blob: URLs).
        outside = [r.url for r in self.requests if not r.url.startswith((self.url, "blob:"))]
        assert not outside, outside
        self.context.close()


@pytest.fixture
def session(browser) -> Iterator[Callable[[str, str], Session]]:  # type: ignore[no-untyped-def]
    made: list[Session] = []

    def make(url: str, name: str) -> Session:
        made.append(Session(browser, url, name))
        return made[-1]

    yield make
    for s in made:
        s.close()


def map_geometry(url: str, key: str | None, job_id: str, query: str) -> tuple[list[float], ...]:
    """The map's axes and extent as the server gives them for the page's current map."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(f"{url}/forecast/{job_id}/map.png?{query}", headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    axes = [float(v) for v in r.headers["x-map-axes"].split(",")]
    extent = [float(v) for v in r.headers["x-map-extent"].split(",")]
    return axes, extent


def click_place(s: Session, job_id: str, key: str | None, lat: float, lon: float) -> None:
    """Click the map where (lat, lon) is drawn, by the server's geometry."""
    img = s.page.locator("#map-img")
    geometry = map_geometry(s.url, key, job_id, s.last_map_query())
    (left, top, right, bottom), (west, east, south, north) = geometry
    box = img.bounding_box()
    assert box is not None
    u = ((lon - west) % 360) / (east - west)
    v = (north - lat) / (north - south)
    x = box["x"] + box["width"] * (left + u * (right - left))
    y = box["y"] + box["height"] * (top + v * (bottom - top))
    s.page.mouse.click(x, y)


def meteogram_place(s: Session) -> tuple[float, float]:
    """(lat, lon) of the page's latest meteogram request."""
    asked = [r.url for r in s.requests if "/meteogram.png?" in r.url]
    assert asked, "the page asked for no meteogram"
    query = parse_qs(urlsplit(asked[-1]).query)
    return float(query["lat"][0]), float(query["lon"][0])


def test_the_page_with_api_keys(servers, session, monkeypatch):
    """A wrong key is refused on the page; with alice's key: submit, watch the job's progress
    while its worker is held mid-run, the map at the latest lead, then the finished job's maps
    at another lead and of a member, a click that becomes the meteogram of that place, and the
    CRPS against lead. Every API request carries the key."""
    from playwright.sync_api import expect

    url = servers(True)
    s = session(url, "keys")
    page = s.page
    page.goto(url + "/")
    expect(page.locator("#errors")).to_contain_text("401: missing bearer token")
    page.fill("#api-key", "not-a-key")
    page.click("#key-use")
    expect(page.locator("#errors")).to_contain_text("401: unknown API key")
    expect(page.locator("#errors")).to_contain_text("Enter your API key above.")
    s.shot("1-wrong-key")
    assert any(r.all_headers().get("authorization") == "Bearer not-a-key" for r in s.api_requests())

    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    expect(page.locator("#errors")).to_be_hidden()
    expect(page.locator("#archive-info")).to_contain_text(
        "Init times 2001-01-01 12:00Z to 2001-01-12 18:00Z, every 6 h"
    )
    assert page.evaluate("localStorage.getItem('weather.apiKey')") == KEY
    keyed_from = len(s.requests)

    held, release = hold_before_call(monkeypatch, 3, WAIT_MS / 1000)
    try:
        page.fill("#init-date", "2001-01-03")
        page.select_option("#init-hour", "00:00")
        page.fill("#lead", "36")
        page.fill("#members", "3")
        page.fill("#seed", "7")
        page.click("#submit")
        assert held.wait(WAIT_MS / 1000), "the worker never reached its third sampling call"
        # Two of three leads done, the third held: the list and the job show it.
        expect(page.locator("#job-status")).to_have_text("running, 24/36 h", timeout=WAIT_MS)
        row = page.locator("#job-rows tr").first
        expect(row.locator(".status")).to_have_text("running")
        expect(row.locator(".progress-text")).to_contain_text("24/36 h")
        assert row.locator("progress").evaluate("p => [p.value, p.max]") == [2, 3]
        s.image_loaded("#map-img", lead="24")
        s.shot("2-running")
    finally:
        release.set()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=WAIT_MS)
    expect(page.locator("#job-rows tr").first.locator(".status")).to_have_text("succeeded")
    # The slider followed the latest lead: the map moved to +36 h.
    s.image_loaded("#map-img", lead="36", field="mean")
    assert page.locator("#lead-slider").evaluate("r => [r.max, r.value]") == ["36", "36"]
    s.shot("3-map")

    before = page.locator("#map-img").get_attribute("src")
    page.locator("#lead-slider").focus()
    page.keyboard.press("ArrowLeft")
    s.image_loaded("#map-img", lead="24")
    assert page.locator("#map-img").get_attribute("src") != before
    expect(page.locator("#lead-value")).to_have_text("+24 h")
    s.shot("4-lead-24h")

    page.select_option("#field", "member")
    page.select_option("#member", "2")
    s.image_loaded("#map-img", lead="24", field="member", member="2")
    assert "field=member&member=2" in s.last_map_query()
    page.select_option("#field", "spread")
    s.image_loaded("#map-img", lead="24", field="spread", member="")
    expect(page.locator("#member")).to_be_disabled()
    page.select_option("#field", "mean")
    s.image_loaded("#map-img", lead="24", field="mean")

    job_id = page.locator("#job-id").inner_text()
    click_place(s, job_id, KEY, 39.0, 100.0)
    s.image_loaded("#meteogram-img")
    lat, lon = meteogram_place(s)
    # One pixel of the map is about 0.7 degrees.
    assert abs(lat - 39.0) < 1.0 and abs(lon - 100.0) < 1.0, (lat, lon)
    expect(page.locator("#meteogram-caption")).to_contain_text("39.")
    expect(page.locator("#marker")).to_be_visible()
    s.shot("5-meteogram")

    expect(page.locator("#crps-chart circle")).to_have_count(3)
    expect(page.locator("#crps-table tbody tr")).to_have_count(3)
    scores = httpx.get(
        f"{url}/forecast/{job_id}/scores", headers={"Authorization": f"Bearer {KEY}"}
    ).json()
    want = [
        r["crps"]
        for r in sorted(scores["rows"], key=lambda r: r["lead_hours"])
        if r["variable"] == "geopotential" and r["level"] == 500
    ]
    shown = [float(t) for t in page.locator("#crps-table tbody td:nth-child(2)").all_inner_texts()]
    np.testing.assert_allclose(shown, want, rtol=1e-3, atol=5e-4)
    s.shot("6-scores")

    keyed = s.api_requests(since=keyed_from)
    assert any("/map.png?" in r.url for r in keyed) and any("/scores" in r.url for r in keyed)
    for r in keyed:
        assert r.all_headers().get("authorization") == f"Bearer {KEY}", r.url
    assert not s.problems, s.problems


def test_the_page_without_api_keys(servers, session, archive):
    """A server without keys: no key asked or sent; a server-side refusal (an init time out
    of the archive) shows its 422 detail; a forecast runs to its map and meteogram."""
    from playwright.sync_api import expect

    url = servers(False)
    s = session(url, "nokeys")
    page = s.page
    page.goto(url + "/")
    expect(page.locator("#archive-info")).to_contain_text("Init times 2001-01-01 12:00Z")
    expect(page.locator("#errors")).to_be_hidden()
    # The picker offers the archive's dates and its hours (every 6 h).
    assert page.locator("#init-date").evaluate("d => [d.min, d.max, d.value]") == [
        "2001-01-01",
        "2001-01-12",
        "2001-01-01",
    ]
    hours = page.locator("#init-hour option").all_inner_texts()
    assert hours == ["00:00Z", "06:00Z", "12:00Z", "18:00Z"]
    assert page.locator("#init-hour").input_value() == "12:00"
    # Past the form's own checks (min/max): the server names the field and the reason.
    page.evaluate(
        """() => {
            document.getElementById('init-date').value = '2001-02-01';
            document.getElementById('submit-form').dispatchEvent(
                new Event('submit', {cancelable: true}));
        }"""
    )
    expect(page.locator("#errors")).to_contain_text(
        "422: init_time: 2001-02-01T12:00Z is not in the analysis archive"
    )
    s.shot("1-refused")

    page.fill("#init-date", "2001-01-04")
    page.select_option("#init-hour", "06:00")
    page.fill("#lead", "24")
    page.fill("#members", "2")
    page.click("#submit")
    expect(page.locator("#errors")).to_be_hidden()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=WAIT_MS)
    s.image_loaded("#map-img", lead="24")
    page.select_option("#variable", "surface_pressure")
    expect(page.locator("#level")).to_be_disabled()
    s.image_loaded("#map-img", lead="24", variable="surface_pressure")
    assert "level=" not in s.last_map_query()
    job_id = page.locator("#job-id").inner_text()
    click_place(s, job_id, None, -45.0, 300.0)
    s.image_loaded("#meteogram-img")
    lat, lon = meteogram_place(s)
    assert abs(lat + 45.0) < 1.0 and abs(lon - 300.0) < 1.0, (lat, lon)
    expect(page.locator("#crps-chart circle")).to_have_count(2)
    s.shot("2-meteogram")
    for r in s.api_requests():
        assert "authorization" not in r.all_headers(), r.url
    assert not s.problems, s.problems
