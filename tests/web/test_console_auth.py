"""The console's door: signing in, sessions, roles, CSRF and lock-out, each refusal in the audit
trail. Driven through Starlette's TestClient against a real accounts file and a real trail."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from webkit import PASSWORD, csrf_of, make_console, sign_in, signed_in, trail

from dicom_anon.web.accounts import MAX_FAILURES
from dicom_anon.web.app import COOKIE, Console, create_app
from dicom_anon.web.commands import accounts_path


@pytest.fixture
def console(tmp_path: Path) -> Console:
    return make_console(tmp_path)


def test_a_right_password_opens_the_pages_of_the_role_and_is_recorded(console: Console) -> None:
    client, _ = signed_in(console, "olivia")
    page = client.get("/")
    assert "Status" in page.text and 'href="/rules"' in page.text and 'href="/audit"' not in page.text
    assert [r["by"] for r in trail(console, "console_signed_in")] == ["olivia"]
    cookie = next(c for c in client.cookies.jar if c.name == COOKIE)
    assert cookie.has_nonstandard_attr("HttpOnly")
    # Only the token's hash is kept: the accounts file opens no session.
    assert cookie.value.encode() not in accounts_path(console.settings).read_bytes()


def test_a_wrong_password_is_refused_and_recorded(console: Console) -> None:
    client = TestClient(create_app(console))
    answer = sign_in(client, "olivia", "not the password")
    assert answer.status_code == 401 and "Wrong name or password" in answer.text
    assert client.get("/", follow_redirects=False).status_code == 303
    failed = trail(console, "console_sign_in_failed")
    assert [(r["name"], r["why"]) for r in failed] == [("olivia", "wrong password")]
    assert PASSWORD not in console.settings.audit_path.read_text()
    # An unknown name reads the same to the person trying, and differently in the trail.
    assert sign_in(client, "mallory", PASSWORD).status_code == 401
    assert trail(console, "console_sign_in_failed")[-1]["why"] == "unknown user"


def test_repeated_failures_lock_the_account_even_against_the_right_password(console: Console) -> None:
    client = TestClient(create_app(console))
    for _ in range(MAX_FAILURES):
        assert sign_in(client, "rita", "guess").status_code == 401
    answer = sign_in(client, "rita", PASSWORD)
    assert answer.status_code == 401 and "locked" in answer.text
    failed = trail(console, "console_sign_in_failed")
    assert failed[MAX_FAILURES - 1]["locked"] is True
    assert failed[-1]["why"] == "locked"
    assert not trail(console, "console_signed_in")
    # Another account is not affected.
    assert sign_in(client, "olivia", PASSWORD).status_code == 303


def test_many_failures_from_one_address_lock_that_address_whatever_the_names(tmp_path: Path) -> None:
    console = make_console(tmp_path)
    console.accounts.address_max_failures, console.accounts.address_lock_s = 6, 1.0
    guesser = TestClient(create_app(console), client=("203.0.113.9", 40000))
    # Six names, none tried MAX_FAILURES times: no account locks, the address does.
    for name in ("olivia", "rita", "oscar", "mallory", "olivia", "rita"):
        assert sign_in(guesser, name, "guess").status_code == 401
    answer = sign_in(guesser, "oscar", PASSWORD)
    assert answer.status_code == 401 and "Too many failed sign-ins from this computer" in answer.text
    failed = trail(console, "console_sign_in_failed")
    assert [r["address_locked"] for r in failed] == [False] * 5 + [True, False]
    assert failed[-1]["why"] == "address locked" and {r["peer"] for r in failed} == {"203.0.113.9"}
    assert not any(r["locked"] for r in failed) and not trail(console, "console_signed_in")
    # Another address is not affected; the locked one may try again once the lock has passed.
    elsewhere = TestClient(create_app(console), client=("198.51.100.7", 40000))
    assert sign_in(elsewhere, "oscar").status_code == 303
    time.sleep(1.1)
    assert sign_in(guesser, "oscar").status_code == 303
    assert [r["peer"] for r in trail(console, "console_signed_in")] == ["198.51.100.7", "203.0.113.9"]


def test_an_expired_session_is_refused_and_recorded(tmp_path: Path) -> None:
    console = make_console(tmp_path, idle_s=0.3)
    client, csrf = signed_in(console, "olivia")
    time.sleep(0.5)
    answer = client.post(
        "/rules/apply", data={"csrf": csrf, "text": "routes: []\n", "base": ""}, follow_redirects=False
    )
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    refused = trail(console, "console_refused")
    assert refused[-1]["why"] == "session expired" and refused[-1]["path"] == "/rules/apply"
    assert "routes: []" not in console.config_path.read_text()
    # The session is gone, not just refused once.
    assert client.get("/", follow_redirects=False).status_code == 303


def test_a_reviewer_cannot_use_an_officers_page_or_action(console: Console) -> None:
    client, csrf = signed_in(console, "rita")
    before = console.config_path.read_text()
    assert client.get("/rules").status_code == 403
    answer = client.post("/rules/apply", data={"csrf": csrf, "text": "routes: []\n", "base": ""})
    assert answer.status_code == 403 and "recorded in the audit trail" in answer.text
    assert client.post("/review", data={"csrf": csrf, "item": "1", "decision": "approve"}).status_code == 403
    refused = trail(console, "console_refused")
    assert [(r["by"], r["path"]) for r in refused] == [
        ("rita", "/rules"),
        ("rita", "/rules/apply"),
        ("rita", "/review"),
    ]
    assert all("reviewer role may not" in r["why"] for r in refused)
    assert console.config_path.read_text() == before
    # An officer may not read the audit trail, and only an operator sees originals.
    officer, _ = signed_in(console, "olivia")
    assert officer.get("/audit").status_code == 403
    assert officer.get("/review/item/1/original.png").status_code == 403


def test_a_forged_form_without_the_csrf_token_is_refused_and_recorded(console: Console) -> None:
    client, csrf = signed_in(console, "olivia")
    before = console.config_path.read_text()
    for data in ({"text": "routes: []\n"}, {"text": "routes: []\n", "csrf": "forged-" + csrf}):
        answer = client.post("/rules/apply", data=data)
        assert answer.status_code == 403
    assert console.config_path.read_text() == before
    refused = trail(console, "console_refused")
    assert len(refused) == 2 and all(r["why"] == "the form carried no valid CSRF token" for r in refused)
    # Sign-in itself needs the token its form carries (no signing a victim into another account).
    other = TestClient(create_app(console))
    assert other.post("/login", data={"name": "olivia", "password": PASSWORD}).status_code == 403


def test_disabling_a_user_ends_their_session(console: Console) -> None:
    client, _ = signed_in(console, "oscar")
    console.accounts.disable("oscar")
    assert client.get("/", follow_redirects=False).status_code == 303
    assert sign_in(client, "oscar").status_code == 401


def test_every_answer_carries_the_security_headers(console: Console) -> None:
    client = TestClient(create_app(console))
    for path in ("/login", "/", "/static/console.css"):
        headers = client.get(path, follow_redirects=False).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "script-src" not in headers["content-security-policy"]  # default-src 'none': no scripts
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"


def test_sign_in_only_redirects_within_the_console(console: Console) -> None:
    client = TestClient(create_app(console))
    page = client.get("/login")
    answer = client.post(
        "/login",
        data={"name": "olivia", "password": PASSWORD, "csrf": csrf_of(page.text), "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/"
