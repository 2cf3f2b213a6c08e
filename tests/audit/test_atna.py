"""The DICOM audit messages built from trail records: each valid against the PS3.15 A.5.1 schema,
coded as A.5.3 says for its event, and free of original identifiers."""

from __future__ import annotations

import base64

import pytest
from atna_schema import invalid
from lxml import etree

from dicom_anon.audit import atna

SITE = atna.Site(
    source_id="DICOM_ANON@anon-host",
    ae_title="DICOM_ANON",
    host="anon-host.example.org",
    trail_uri="file:///var/lib/dicom-anon/audit/audit.jsonl",
    site_id="St. Somewhere IT",
    destinations={"teaching": ("TEACHING", "10.1.2.3", 11112)},
    exports=frozenset({"teaching"}),
)
TS = "2025-03-01T10:00:00.123456Z"
ORIGINAL_HASH = "7f" * 32
NEW_SOP = "2.25.111"
NEW_STUDY = "2.25.222"
SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.4"


def studies(uid: str) -> tuple[str, str] | None:
    return (NEW_STUDY, SOP_CLASS) if uid == NEW_SOP else None


# One record of every event the relay sends, shaped as the service, the CLI and the console write them.
RECORDS = {
    "service_started": {"pid": 41, "ae_title": "DICOM_ANON", "listen": "0.0.0.0:11112"},
    "service_stopped": {"pid": 41},
    "association_rejected": {
        "category": "security",
        "calling_ae": "INTRUDER",
        "called_ae": "DICOM_ANON",
        "peer": "192.0.2.7",
        "reason": "calling AE title not allowed",
    },
    "association_aborted": {
        "category": "security",
        "calling_ae": "CLINIC",
        "peer": "10.0.0.5",
        "reason": "aborted",
    },
    "config_reloaded": {
        "config": "/etc/dicom-anon/dicom-anon.yaml",
        "config_sha256": "ab" * 32,
        "routes": ["photos"],
    },
    "config_reload_failed": {"config": "/etc/dicom-anon/dicom-anon.yaml", "error": "line 3: unknown setting"},
    "config_changed": {
        "by": "rosa",
        "role": "admin",
        "peer": "10.0.0.9",
        "via": "console",
        "config": "/etc/dicom-anon/dicom-anon.yaml",
        "after_sha256": "cd" * 32,
    },
    "console_refused": {"by": "tom", "role": "reviewer", "peer": "10.0.0.9", "why": "needs the rules role"},
    "console_user_added": {"name": "tom", "role": "reviewer", "by": "root"},
    "console_user_disabled": {"name": "tom", "by": "root"},
    "console_signed_in": {"by": "rosa", "role": "admin", "peer": "10.0.0.9", "via": "console"},
    "console_sign_in_failed": {"peer": "10.0.0.9", "name": "rosa", "why": "wrong password", "locked": False},
    "console_signed_out": {"by": "rosa", "role": "admin", "peer": "10.0.0.9"},
    "association_accepted": {
        "calling_ae": "CLINIC",
        "called_ae": "DICOM_ANON",
        "peer": "10.0.0.5",
        "tls": True,
        "contexts_accepted": 2,
        "contexts_rejected": [],
    },
    "instance_received": {
        "job": 1,
        "sop_class": SOP_CLASS,
        "sop_uid_hash": ORIGINAL_HASH,
        "transfer_syntax": "1.2.840.10008.1.2.1",
        "bytes": 1200,
        "calling_ae": "CLINIC",
        "peer": "10.0.0.5",
    },
    "instance_refused": {
        "calling_ae": "CLINIC",
        "peer": "10.0.0.5",
        "status": "0xA900",
        "code": "not-dicom",
        "reason": "no pixel data",
    },
    "instance_deidentified": {
        "job": 1,
        "sop_uid_hash": ORIGINAL_HASH,
        "route": "photos",
        "patient": "ANON7Q2K",
        "patient_hash": "3c" * 32,
        "new_sop_uid": NEW_SOP,
        "new_study_uid": NEW_STUDY,
        "sop_class": SOP_CLASS,
    },
    "instance_forwarded": {
        "job": 1,
        "route": "photos",
        "destination": "teaching",
        "status": "0x0000",
        "new_sop_uid": NEW_SOP,
        "patient": "ANON7Q2K",
        "attempt": 1,
    },
    "quarantine_released": {
        "quarantine": 4,
        "job": 1,
        "route": "photos",
        "destination": "teaching",
        "stage": "review",
        "code": "awaiting-review",
        "by": "rosa",
        "new_sop_uid": NEW_SOP,
        "patient": "ANON7Q2K",
    },
    "quarantine_deleted": {"quarantine": 5, "job": 2, "stage": "decode", "code": "not-dicom", "by": "rosa"},
    "original_shown": {"by": "rosa", "role": "admin", "peer": "10.0.0.9", "quarantine": 5, "shown": True},
    "audit_read": {
        "by": "auditor",
        "filters": {"destination": "teaching"},
        "by_sop_uid": False,
        "records": 12,
    },
    "audit_exported": {"by": "auditor", "filters": {}, "records": 40, "format": "csv", "output": "stdout"},
    "audit_verified": {"by": "auditor", "records": 400, "ok": True},
}

