"""Payload builders and the shipped JSON Schemas."""

from __future__ import annotations

import json
import uuid

import jsonschema
import pytest

from edge_agent.testing.alerts import MODEL, SERIES, make_alert
from edge_agent.alerts import (
    DISCLAIMER,
    SCHEMA_IDS,
    PayloadError,
    alert_id,
    build_alert,
    build_receipt,
    build_result,
    build_status,
    load_schema,
    strip_phi,
    utc_now,
    validate_payload,
)
from edge_agent.alerts.settings import MqttSettings, parse_broker_url
from edge_agent.errors import ConfigError

FINDING = {"code": "ich", "probability": 0.8, "positive": True}


@pytest.mark.parametrize("kind", ["alert", "result", "status", "receipt"])
def test_schemas_ship_as_package_data_and_are_valid_json_schemas(kind):
    schema = load_schema(kind)
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert schema["$id"].endswith("/" + SCHEMA_IDS[kind].split("/", 1)[1])  # the $id names the payload's version


def test_alert_id_is_deterministic_uuid5_and_depends_on_every_part():
    base = alert_id("1.2.3", "ich", "1.0.0", "ich")
    assert base == alert_id("1.2.3", "ich", "1.0.0", "ich")
    assert uuid.UUID(base).version == 5
    others = {alert_id("1.2.4", "ich", "1.0.0", "ich"), alert_id("1.2.3", "ich2", "1.0.0", "ich"),
              alert_id("1.2.3", "ich", "1.0.1", "ich"), alert_id("1.2.3", "ich", "1.0.0", "lung_nodule")}
    assert base not in others and len(others) == 4


def test_build_alert_has_every_contract_field_and_validates():
    payload = make_alert(3, revision=2, state="preliminary")
    assert payload["schema"] == "edge-agent/alert/1"
    assert payload["alert_id"] == alert_id(SERIES["series_instance_uid"] + ".3", "ich", "1.0.0", "ich")
    assert (payload["revision"], payload["state"]) == (2, "preliminary")
    assert payload["finding"]["code"] == "ich" and payload["finding"]["probability"] == pytest.approx(0.91)
    assert payload["study"]["study_instance_uid"] == SERIES["study_instance_uid"]
    assert payload["study"]["accession_number"] == "ACC0001"
    assert payload["model"] == MODEL
    assert set(payload["timestamps"]) == {"first_slice_received", "raised"}
    assert payload["timestamps"]["raised"].endswith("Z")
    assert payload["disclaimer"] == DISCLAIMER
    assert (payload["site"], payload["device"]) == ("site", "device")


def test_no_disclaimer_for_a_model_not_trained_on_phantoms_but_schema_demands_it_when_synthetic():
    payload = build_alert(site="s", device="d", series=SERIES, model={**MODEL, "synthetic_training": False},
                          finding=FINDING, state="final", revision=1, timestamps={"raised": utc_now()})
    assert "disclaimer" not in payload
    bad = make_alert()
    del bad["disclaimer"]
    with pytest.raises(PayloadError, match="disclaimer"):
        validate_payload("alert", bad)


@pytest.mark.parametrize("change, match", [
    ({"state": "maybe"}, "state"),
    ({"finding": {**FINDING, "probability": 1.5}}, "finding/probability"),
    ({"timestamps": {"raised": "2026-01-01 10:00"}}, "timestamps/raised"),
    ({"series": {**SERIES, "series_instance_uid": ""}}, "series_instance_uid"),
])
def test_invalid_alerts_are_refused_with_one_sentence(change, match):
    args = dict(site="s", device="d", series=SERIES, model=MODEL, finding=FINDING, state="final", revision=1,
                timestamps={"raised": utc_now()})
    args.update(change)
    with pytest.raises(PayloadError, match=match) as err:
        build_alert(**args)
    assert "\n" not in str(err.value) and str(err.value).endswith(".")


def test_build_alert_ignores_phi_in_its_inputs():
    series = {**SERIES, "PatientName": "DOE^JANE", "PatientID": "MRN123", "patient_birth_date": "19800101"}
    finding = {**FINDING, "PatientSex": "F"}
    payload = build_alert(site="s", device="d", series=series, model=MODEL, finding=finding, state="final",
                          revision=1, timestamps={"raised": utc_now()})
    text = json.dumps(payload)
    for value in ("DOE^JANE", "MRN123", "19800101", "PatientSex"):
        assert value not in text


