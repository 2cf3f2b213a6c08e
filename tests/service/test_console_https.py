"""``dicom-anon console`` with ingress.tls configured serves HTTPS with the ingress certificate: a
client that trusts the CA signs in, its cookie is Secure and HSTS is sent; plain HTTP to that port
gets no page."""

from __future__ import annotations

import re
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import yaml
from peers import Proc, dicom_anon, events, free_port, make_pki

from dicom_anon.config import load_settings
from dicom_anon.web.accounts import Accounts
from dicom_anon.web.app import COOKIE
from dicom_anon.web.commands import accounts_path

PASSWORD = "correct horse battery"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


def test_the_console_serves_https_with_the_ingress_certificate(tmp_path: Path, procs) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    config = tmp_path / "dicom-anon.yaml"
    settings = {
        "data_dir": str(tmp_path / "data"),
        "ingress": {
            "allowed_callers": [{"ae_title": "CLINIC", "addresses": ["127.0.0.1"]}],
            "tls": {"certificate": str(pki / "server.pem"), "private_key": str(pki / "server.key")},
        },
        "destinations": {"teaching": {"folder": str(tmp_path / "archive")}},
        "routes": [{"name": "photos", "profile": "basic", "destinations": "teaching"}],
    }
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    Accounts(accounts_path(load_settings(config))).add("olivia", "officer", PASSWORD)
    console = Proc(
        "console",
        [dicom_anon(), "console", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
        tmp_path / "console.log",
        port,
    )
    procs.append(console)
    console.wait_ready(60)

    trusted = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trusted, timeout=30) as client:
        page = client.get("/login")
        assert page.status_code == 200 and page.headers["strict-transport-security"]
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        form = {"name": "olivia", "password": PASSWORD, "csrf": csrf, "next": "/"}
        signed = client.post("/login", data=form)
        assert signed.status_code == 303
        [cookie] = [c for c in signed.headers.get_list("set-cookie") if c.startswith(COOKIE + "=")]
        assert "; secure" in cookie.lower()
        assert "Status" in client.get("/").text
    assert [r["by"] for r in events(tmp_path / "data", "console_signed_in")] == ["olivia"]
    # A client that does not trust the CA refuses the certificate; plain HTTP gets no page.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{port}/login", timeout=30)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/login", timeout=30)