# What A.5.3 makes of each: (EventID, EventTypeCode or None, EventActionCode, outcome) per message.
EXPECTED = {
    "service_started": [("110100", "110120", "E", "0")],
    "service_stopped": [("110100", "110121", "E", "0")],
    "association_rejected": [("110113", "110126", "E", "4")],
    "association_aborted": [("110113", "110126", "E", "4")],
    "config_reloaded": [("110113", "110131", "E", "0")],
    "config_reload_failed": [("110113", "110131", "E", "4")],
    "config_changed": [("110113", "110131", "E", "0")],
    "console_refused": [("110113", "110132", "E", "4")],
    "console_user_added": [("110113", "110137", "E", "0")],
    "console_user_disabled": [("110113", "110137", "E", "0")],
    "console_signed_in": [("110114", "110122", "E", "0")],
    "console_sign_in_failed": [("110114", "110122", "E", "4")],
    "console_signed_out": [("110114", "110123", "E", "0")],
    "association_accepted": [("110102", None, "E", "0")],
    "instance_received": [("110104", None, "C", "0")],
    "instance_refused": [("110104", None, "C", "4")],
    "instance_deidentified": [("110103", None, "C", "0")],
    "instance_forwarded": [("110104", None, "R", "0"), ("110106", None, "R", "0")],
    "quarantine_released": [("110103", None, "U", "0")],
    "quarantine_deleted": [("110103", None, "D", "0")],
    "original_shown": [("110103", None, "R", "0")],
    "audit_read": [("110112", None, "E", "0"), ("110101", None, "R", "0")],
    "audit_exported": [("110112", None, "E", "0"), ("110101", None, "R", "0")],
    "audit_verified": [("110101", None, "R", "0")],
}


def build(event: str, **changes: object) -> list[etree._Element]:
    record = {
        "seq": 7,
        "ts": TS,
        "event": event,
        "prev": "0" * 64,
        "hash": "1" * 64,
        **RECORDS[event],
        **changes,
    }
    return [etree.fromstring(m) for m in atna.messages(record, SITE, studies)]


def test_every_relayed_event_has_a_record_here():
    assert set(RECORDS) == set(atna.BUILDERS) == set(EXPECTED)


@pytest.mark.parametrize("event", sorted(RECORDS))
def test_each_message_is_valid_and_coded_as_the_standard_says(event):
    built = build(event)
    found = []
    for msg in built:
        problem = invalid(etree.tostring(msg))
        assert problem is None, f"{event}: {problem}"
        ident = msg.find("EventIdentification")
        type_code = ident.find("EventTypeCode")
        found.append(
            (
                ident.find("EventID").get("csd-code"),
                type_code.get("csd-code") if type_code is not None else None,
                ident.get("EventActionCode"),
                ident.get("EventOutcomeIndicator"),
            )
        )
        assert ident.get("EventDateTime") == TS
        source = msg.find("AuditSourceIdentification")
        assert source.get("AuditSourceID") == "DICOM_ANON@anon-host"
        assert source.get("AuditEnterpriseSiteID") == "St. Somewhere IT"
    assert found == EXPECTED[event]


def _roles(msg: etree._Element) -> dict[str, dict[str, str]]:
    return {
        p.find("RoleIDCode").get("csd-code"): dict(p.attrib)
        for p in msg.findall("ActiveParticipant")
        if p.find("RoleIDCode") is not None
    }


