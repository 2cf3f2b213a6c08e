"""``audit.atna`` in the settings file: what ``rules check`` says about a mistake, by file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dicom_anon.config import ConfigError, load_settings

GOOD = """\
destinations:
  teaching: {ae_title: TEACHING, host: 127.0.0.1, port: 11113}
audit:
  atna:
    host: arr.hospital.example
    ca: CA
    export_destinations: teaching
"""


def errors(tmp_path: Path, text: str) -> str:
    path = tmp_path / "atna.yaml"
    path.write_text(text.replace("CA", str(tmp_path / "ca.pem")))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


def test_a_good_section_loads_with_the_defaults(tmp_path):
    (tmp_path / "ca.pem").write_text("pem")
    path = tmp_path / "atna.yaml"
    path.write_text(GOOD.replace("CA", str(tmp_path / "ca.pem")))
    atna = load_settings(path).audit.atna
    assert atna is not None
    assert (atna.port, atna.transport, atna.queue_mb, atna.export_destinations) == (
        6514,
        "tls",
        256,
        ["teaching"],
    )


def test_tls_without_a_ca_names_the_line(tmp_path):
    text = "audit:\n  atna:\n    host: arr.example\n    transport: tls\n"
    assert errors(tmp_path, text).startswith(f"{tmp_path}/atna.yaml:3: audit.atna: TLS needs 'ca:'")


def test_udp_with_certificates_and_a_cert_without_key_are_refused(tmp_path):
    udp = "audit:\n  atna: {host: arr.example, transport: udp, ca: CA}\n"
    assert "UDP sends in the clear" in errors(tmp_path, udp)
    half = "audit:\n  atna: {host: arr.example, ca: CA, cert: CA}\n"
    assert "give both 'cert:' and 'key:'" in errors(tmp_path, half)


def test_a_missing_file_and_an_unknown_export_destination_each_get_their_line(tmp_path):
    message = errors(tmp_path, GOOD.replace("destinations: teaching", "destinations: [teaching, elsewhere]"))
    lines = message.splitlines()
    assert any(line.startswith(f"{tmp_path}/atna.yaml:6: audit.atna.ca: file ") for line in lines), message
    assert any(
        ":7: audit.atna.export_destinations.1: unknown destination 'elsewhere'" in line for line in lines
    )


def test_status_without_atna_configured_is_one_line(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text("workers: 1\n")
    cli = str(Path(sys.executable).parent / "dicom-anon")
    shown = subprocess.run(
        [cli, "audit", "atna", "status", "--config", str(path), "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode != 0
    assert "audit.atna is not configured" in shown.stderr and "Traceback" not in shown.stderr
