"""Docs stay true to the code: the README's configuration reference is the generated one; the file names,
MQTT topics, schema ids and the alert_id recipe the docs show are the code's."""

import re
import textwrap
import uuid
from pathlib import Path

from edge_agent.config import reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_reference_matches_code():
    readme = (ROOT / "README.md").read_text()
    for line in reference_markdown().strip().splitlines():
        assert line in readme, f"README configuration reference is stale: {line!r}"


def test_config_reference_rows_have_four_cells():
    for line in reference_markdown().splitlines():
        if line.startswith("| `"):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            assert len(cells) == 4, f"a bare | splits this row: {line!r}"


def test_readme_shows_install_demo_and_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "pip install ." in readme and "edge-agent demo" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'python -m pytest -m "not gpu" -q' in ci and 'python -m pytest -m "not gpu" -q' in readme


# --- names in the docs against the code: file names, MQTT topics, schema ids, the alert_id recipe -----------------
DOCS = [ROOT / "README.md", ROOT / "jetson" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _docs_text() -> dict[Path, str]:
    return {path: path.read_text() for path in DOCS if path.is_file()}


def _code_text() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "edge_agent").rglob("*.py")))


def test_database_file_names_in_docs_are_the_codes():
    """Every SQLite file the docs name (outbox, ledger, series state, ...) is a literal in edge_agent/."""
    code = _code_text()
    named = {}
    for path, text in _docs_text().items():
        for match in re.finditer(r"(--store\s+\S*?)?([\w.-]+\.(?:sqlite3|sqlite|db))\b", text):
            if match.group(1):  # a consumer's own --store PATH: the user picks that name
                continue
            named.setdefault(match.group(2), path.name)
    assert {"outbox.sqlite3", "ledger.sqlite3", "series.sqlite3"} <= set(named), named
    stale = {name: doc for name, doc in named.items() if f'"{name}"' not in code and f"'{name}'" not in code}
    assert stale == {}, f"docs name database files the code does not use: {stale}"


def _topic_leaves() -> set[str]:
    """The last topic levels the code publishes or subscribes to (MqttSettings.topic and the listener)."""
    code = _code_text()
    leaves = set(re.findall(r"\.topic\(\"(\w+)\"\)", code))
    assert {"alerts", "results", "status", "receipts"} <= leaves, leaves
    return leaves


def test_mqtt_topics_in_docs_match_the_topic_builder():
    from edge_agent.alerts import AlertListener, MqttSettings

    leaves = _topic_leaves()
    settings = MqttSettings()
    placeholder = re.compile(r"^(<[\w-]+>|\{[\w-]+\})$")
    seen = 0
    for path, text in _docs_text().items():
        for match in re.finditer(r"(\$share/[^/\s`]+/)?(?<![\w/.~-])(edge-agent|<prefix>|\{prefix\})/([^\s/`]+)/"
                                 r"([^\s/`]+)/([a-z_]+)\b", text):
            group, prefix, site, device, leaf = match.groups()
            topic = match.group(0)
            seen += 1
            assert leaf in leaves, f"{path.name}: topic {topic} ends in {leaf!r}, not one of {sorted(leaves)}"
            assert prefix == settings.prefix or placeholder.match(prefix), f"{path.name}: {topic}"
            if site == "+" or device == "+":  # a consumer's subscription: what AlertListener subscribes to
                name = group.split("/")[1] if group else None
                listener = AlertListener(settings, on_alert=lambda *_: None, site=site, device=device,
                                         group=name)
                assert leaf == "alerts" and listener.subscription == topic, f"{path.name}: {topic}"
            else:
                concrete = MqttSettings(site="s1" if placeholder.match(site) else site,
                                        device="d1" if placeholder.match(device) else device)
                built = concrete.topic(leaf)
                assert built.split("/")[0] == prefix or placeholder.match(prefix), f"{path.name}: {topic}"
                assert built.endswith("/" + leaf) and built.count("/") == 3, f"{path.name}: {topic}"
        for match in re.finditer(r"(?:…|\.\.\.)/([a-z_]+)\b", text):
            assert match.group(1) in leaves, f"{path.name}: topic …/{match.group(1)} is not one the code uses"
    assert seen >= 3  # the docs do show topics; a regex that finds none would pass vacuously


def test_topic_table_and_schema_ids_in_docs_are_the_codes():
    from edge_agent.alerts.payloads import SCHEMA_IDS

    leaves = _topic_leaves()
    alerts_md = (ROOT / "docs" / "ALERTS.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \|.*\| `(edge-agent/\w+/\d+)` \|$", alerts_md, re.M)
    assert {leaf for leaf, _ in rows} == {"alerts", "results", "status", "receipts", "previews"}, rows
    for leaf, schema in rows:
        kind = {"alerts": "alert", "results": "result", "receipts": "receipt", "previews": "preview"}.get(leaf, leaf)
        assert leaf in leaves and SCHEMA_IDS[kind] == schema, (leaf, schema)
    for path, text in _docs_text().items():
        for schema in re.findall(r"(?<![\w/])edge-agent/[a-z_]+/\d+\b", text):
            assert schema in SCHEMA_IDS.values(), f"{path.name} names schema {schema}, the code has {SCHEMA_IDS}"


def test_alert_id_recipe_in_docs_gives_the_codes_ids():
    from edge_agent.alerts import alert_id

    alerts_md = (ROOT / "docs" / "ALERTS.md").read_text()
    assert "\u241f" not in alerts_md  # the visible symbol for the separator is not the separator
    (recipe,) = [block for block in re.findall(r"```python\n(.*?)```", alerts_md, re.S)
                 if "urn:edge-agent:alert" in block]
    names = {"uuid": uuid, "series_instance_uid": "1.2.826.0.1.3680043.8.498.1", "model_name": "ich",
             "model_version": "1.0.0", "finding_code": "ich"}
    documented = eval(textwrap.dedent(recipe), {"__builtins__": {}}, names)  # noqa: S307 - our own doc
    assert str(documented) == alert_id("1.2.826.0.1.3680043.8.498.1", "ich", "1.0.0", "ich")