def test_received_names_the_caller_as_source_and_the_original_only_by_its_keyed_hash():
    (msg,) = build("instance_received")
    roles = _roles(msg)
    assert roles["110153"]["UserID"] == "CLINIC"
    assert roles["110153"]["NetworkAccessPointID"] == "10.0.0.5"
    assert roles["110153"]["UserIsRequestor"] == "true"
    assert roles["110152"]["AlternativeUserID"] == "AETITLES=DICOM_ANON"
    (obj,) = msg.findall("ParticipantObjectIdentification")
    assert obj.get("ParticipantObjectID") == ORIGINAL_HASH
    # Coded as our keyed hash, never as a Study or SOP Instance UID a repository would look up.
    assert obj.find("ParticipantObjectIDTypeCode").get("codeSystemName") == "99DICOMANON"
    assert obj.find("ParticipantObjectDescription/SOPClass").get("UID") == SOP_CLASS


def test_a_forward_out_of_the_hospital_is_transferred_and_exported_to_the_destination():
    transferred, export = build("instance_forwarded")
    roles = _roles(transferred)
    assert roles["110153"]["UserID"] == "DICOM_ANON" and roles["110153"]["UserIsRequestor"] == "true"
    assert roles["110152"]["UserID"] == "TEACHING" and roles["110152"]["NetworkAccessPointID"] == "10.1.2.3"
    study, patient = transferred.findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == NEW_STUDY
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"
    assert study.find("ParticipantObjectDescription/SOPClass/Instance").get("UID") == NEW_SOP
    assert study.find("ParticipantObjectDescription/Anonymized").text == "true"
    assert (patient.get("ParticipantObjectID"), patient.get("ParticipantObjectTypeCodeRole")) == (
        "ANON7Q2K",
        "1",
    )
    media = _roles(export)["110154"]
    assert media["UserID"] == "dicom://TEACHING@10.1.2.3:11112"
    assert export.find("ActiveParticipant/MediaIdentifier/MediaType").get("csd-code") == "110037"
    assert export.find("ParticipantObjectIdentification").get("ParticipantObjectDataLifeCycle") == "10"
    # A destination inside the hospital: Instances Transferred only.
    assert len(build("instance_forwarded", destination="internal")) == 1


def test_a_forward_whose_study_is_unknown_names_the_new_instance():
    transferred, _ = build("instance_forwarded", new_sop_uid="2.25.999")
    study = transferred.find("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == "2.25.999"
    assert invalid(etree.tostring(transferred)) is None


def test_a_refused_caller_is_a_security_alert_about_its_node():
    (msg,) = build("association_rejected")
    assert msg.find("EventIdentification/EventOutcomeDescription").text == "calling AE title not allowed"
    node = msg.find("ParticipantObjectIdentification")
    assert node.get("ParticipantObjectID") == "192.0.2.7"
    detail = node.find("ParticipantObjectDetail")
    assert base64.b64decode(detail.get("value")).decode() == "calling AE title not allowed"


def test_an_audit_search_is_a_query_with_its_filters_and_the_log_used():
    query, used = build("audit_read")
    encoded = query.find("ParticipantObjectIdentification/ParticipantObjectQuery").text
    assert base64.b64decode(encoded).decode() == '{"destination": "teaching"}'
    assert used.find("ActiveParticipant").get("UserID") == "auditor"
    log = used.find("ParticipantObjectIdentification")
    assert log.get("ParticipantObjectID") == SITE.trail_uri
    assert log.get("ParticipantObjectTypeCodeRole") == "13"


def test_text_xml_cannot_carry_is_replaced_and_markup_is_escaped():
    (msg,) = build("association_rejected", calling_ae="BAD\x01AE", reason="<script>&")
    assert invalid(etree.tostring(msg)) is None
    assert msg.find("ActiveParticipant[2]").get("UserID") == "BAD?AE"
    assert msg.find("EventIdentification/EventOutcomeDescription").text == "<script>&"


def test_events_without_a_message_give_none():
    record = {"seq": 1, "ts": TS, "event": "instance_routed", "routes": ["photos"]}
    assert atna.messages(record, SITE, studies) == []
