"""The node's Prometheus metrics, scraped over HTTP from a running service (on SQLite and on
PostgreSQL) and read with prometheus_client's own parser: the counts match what was sent and what
the trail says."""

from __future__ import annotations

import socket
import urllib.request
from urllib.error import URLError

import pytest
from conftest import settings_for
from peers import events, free_port, tiny_photo, wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_pipeline import send

from dicom_anon.service.app import Service
from dicom_anon.service.metrics import MetricsError


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request) -> dict:
    """The state store's settings: SQLite, or a database of its own on the session's PostgreSQL."""
    if request.param == "sqlite":
        return {}
    dsn = request.getfixturevalue("postgres").database()
    from dicom_anon.service.store_postgres import PostgresStore

    store = PostgresStore(dsn, node="setup", lease_s=300, check_schema=False)
    store.upgrade()
    store.close()
    return {"state": {"backend": "postgresql", "dsn": dsn}}


def start_with_metrics(start_service, **sections):
    port = free_port()
    service = start_service(metrics={"listen": f"127.0.0.1:{port}"}, node={"id": "node-1"}, **sections)
    service.metrics_port = port
    return service


def test_counts_match_what_was_sent_forwarded_and_held(start_service, state):
    service = start_with_metrics(start_service, **state)
    data = service.settings.data_dir
    photos = [tiny_photo(i) for i in range(5)]
    burned_in = [tiny_photo(10 + i, burned_in="YES") for i in range(2)]
    assert send(service.port, *photos, *burned_in, photos[0]) == [0] * 8  # the last one a repeat
    wait_until(
        lambda: (
            len(events(data, "instance_forwarded")) == 5 and len(events(data, "instance_quarantined")) == 2
        ),
        20,
        "five forwarded, two held",
    )
    m = scrape(service.metrics_port)
    assert m[("dicom_anon_node_info", (("node", "node-1"),))] == 1
    assert m[("dicom_anon_instances_received_total", ())] == 7 == len(events(data, "instance_received"))
    assert m[("dicom_anon_instances_duplicate_total", ())] == 1
    assert m[("dicom_anon_instances_forwarded_total", (("destination", "teaching"),))] == 5
    assert m[("dicom_anon_instances_held_total", (("reason", "burned-in-annotation"),))] == 2
    # Every instance passed the whole pipeline once, and the header stage once (the burned-in
    # ones are refused there); this service runs without the face stage.
    assert m[("dicom_anon_pipeline_seconds_count", (("stage", "job"),))] == 7
    assert m[("dicom_anon_pipeline_seconds_count", (("stage", "headers"),))] == 7
    assert ("dicom_anon_pipeline_seconds_count", (("stage", "face"),)) not in m
    assert m[("dicom_anon_pipeline_seconds_sum", (("stage", "job"),))] > 0
    assert m[("dicom_anon_queue_jobs", (("state", "waiting"),))] == 0


def test_retries_and_pending_deliveries_of_a_destination_that_is_down(start_service, state):
    down = free_port()
    teaching = {"ae_title": "TEACHING", "host": "127.0.0.1", "port": down}
    service = start_with_metrics(start_service, destinations={"teaching": teaching}, **state)
    data = service.settings.data_dir
    send(service.port, *[tiny_photo(i) for i in range(3)])
    wait_until(lambda: len(events(data, "delivery_retry")) >= 2, 15, "two retries")
    m = scrape(service.metrics_port)
    retries = m[("dicom_anon_destination_retries_total", (("destination", "teaching"),))]
    # Read after the scrape: the sender may have retried again between the two.
    assert 2 <= retries <= len(events(data, "delivery_retry"))
    assert m[("dicom_anon_deliveries_pending", (("destination", "teaching"),))] == 3
    assert ("dicom_anon_instances_forwarded_total", (("destination", "teaching"),)) not in m


def test_the_endpoint_stops_with_the_service(tmp_path):
    port = free_port()
    service = Service(settings_for(tmp_path, free_port(), metrics={"listen": f"127.0.0.1:{port}"}))
    service.start()
    try:
        assert scrape(port)
    finally:
        service.stop()
    with pytest.raises(URLError):
        scrape(port)


def test_a_port_in_use_is_a_clear_error(start_service):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            start_service(metrics={"listen": f"127.0.0.1:{port}"})
