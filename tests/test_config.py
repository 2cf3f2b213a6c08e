"""The settings schema as a records officer meets it: the example validates, mistakes name line and fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.datadict import keyword_dict
from pydicom.uid import UID, UID_dictionary
from pynetdicom import AllStoragePresentationContexts, sop_class

from dicom_anon.config import (
    PRESETS,
    ConfigError,
    Match,
    PixelSettings,
    Settings,
    advice,
    apply_overrides,
    load_settings,
    parse_host_port,
)
from dicom_anon.dicom_names import keyword_tags, sop_class_uid, storage_sop_classes, uid_keyword
from dicom_anon.headers.options import Option

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "dicom-anon.yaml"

GOOD = """\
ingress:
  listen: 127.0.0.1:11112
  allowed_callers:
    - ae_title: CLINIC
      addresses: [127.0.0.1, 10.1.0.0/16]
destinations:
  teaching: {ae_title: TEACHING, host: 127.0.0.1, port: 11113}
routes:
  - name: photos
    match: {sop_class: VLPhotographicImageStorage}
    profile: orthodontic
    destinations: [teaching]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    return str(info.value)


def test_documented_example_is_valid_and_says_what_issue_3_asks():
    settings = load_settings(EXAMPLE)
    assert settings.ingress.ae_title == "DICOM_ANON"
    assert settings.ingress.allows("CLINIC", "127.0.0.1")
    assert not settings.ingress.allows("CLINIC", "10.9.9.9")
    assert "teaching" in settings.destinations
    photos = next(r for r in settings.routes if r.name == "photos")
    assert photos.match.sop_class == ["1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.7"]
    assert settings.profile(photos.profile).pixels.preserve == ["mouth"]
    assert all("teaching" in r.destinations for r in settings.routes if r.action == "forward")


def test_good_file_loads(tmp_path):
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.ingress.port == 11112
    assert settings.ingress.allows("CLINIC", "10.1.200.3")
    assert not settings.ingress.allows("OTHER", "127.0.0.1")


def test_unknown_destination_names_line_and_known_ones(tmp_path):
    text = GOOD.replace("destinations: [teaching]", "destinations: [teachng]")
    msg = problems(tmp_path, text)
    assert "settings.yaml:12:" in msg
    assert "unknown destination 'teachng'" in msg and "known: teaching" in msg


def test_unknown_profile_lists_the_choices(tmp_path):
    msg = problems(tmp_path, GOOD.replace("profile: orthodontic", "profile: orthodontal"))
    assert "settings.yaml:11:" in msg
    assert "unknown profile 'orthodontal'" in msg and "basic, intraoral, orthodontic" in msg


def test_every_storage_class_the_receiver_accepts_is_taken_as_the_uid_it_names():
    """SOP class keywords are looked up in pydicom's dictionary first (no pydicom or pynetdicom
    import for ``rules check``), then in pynetdicom's list: every storage class the receiver
    accepts (pynetdicom's storage SCP list, ingress's contexts) is taken, as the same UID."""
    accepted = {cx.abstract_syntax for cx in AllStoragePresentationContexts}
    assert storage_sop_classes() == accepted
    known = {n: str(u) for n in dir(sop_class) if isinstance(u := getattr(sop_class, n), UID)}
    storage = {n: u for n, u in known.items() if u in accepted}
    assert len(set(storage.values())) == len(accepted)
    match = Match(sop_class=list(storage))
    assert match.sop_class == list(storage.values())


