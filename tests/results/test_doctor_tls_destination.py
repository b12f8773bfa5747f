"""`edge-agent doctor --pacs tls:…` tries a DICOM TLS destination with the agent's own settings (--config).

A real TLS peer: pynetdicom's Verification/Storage SCP (pacs_helpers.TlsScp) behind an ssl context built with
the ssl module that demands a client certificate from our CA (certificates from openssl,
edge_agent.testing.mosquitto.make_pki). Without --config the doctor cannot know the TLS material and says so;
with it, it checks as `run --check` does.
"""

from __future__ import annotations

import pytest

from edge_agent.cli.doctor import run_checks
from pacs_helpers import TlsScp, server_context


@pytest.fixture
def tls_scp(pki):
    scp = TlsScp(server_context(pki, require_client=True))
    yield scp.destination
    scp.close()


def test_doctor_tries_a_tls_destination_with_the_configs_certificates(tmp_path, pki, tls_scp):
    config = tmp_path / "agent.toml"
    config.write_text(f'[pacs]\nae_title = "EDGE_TEST"\ntls_ca = "{pki.ca_cert}"\ntls_cert = "{pki.client_cert}"\n'
                      f'tls_key = "{pki.client_key}"\n')
    checks = run_checks(None, None, None, None, (tls_scp,), config)
    [(level, what, detail)] = [c for c in checks if c[1] == f"PACS {tls_scp}"]
    assert level == "OK" and "over DICOM TLS" in detail and "client certificate accepted" in detail, detail

    # the same destination without our client certificate: refused, and the line says what to fix
    config.write_text(f'[pacs]\nae_title = "EDGE_TEST"\ntls_ca = "{pki.ca_cert}"\n')
    checks = run_checks(None, None, None, None, (tls_scp,), config)
    [(level, what, detail)] = [c for c in checks if c[1] == f"PACS {tls_scp}"]
    assert level == "FAIL" and "tls_cert" in detail and "Traceback" not in detail, detail


def test_doctor_without_the_config_says_it_cannot_try_a_tls_destination(tls_scp, monkeypatch):
    monkeypatch.delenv("EDGE_AGENT_PACS_TLS_CA", raising=False)
    checks = run_checks(None, None, None, None, (tls_scp,), None)
    [(level, what, detail)] = [c for c in checks if c[1] == f"PACS {tls_scp}"]
    # the defaults have no client certificate: the peer refuses, and the sentence points at the settings
    assert level in ("FAIL", "WARN") and ("tls_" in detail or "--config" in detail), detail