def test_strip_phi_removes_the_keys_at_any_depth():
    obj = {"PatientName": "X", "a": [{"PatientID": "1", "b": 2}, {"c": {"PatientBirthDate": "1", "d": 3}}],
           "PatientSex": "F", "keep": "PatientName is just text here"}
    assert strip_phi(obj) == {"a": [{"b": 2}, {"c": {"d": 3}}], "keep": "PatientName is just text here"}


def test_build_result_wraps_the_infer_object_without_phi():
    result = {"series_instance_uid": SERIES["series_instance_uid"], "study_instance_uid": SERIES["study_instance_uid"],
              "slices": 32, "status": "analysed", "PatientName": "DOE^JANE",
              "findings": [{"code": "ich", "probability": 0.2, "positive": False, "patient_id": "MRN1"}]}
    payload = build_result(site="s", device="d", series={"accession_number": "A1"}, result=result,
                           timestamps={"inferred": utc_now()})
    assert payload["schema"] == "edge-agent/result/2"
    assert payload["study"]["accession_number"] == "A1"
    assert payload["result"]["slices"] == 32
    assert "DOE^JANE" not in json.dumps(payload) and "MRN1" not in json.dumps(payload)
    rejected = {**result, "status": "rejected"}
    with pytest.raises(PayloadError, match="reason"):
        build_result(site="s", device="d", series={}, result=rejected, timestamps={})


def test_status_and_receipt_builders():
    status = build_status(site="s", device="d", state="online", reason="heartbeat",
                          outbox={"depth": 3, "oldest_pending_age_s": 1.5}, counters={"series": 2})
    assert status["schema"] == "edge-agent/status/1" and status["outbox"]["depth"] == 3
    receipt = build_receipt(alert_id=make_alert()["alert_id"], revision=2, consumer="pager")
    assert receipt["revision"] == 2 and receipt["received_at"].endswith("Z")
    with pytest.raises(PayloadError):
        validate_payload("receipt", {"alert_id": "x", "revision": 0})


def test_settings_parse_urls_and_refuse_bad_values(monkeypatch, tmp_path):
    assert parse_broker_url("mqtt://broker").port == 1883
    assert parse_broker_url("mqtts://broker").port == 8883 and parse_broker_url("mqtts://h:1").tls
    for bad in ("http://h:1", "mqtt://", "mqtt://user:pw@h:1"):
        with pytest.raises(ConfigError):
            parse_broker_url(bad)
    with pytest.raises(ConfigError, match="delivery must be one of"):
        MqttSettings(url="mqtt://h:1", delivery="sometimes")
    with pytest.raises(ConfigError, match="site"):
        MqttSettings(site="a/b")
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("EDGE_AGENT_MQTT_USERNAME", "agent")
    monkeypatch.setenv("EDGE_AGENT_MQTT_PASSWORD_FILE", str(secret))
    settings = MqttSettings.from_env(url="mqtt://h:1", site="ward", device=None)
    assert (settings.username, settings.password, settings.site, settings.device) == ("agent", "s3cret", "ward",
                                                                                        "device")
    assert "s3cret" not in repr(settings)
    with pytest.raises(ConfigError, match="Unknown MQTT setting"):
        MqttSettings.from_env(colour="blue")


def test_result_2_is_a_superset_of_result_1_for_what_version_1_could_say():
    """A v1 consumer keeps working: a v2 payload of a v1 status validates against the shipped v1 schema."""
    from importlib import resources

    import jsonschema

    v1 = json.loads(resources.files("edge_agent").joinpath("schemas", "result-1.json").read_text())
    result = {"series_instance_uid": "1.2", "study_instance_uid": "1.3", "slices": 8, "status": "analysed",
              "findings": [{"code": "ich", "probability": 0.9, "positive": True, "shadow": True,
                            "would_alert": True, "evidence": {"present": True}}]}
    payload = build_result(site="s", device="d", series={}, result=result, timestamps={})
    jsonschema.validate({**payload, "schema": "edge-agent/result/1"}, v1)
    na = build_result(site="s", device="d", series={}, timestamps={},
                      result={**result, "status": "not_assessable", "reason": "no skull on most slices",
                              "findings": []})
    assert na["result"]["status"] == "not_assessable"
    with pytest.raises(PayloadError, match="reason"):
        build_result(site="s", device="d", series={}, timestamps={},
                     result={**result, "status": "not_assessable", "findings": []})