def test_the_receivers_classes_read_without_pynetdicom_are_its_contexts():
    """In a process that has not imported pynetdicom (``rules check``), the list is read from
    pynetdicom's source; it must be the contexts ingress offers, and pynetdicom stays unimported."""
    code = (
        "import sys\n"
        "from dicom_anon.dicom_names import storage_sop_classes\n"
        "uids = storage_sop_classes()\n"
        "assert 'pynetdicom' not in sys.modules\n"
        "print('\\n'.join(sorted(uids)))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert set(run.stdout.split()) == {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}


@pytest.mark.parametrize(
    "name",
    [
        "Verification",  # a service, not instances
        "DICOSCTImageStorage",  # a storage class pydicom knows that the receiver never accepts
        "1.2.840.10008.5.1.4.1.1.501.1",  # the same, by UID
    ],
)
def test_a_class_the_receiver_never_accepts_is_a_config_error(tmp_path, name):
    msg = problems(tmp_path, GOOD.replace("VLPhotographicImageStorage", name))
    assert "settings.yaml:10:" in msg
    assert "not a storage SOP class the receiver accepts" in msg and "never match" in msg


def test_dicom_names_are_pydicoms():
    assert keyword_tags() == keyword_dict
    assert all(uid_keyword(uid) == UID(uid).keyword for uid in UID_dictionary)
    assert uid_keyword("1.2.3.4") == UID("1.2.3.4").keyword == ""
    assert sop_class_uid("VLPhotographicImageStorage") == "1.2.840.10008.5.1.4.1.1.77.1.4"
    assert sop_class_uid("ExplicitVRLittleEndian") is None  # a transfer syntax, not a SOP class


def test_misspelt_sop_class_suggests_the_keyword(tmp_path):
    msg = problems(tmp_path, GOOD.replace("VLPhotographicImageStorage", "VLPhotographicImageStorag"))
    assert "settings.yaml:10:" in msg
    assert "did you mean VLPhotographicImageStorage?" in msg


def test_bad_regex_says_how_to_fix(tmp_path):
    text = GOOD.replace(
        "match: {sop_class: VLPhotographicImageStorage}", "match:\n      study_description: 'ortho (pre'"
    )
    msg = problems(tmp_path, text)
    assert "settings.yaml:11:" in msg and "not a valid regular expression" in msg and "backslash" in msg


def test_a_pattern_that_needs_backtracking_says_what_is_not_available(tmp_path):
    text = GOOD.replace(
        "match: {sop_class: VLPhotographicImageStorage}", "match:\n      study_description: '^(?!test).*'"
    )
    msg = problems(tmp_path, text)
    assert "settings.yaml:11:" in msg and "lookarounds such as (?= or (?!" in msg and "linear" in msg


def test_unknown_attribute_keyword_is_caught(tmp_path):
    text = GOOD.replace(
        "match: {sop_class: VLPhotographicImageStorage}", "match:\n      attributes: {Manufactrer: Canon}"
    )
    msg = problems(tmp_path, text)
    assert "did you mean Manufacturer?" in msg


def test_forward_route_without_destinations(tmp_path):
    msg = problems(tmp_path, GOOD.replace("    destinations: [teaching]\n", ""))
    assert "settings.yaml:9:" in msg and "needs 'destinations:'" in msg


def test_drop_route_may_not_name_a_profile(tmp_path):
    msg = problems(tmp_path, GOOD.replace("    match:", "    action: drop\n    match:"))
    assert "sends nothing; remove 'profile:'" in msg


def test_a_device_name_torch_does_not_take_is_named_with_the_choices(tmp_path):
    text = GOOD + "profiles:\n  ortho2:\n    pixels: {preserve: [mouth], device: gpu}\n"
    msg = problems(tmp_path, text)
    assert "'gpu' is not a device; use auto" in msg and "settings.yaml:" in msg


def test_only_a_forward_route_may_hold_for_review(tmp_path):
    text = GOOD.replace("    match:", "    action: quarantine\n    hold_for_review: true\n    match:")
    msg = problems(
        tmp_path, text.replace("    profile: orthodontic\n", "").replace("    destinations: [teaching]\n", "")
    )
    assert "sends nothing" in msg and "'hold_for_review:'" in msg


def test_a_route_may_hold_only_the_photos_whose_new_face_sex_is_a_guess(tmp_path):
    text = GOOD.replace("    match:", "    hold_for_review: unsure-sex\n    match:")
    assert load_settings(write(tmp_path, text)).routes[0].hold_for_review == "unsure-sex"
    msg = problems(tmp_path, text.replace("unsure-sex", "maybe"))
    assert msg.count("\n") == 0 and "settings.yaml:10:" in msg, msg
    assert "'maybe' is not a choice; use true" in msg and "unsure-sex (only photos" in msg


def test_unknown_setting_and_bad_values_each_get_a_line(tmp_path):
    text = GOOD.replace("  listen: 127.0.0.1:11112", "  listen: localhost\n  max_asociations: 3").replace(
        "10.1.0.0/16", "10.1.0.0/33"
    )
    msg = problems(tmp_path, text)
    lines = msg.splitlines()
    assert any("settings.yaml:2:" in ln and "HOST:PORT" in ln for ln in lines)
    assert any("settings.yaml:3:" in ln and "unknown setting 'max_asociations'" in ln for ln in lines)
    assert any("settings.yaml:6:" in ln and "not an IP address or network" in ln for ln in lines)


def test_ae_title_longer_than_16_is_refused(tmp_path):
    msg = problems(tmp_path, GOOD.replace("ae_title: TEACHING", "ae_title: TEACHING_ARCHIVE_NODE"))
    assert "not an AE title" in msg


def test_destination_is_folder_or_node_not_both(tmp_path):
    msg = problems(tmp_path, GOOD.replace("port: 11113}", "port: 11113, folder: /tmp/x}"))
    assert "either a folder or a DICOM node" in msg


def test_duplicate_route_names(tmp_path):
    route = GOOD[GOOD.index("  - name: photos") :]
    msg = problems(tmp_path, GOOD + route)
    assert "route name 'photos' is used twice" in msg


def test_missing_tls_file_is_named(tmp_path):
    text = GOOD.replace(
        "  listen: 127.0.0.1:11112",
        f"  listen: 127.0.0.1:11112\n  tls: {{certificate: {tmp_path}/none.pem,"
        f" private_key: {tmp_path}/none.key}}",
    )
    msg = problems(tmp_path, text)
    assert "none.pem does not exist" in msg and "ingress.tls.certificate" in msg


def test_a_pool_that_was_never_built_is_named_with_the_command_to_build_it(tmp_path):
    text = GOOD + f"profiles:\n  derm:\n    pixels:\n      preserve: mouth\n      pool: {tmp_path}/pool\n"
    msg = problems(tmp_path, text)
    assert "settings.yaml:17:" in msg and "holds no surrogate pool" in msg
    assert f"dicom-anon models build-surrogates --from DIR --licence TEXT -o {tmp_path}/pool" in msg
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "manifest.json").write_text("{}")
    assert load_settings(write(tmp_path, text)).profile("derm").pixels.pool == tmp_path / "pool"


