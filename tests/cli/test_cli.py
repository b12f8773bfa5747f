"""The command line as a user meets it: every contract command listed, errors as one sentence."""

import subprocess
import sys

from click.testing import CliRunner

from edge_agent.cli import COMMANDS, cli

CONTRACT = ["run", "demo", "infer", "simulate", "listen", "convert", "calibrate", "inspect", "bench", "doctor",
            "validate", "report"]


def edge_agent(*args, **kw):
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True,
                          timeout=120, **kw)


def test_help_lists_every_contract_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in CONTRACT:
        assert f"  {name} " in result.output, name
    assert set(CONTRACT) == set(COMMANDS)


def test_every_command_imports_and_has_help():
    for name in CONTRACT:
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "unavailable" not in result.output, (name, result.output)


def test_bad_flag_is_a_sentence_not_a_traceback():
    proc = edge_agent("run", "--settle", "soon")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "settle" in proc.stderr


def test_bad_config_file_exit_code_and_sentence(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text("[mqtt]\nbrokr = 'mqtt://x:1'\n")
    proc = edge_agent("run", "--config", str(conf), "--check")
    assert proc.returncode == 2
    assert "unknown setting mqtt.brokr" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_check_reports_missing_watch_folder(tmp_path):
    proc = edge_agent("run", "--check", "--watch", str(tmp_path / "nope"), "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 2
    assert "watch folder" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_check_ok(tmp_path):
    (tmp_path / "in").mkdir()
    proc = edge_agent("run", "--check", "--watch", str(tmp_path / "in"), "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr
    assert "configuration OK" in proc.stdout
    models = next(line for line in proc.stdout.splitlines() if "models: " in line)
    assert " ich " in models and "coronary_calcium" in models  # the shipped models, plug-in included


def test_run_check_loads_the_dicom_tls_files(tmp_path):
    from edge_agent.testing.mosquitto import make_pki

    pki = make_pki(tmp_path / "pki")
    (tmp_path / "in").mkdir()
    conf = tmp_path / "c.toml"
    conf.write_text(f"[dicom]\nport = 11112\ntls_cert = '{pki.server_cert}'\ntls_key = '{pki.server_key}'\n"
                    f"tls_ca = '{pki.ca_cert}'\n")
    args = ("run", "--config", str(conf), "--check", "--watch", str(tmp_path / "in"), "--state-dir",
            str(tmp_path / "s"))
    proc = edge_agent(*args)
    assert proc.returncode == 0, proc.stderr
    assert "DICOM receiver: EDGE_AGENT on 0.0.0.0 port 11112, TLS with peer certificates" in proc.stdout
    conf.write_text(f"[dicom]\nport = 11112\ntls_cert = '{pki.server_cert}'\ntls_key = '{pki.client_key}'\n")
    proc = edge_agent(*args)
    assert proc.returncode == 2 and "cannot be loaded" in proc.stderr and "Traceback" not in proc.stderr
