"""Helpers for the console tests: a console on a real accounts file and trail, signed-in clients."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from starlette.testclient import TestClient

from dicom_anon.config import load_settings
from dicom_anon.web.accounts import Accounts
from dicom_anon.web.app import Console, create_app
from dicom_anon.web.commands import accounts_path

PASSWORD = "correct horse battery"
SETTINGS = {
    "ingress": {"allowed_callers": [{"ae_title": "CLINIC", "addresses": ["127.0.0.1"]}]},
    "destinations": {"teaching": {"ae_title": "TEACHING", "host": "127.0.0.1", "port": 11113}},
    "routes": [
        {"name": "photos", "match": {"modality": "XC"}, "profile": "basic", "destinations": "teaching"}
    ],
}

# Photo settings for tests that run the face pipeline: mouth kept, CPU, and a QA limit loose enough
# that a test does not depend on how far the pool's people are from the test face.
LENIENT = {"preserve": ["mouth"], "device": "cpu", "max_identity_similarity": 0.9, "max_candidates": 2}


def make_console(tmp_path: Path, settings: dict[str, Any] | None = None, **kwargs: Any) -> Console:
    """A console for ``settings`` (SETTINGS by default) with an officer, a reviewer and an operator."""
    config = tmp_path / "dicom-anon.yaml"
    raw = {"data_dir": str(tmp_path / "data"), **(settings or SETTINGS)}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    loaded = load_settings(config)
    accounts = Accounts(accounts_path(loaded))
    for name, role in (("olivia", "officer"), ("rita", "reviewer"), ("oscar", "operator")):
        accounts.add(name, role, PASSWORD)
    return Console(loaded, config, accounts, **kwargs)


def trail(console: Console, event: str) -> list[dict]:
    path = console.settings.audit_path
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["event"] == event]


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def sign_in(client: TestClient, name: str, password: str = PASSWORD):
    page = client.get("/login")
    return client.post(
        "/login",
        data={"name": name, "password": password, "csrf": csrf_of(page.text), "next": "/"},
        follow_redirects=False,
    )


def signed_in(console: Console, name: str) -> tuple[TestClient, str]:
    client = TestClient(create_app(console))
    assert sign_in(client, name).status_code == 303
    page = client.get("/")
    assert page.status_code == 200
    return client, csrf_of(page.text)