def test_pixel_options_belong_in_pixel_settings(tmp_path):
    text = GOOD + "profiles:\n  p:\n    options: [clean-pixel-data]\n"
    msg = problems(tmp_path, text)
    assert "use 'pixels:' instead" in msg


def test_profile_options_and_pixel_settings_are_parsed(tmp_path):
    text = GOOD + (
        "profiles:\n  derm:\n    options: [retain-patient-characteristics]\n"
        "    pixels: {preserve: lower-face, on_no_face: forward,"
        " boxes: [{x: 1, y: 2, width: 3, height: 4}]}\n"
    )
    settings = load_settings(write(tmp_path, text))
    derm = settings.profile("derm")
    assert derm.options == frozenset({Option.RETAIN_PATIENT_CHARACTERISTICS})
    assert derm.pixels.preserve == ["lower-face"] and derm.pixels.on_no_face == "forward"
    assert derm.pixels.boxes[0].width == 3
    assert settings.profile("basic") is PRESETS["basic"]


def test_yaml_syntax_error_names_the_line(tmp_path):
    msg = problems(tmp_path, "ingress:\n  listen: [oops\n")
    assert "settings.yaml:3" in msg and "YAML syntax error" in msg


def test_overrides_replace_listen_data_dir_and_destination(tmp_path):
    settings = load_settings(write(tmp_path, GOOD))
    changed = apply_overrides(
        settings,
        listen="127.0.0.1:4000",
        data_dir=tmp_path / "d",
        destinations=["teaching=ARCHIVE@127.0.0.1:5000", "extra=X@10.0.0.1:104"],
    )
    assert changed.ingress.port == 4000
    assert changed.data_dir == tmp_path / "d" and changed.secret_path == tmp_path / "d" / "site.key"
    assert changed.destinations["teaching"].describe() == "ARCHIVE@127.0.0.1:5000"
    assert changed.destinations["extra"].port == 104
    assert settings.ingress.port == 11112  # the original is untouched


@pytest.mark.parametrize("bad", ["teaching", "teaching=ARCHIVE@127.0.0.1", "t=WAY_TOO_LONG_AE_TITLE_X@h:1"])
def test_bad_destination_override_is_one_clear_line(bad):
    with pytest.raises(ConfigError) as info:
        apply_overrides(Settings(), destinations=[bad])
    assert str(info.value).startswith("--destination")
    assert "\n" not in str(info.value)


def test_host_port_parsing():
    assert parse_host_port("[::1]:104") == ("::1", 104)
    with pytest.raises(ValueError):
        parse_host_port("127.0.0.1:70000")


