"""Checks that an HTML report is self-contained: by parsing it, and in a real headless browser.

``parse_self_contained`` parses the page (always available): no script, no external stylesheet or
frame, every image an embedded PNG that decodes, every link relative. ``browser_check`` opens a copy
of the page in headless Chromium with the network blocked and reports, from inside the page, how
many images decoded and which resources were fetched; it returns None when no Chromium is
installed (``.ci/run`` installs one where it can), so tests skip only that part, with the reason.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

__all__ = ["CHROMIUM_FLAGS", "browser_check", "chromium", "parse_self_contained"]

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9")
_PNG = b"\x89PNG\r\n\x1a\n"
_PROBE = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const decoded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  const fetched = performance.getEntriesByType('resource').map(e => e.name);
  document.body.setAttribute('data-probe', JSON.stringify({images: images.length, decoded, fetched,
                                                           title: document.title}));
});
</script>"""


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse_self_contained(page: str) -> dict:
    """Parse ``page`` and check it needs nothing from outside; returns its images, links and text.

    Raises AssertionError naming the first offending element.
    """
    parser = _Collector()
    parser.feed(page)
    images, links = [], []
    for tag, attrs in parser.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), f"<{tag}> in a self-contained page"
        if tag == "img":
            source = attrs.get("src") or ""
            assert source.startswith("data:image/png;base64,"), f"image not embedded: {source[:60]}"
            assert base64.b64decode(source.split(",", 1)[1])[:8] == _PNG, "embedded image is not a PNG"
            images.append(attrs)
        if tag == "a" and attrs.get("href"):
            href = attrs["href"] or ""
            assert "://" not in href and not href.startswith("//"), f"external link {href}"
            links.append(href)
    assert "url(" not in page.lower(), "CSS url() in a self-contained page"
    return {"images": images, "links": links, "text": " ".join(parser.text)}


def chromium() -> str | None:
    """Path of a Chromium (or Chrome) binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_check(path: Path, timeout_s: float = 90.0) -> dict | None:
    """Open a copy of the page (plus a probe script) in headless Chromium without network.

    Returns
    -------
    dict or None
        ``images`` (count), ``decoded`` (images the browser decoded), ``fetched`` (resources it
        loaded: none for a self-contained page), ``title``; None without Chromium.
    """
    binary = chromium()
    if binary is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.html"
        probe.write_text(Path(path).read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
        command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={folder}/profile", "--virtual-time-budget=10000",
                   "--dump-dom", probe.as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    marker = 'data-probe="'
    start = result.stdout.find(marker)
    assert start >= 0, f"the browser did not load the page: {result.stderr[-500:]}"
    end = result.stdout.find('"', start + len(marker))
    return json.loads(html.unescape(result.stdout[start + len(marker):end]))
