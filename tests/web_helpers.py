"""Shared pieces of the dashboard tests: a server with keys of each role in two projects, Debian's Chromium
driven by Playwright (never a downloaded browser), logging in, screenshots and the axe accessibility check."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import CHROMIUM, serve_app
from fastapi import FastAPI

from hone.api.app import create_app
from hone.api.keys import KeyStore
from hone.serve.config import ServeConfig

AXE = Path(__file__).parent / "vendor" / "axe-core-4.14.1.min.js"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"
# name: (project, role)
KEYS = {"alpha-admin": ("alpha", "admin"), "alpha-approver": ("alpha", "approver"),
        "alpha-dev": ("alpha", "developer"), "alpha-viewer": ("alpha", "viewer"),
        "beta-admin": ("beta", "admin"), "beta-dev": ("beta", "developer")}

needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                   "(apt-get install chromium; `make install` does it as root)")


@dataclass
class Dashboard:
    """A running `hone serve` app: its root URL (the dashboard), its /v1 URL, the keys by name, the database and
    the application itself."""

    root: str
    api: str
    keys: dict[str, str]
    db: str
    app: FastAPI

    def client(self, key_name: str) -> httpx.Client:
        """An HTTP client for the /v1 API with one key."""
        return httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.keys[key_name]}"},
                            timeout=60)


@contextmanager
def dashboard_server(model_dir: Path, tmp_path: Path, *, worker: bool = True, **config: object) -> Iterator[Dashboard]:
    """Serve the tiny model with the dashboard on 127.0.0.1, keys of each role in projects alpha and beta."""
    db = f"sqlite:///{tmp_path / 'hone.db'}"
    store = KeyStore(db)
    keys = {name: store.create(name, project=project, role=role) for name, (project, role) in KEYS.items()}
    settings = {"base": str(model_dir), "base_id": "tiny", "dtype": "fp32", "threads": 1, "database": db,
                "models": {"tiny": {"capture": True}}, "jobs": {"worker": worker, "poll_s": 0.05}} | config
    app = create_app(ServeConfig(**settings))
    with serve_app(app) as url:
        yield Dashboard(url.removesuffix("/v1"), url, keys, db, app)


def login(page, dashboard: Dashboard, key_name: str, next_path: str = "/") -> None:
    """Log in through the form with one key and land on `next_path`."""
    page.goto(f"{dashboard.root}/login?next={next_path}")
    page.get_by_label("API key").fill(dashboard.keys[key_name])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(re.escape(dashboard.root + next_path.split("?")[0]) + r".*"))


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot under test-output/screenshots/NAME.png and return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def accessibility_problems(page) -> list[dict]:
    """axe-core's serious and critical violations on the page as it is now (WCAG 2 A/AA rules)."""
    page.add_script_tag(content=AXE.read_text(encoding="utf-8"))  # not path=: that names this folder in the page
    violations = page.evaluate("""async () => {
        const result = await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21aa']},
                                                resultTypes: ['violations']});
        return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                            nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
    }""")
    page.evaluate("""() => { for (const script of document.querySelectorAll('head script:not([src])'))
                                 if (script.textContent.includes('axe-core')) script.remove(); }""")
    return [v for v in violations if v["impact"] in ("serious", "critical")]