def test_advice_names_a_profile_no_route_uses(tmp_path):
    text = GOOD + "profiles:\n  spare:\n    options: [retain-patient-characteristics]\n"
    notes = advice(load_settings(write(tmp_path, text)))
    assert "profile 'spare' is not used by any route (a route takes it with 'profile: spare')" in notes
    used = text.replace("profile: orthodontic", "profile: spare")
    assert not [n for n in advice(load_settings(write(tmp_path, used))) if "profile" in n]


def test_advice_points_out_likely_mistakes(tmp_path):
    notes = advice(Settings())
    assert any("every association will be rejected" in n for n in notes)
    assert any("no routes" in n for n in notes)
    # A sound file gets no warnings about its photo route: the face pipeline runs for it.
    notes = advice(load_settings(write(tmp_path, GOOD)))
    assert not any("photo" in n or "pixel" in n for n in notes)


def test_gan_inversion_is_the_gan_method():
    from dicom_anon.config import PixelSettings

    assert PixelSettings(method="gan-inversion", identity="generated").method == "gan"
    assert PixelSettings(method="surrogate").method == "surrogate"


def test_the_gan_method_without_generated_people_names_its_line(tmp_path):
    text = GOOD + "profiles:\n  mine:\n    pixels:\n      preserve: [mouth]\n      method: gan\n"
    msg = problems(tmp_path, text)
    assert "settings.yaml:" in msg and "method gan needs identity: generated" in msg
    fixed = text + "      identity: generated\n"
    assert load_settings(write(tmp_path, fixed)).profiles["mine"].pixels.method == "gan"


def test_identity_source_defaults_to_pool_and_a_wrong_one_names_its_line(tmp_path):
    assert PixelSettings().identity == "pool"
    assert load_settings(EXAMPLE).profiles["teaching-photo"].pixels.identity == "pool"
    text = GOOD + "profiles:\n  mine:\n    pixels:\n      preserve: [mouth]\n      identity: generative\n"
    msg = problems(tmp_path, text)
    assert "settings.yaml:17:" in msg and "'generated' or 'pool'" in msg


def test_the_state_store_is_sqlite_unless_a_postgresql_one_is_named(tmp_path):
    assert load_settings(write(tmp_path, GOOD)).state.backend == "sqlite"
    msg = problems(tmp_path, GOOD + "state:\n  dsn: postgresql://db/dicom_anon\n")
    assert "settings.yaml:14: state:" in msg and "backend: postgresql" in msg
    msg = problems(tmp_path, GOOD + f"state:\n  backend: postgresql\n  dsn_file: {tmp_path}/none.dsn\n")
    assert "settings.yaml:15: state.dsn_file:" in msg and "none.dsn does not exist" in msg
    (tmp_path / "state.dsn").write_text("postgresql://dicom_anon:secret@db/dicom_anon\n")
    state = load_settings(
        write(tmp_path, GOOD + f"state:\n  backend: postgresql\n  dsn_file: {tmp_path}/state.dsn\n")
    )
    assert state.state.conninfo() == "postgresql://dicom_anon:secret@db/dicom_anon"


def test_a_node_role_needs_a_shared_store_and_spool_and_names_its_line(tmp_path):
    assert load_settings(write(tmp_path, GOOD)).node.role == "all"
    msg = problems(tmp_path, GOOD + "node:\n  id: worker-1\n  role: worker\n")
    assert "settings.yaml:15: node.role: role 'worker' needs a store and a spool" in msg
    msg = problems(tmp_path, GOOD + f"spool:\n  shared_dir: {tmp_path}/shared\n")
    assert "settings.yaml:14: spool.shared_dir:" in msg and "backend: postgresql" in msg
    shared = f"state:\n  backend: postgresql\n  dsn: host=db\nspool:\n  shared_dir: {tmp_path}/shared\n"
    settings = load_settings(write(tmp_path, GOOD + shared + "node:\n  role: ingress\n"))
    assert settings.node.role == "ingress" and settings.spool.shared_dir == tmp_path / "shared"
    assert apply_overrides(settings, role="worker").node.role == "worker"


@pytest.mark.parametrize("role", ["ingress", "worker", "scp"])
def test_a_role_override_the_settings_cannot_run_is_one_clear_line(tmp_path, role):
    with pytest.raises(ConfigError) as info:
        apply_overrides(load_settings(write(tmp_path, GOOD)), role=role)
    assert str(info.value).startswith(f"--role {role}") and "\n" not in str(info.value)
