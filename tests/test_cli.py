"""The ``dicom-anon deid`` command as a records officer uses it: real files in, files or clear errors out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from factories import camera_photo, write
from typer.testing import CliRunner

from dicom_anon.cli import app

runner = CliRunner()


def photo(path: Path, *, patient_id: str = "MRN00482913", burned_in: str = "NO") -> Path:
    """A tiny VL Photographic instance with fake PHI."""
    ds = camera_photo(
        PatientID=patient_id,
        StudyDescription="Dermatology photo of Jane Doe-Mueller",
        BurnedInAnnotation=burned_in,
    )
    return write(ds, path)


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def deid_folder(tmp_path: Path, *extra: str) -> tuple[int, str]:
    """``deid`` of tmp_path/in into tmp_path/out with its own data dir, plus ``extra`` arguments."""
    return run(
        "deid", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--data-dir", str(tmp_path / "d"), *extra
    )


def test_deid_folder_writes_files_named_by_new_uid(tmp_path):
    src = photo(tmp_path / "in" / "DOE_JANE.dcm")
    code, output = deid_folder(tmp_path)
    assert code == 0, output
    written = list((tmp_path / "out").iterdir())
    assert len(written) == 1
    ds = pydicom.dcmread(written[0])
    assert written[0].name == f"{ds.SOPInstanceUID}.dcm"
    assert ds.SOPInstanceUID != pydicom.dcmread(src).SOPInstanceUID
    assert b"Doe-Mueller" not in written[0].read_bytes()
    assert b"MRN00482913" not in written[0].read_bytes()
    assert "de-identified" in output


def test_site_secret_created_in_data_dir(tmp_path):
    photo(tmp_path / "in" / "a.dcm")
    deid_folder(tmp_path)
    key = tmp_path / "d" / "site.key"
    assert key.exists() and (key.stat().st_mode & 0o077) == 0


def test_same_patient_same_pseudonym_across_runs(tmp_path):
    photo(tmp_path / "a" / "1.dcm")
    photo(tmp_path / "b" / "2.dcm")
    data = str(tmp_path / "d")
    run("deid", str(tmp_path / "a"), "-o", str(tmp_path / "oa"), "--data-dir", data)
    run("deid", str(tmp_path / "b"), "-o", str(tmp_path / "ob"), "--data-dir", data)
    (first,) = (tmp_path / "oa").iterdir()
    (second,) = (tmp_path / "ob").iterdir()
    assert pydicom.dcmread(first).PatientID == pydicom.dcmread(second).PatientID


def test_refused_file_is_listed_and_exit_is_nonzero(tmp_path):
    photo(tmp_path / "in" / "ok.dcm")
    photo(tmp_path / "in" / "burned.dcm", burned_in="YES")
    code, output = deid_folder(tmp_path)
    assert code == 1
    assert "burned.dcm" in output and "burned-in-annotation" in output
    assert len(list((tmp_path / "out").iterdir())) == 1


@pytest.mark.parametrize(
    ("content", "code"),
    [(b"", "empty-file"), (b"just some text\n" * 20, "not-dicom")],
)
def test_bad_files_named_explicitly_get_one_line_errors(tmp_path, content, code):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(content)
    exit_code, output = run("deid", str(bad), "-o", str(tmp_path / "out"), "--data-dir", str(tmp_path / "d"))
    assert exit_code == 1
    assert f"refused ({code})" in output
    assert "Traceback" not in output


def test_non_dicom_files_in_folders_are_skipped_not_failed(tmp_path):
    photo(tmp_path / "in" / "a.dcm")
    (tmp_path / "in" / "README.md").write_text("notes")
    code, output = deid_folder(tmp_path)
    assert code == 0, output
    assert "skipped: not DICOM" in output


def test_dry_run_writes_nothing_and_masks_old_values(tmp_path):
    photo(tmp_path / "in" / "a.dcm")
    code, output = deid_folder(tmp_path, "--dry-run")
    assert code == 0, output
    assert not (tmp_path / "out").exists()
    assert "PatientName" in output and "PatientID" in output
    assert "Doe-Mueller" not in output and "MRN00482913" not in output


def test_unknown_option_is_a_usage_error(tmp_path):
    photo(tmp_path / "in" / "a.dcm")
    code, output = deid_folder(tmp_path, "--option", "nope")
    assert code == 2
    assert "unknown option 'nope'" in output


def test_pixel_option_is_refused_for_headers_only(tmp_path):
    photo(tmp_path / "in" / "a.dcm")
    code, output = deid_folder(tmp_path, "--option", "clean-pixel-data")
    assert code == 2
    assert "face pipeline" in output


def test_bad_config_names_file_and_line(tmp_path):
    photo(tmp_path / "in" / "a.dcm")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("deid:\n  options:\n    - retain-uids\n    - retian-device-identity\n")
    code, output = run("deid", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--config", str(cfg))
    assert code == 2
    assert f"{cfg}:3" in output and "retian-device-identity" in output


def test_options_from_config_apply(tmp_path):
    src = photo(tmp_path / "in" / "a.dcm")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'd'}\ndeid:\n  options: [retain-uids]\n")
    code, output = run("deid", str(src), "-o", str(tmp_path / "o"), "--config", str(cfg))
    assert code == 0, output
    (written,) = (tmp_path / "o").iterdir()
    assert pydicom.dcmread(written).SOPInstanceUID == pydicom.dcmread(src).SOPInstanceUID


def test_installed_command_has_help_and_no_traceback(tmp_path):
    exe = Path(sys.executable).parent / "dicom-anon"
    if not exe.exists():
        pytest.skip("dicom-anon is not installed in this environment")
    helped = subprocess.run([exe, "deid", "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0 and "--dry-run" in helped.stdout
    missing = subprocess.run(
        [exe, "deid", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert missing.returncode == 2
    assert "no DICOM files found" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["models", "check-pool", "--sheet", "/proc/no-such-folder/pool.png"],
        ["audit", "export", "--trail", "{trail}", "-o", "/proc/no-such-folder/e.csv"],
    ],
)
def test_a_file_the_system_will_not_write_is_one_line_not_a_traceback(
    tmp_path: Path, args: list[str]
) -> None:
    trail = tmp_path / "audit.jsonl"
    trail.write_text("")
    argv = ["dicom-anon", *(a.format(trail=trail) for a in args)]
    script = f"import sys; sys.argv = {argv!r}; from dicom_anon.cli import run; run()"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr and "/proc/no-such-folder" in result.stderr


def test_jobs_gives_the_same_outputs_as_one_process(tmp_path):
    """``--jobs 2`` shares the files among worker processes: same files, same bytes, same refusals
    and exit status as ``--jobs 1``."""
    for i in range(24):
        photo(
            tmp_path / "in" / f"p{i:02d}.dcm",
            patient_id=f"MRN{i % 5:05d}",
            burned_in="YES" if i % 7 == 3 else "NO",
        )
    (tmp_path / "in" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    results = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"out{jobs}"
        code, output = run(
            "deid", str(tmp_path / "in"), "-o", str(out), "--data-dir", str(tmp_path / "d"), "--jobs", jobs
        )
        refusals = sorted(line for line in output.splitlines() if "refused (" in line)
        results[jobs] = (code, refusals, {p.name: p.read_bytes() for p in out.iterdir()})
    assert results["1"] == results["2"]
    code, refusals, files = results["2"]
    assert code == 1 and len(refusals) == 4 and len(files) == 21
