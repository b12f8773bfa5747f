"""The shipped schemas are open to additions, the agent's own check is closed.

A consumer that holds this version's ``alert.json`` must keep accepting alerts of a later agent that adds
optional fields (docs/ALERTS.md: "ignore fields you do not know"); the agent must still refuse a misspelt
field in what it sends. Checked with a plain jsonschema validator on the shipped file (as a consumer team
would use it) and with a real ``edge-agent listen`` fed over a real Mosquitto.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from importlib import resources

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from edge_agent.testing.alerts import make_alert
from edge_agent.testing.wait import wait_until
from edge_agent.alerts.payloads import PayloadError, validate_payload

LISTEN = [sys.executable, "-c", "from edge_agent.cli import main; main()", "listen"]
KINDS = ("alert", "result", "status", "preview")


def shipped(kind: str) -> dict:
    return json.loads(resources.files("edge_agent").joinpath("schemas", f"{kind}.json").read_text())


def later_alert() -> dict:
    """An alert of a later agent: this version's fields plus new optional ones, at the top and nested."""
    alert = copy.deepcopy(make_alert(3))
    alert["triage_priority"] = 1
    alert["finding"]["volume_ml"] = 4.2
    alert["model"]["calibration"] = {"method": "isotonic"}
    alert["study"]["station_name_hash"] = "ab12"
    return alert


@pytest.mark.parametrize("kind", KINDS)
def test_no_shipped_schema_closes_an_object_to_new_fields(kind):
    def walk(node, where):
        if isinstance(node, dict):
            assert node.get("additionalProperties") is not False, f"{kind}.json closes {where or 'the top level'}"
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(shipped(kind), "")


def test_a_consumer_with_the_shipped_file_accepts_a_later_agents_alert():
    schema = shipped("alert")
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert list(validator.iter_errors(later_alert())) == []
    broken = later_alert()
    del broken["finding"]["probability"]                     # still a schema: required fields are required
    assert [e.message for e in validator.iter_errors(broken)]
    assert validate_payload("alert", later_alert(), strict=False)


def test_the_agents_own_check_refuses_a_field_the_schema_does_not_name():
    alert = make_alert(4)
    validate_payload("alert", alert)                          # what this agent builds passes its own check
    misspelt = copy.deepcopy(alert)
    misspelt["finding"]["probabilty"] = 0.5
    with pytest.raises(PayloadError, match="finding.*probabilty"):
        validate_payload("alert", misspelt)
    with pytest.raises(PayloadError, match="triage_priority"):
        validate_payload("alert", later_alert())


def test_listen_accepts_and_acknowledges_a_later_agents_alert(mosquitto):
    alert = later_alert()
    topic = f"edge-agent/{alert['site']}/{alert['device']}/alerts"
    listen = subprocess.Popen([*LISTEN, "--broker", mosquitto.url, "--json", "--count", "1", "--timeout", "30",
                               "--consumer", "old-pager"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    receipts: list[dict] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="later-agent", protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, msg: receipts.append(json.loads(msg.payload))
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe(topic.replace("/alerts", "/receipts"), qos=1)
    client.loop_start()
    try:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("alert_id", alert["alert_id"]), ("revision", str(alert["revision"]))]
        out, err = None, None
        for _ in range(60):                                   # until listen is subscribed and has the alert
            client.publish(topic, json.dumps(alert), qos=1, properties=props).wait_for_publish(5)
            try:
                out, err = listen.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        if listen.poll() is None:
            listen.kill()
            out, err = listen.communicate()
        wait_until(lambda: receipts, 5)
        client.loop_stop()
        client.disconnect()
    assert listen.returncode == 0, err
    printed = json.loads(out.splitlines()[0])
    assert printed["alert_id"] == alert["alert_id"] and printed["triage_priority"] == 1
    assert "invalid" not in err.lower()
    assert [(r["alert_id"], r["revision"], r["consumer"]) for r in receipts] == [
        (alert["alert_id"], alert["revision"], "old-pager")]
