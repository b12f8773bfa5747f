"""Start-up failures are one sentence naming the fix; nothing is left running."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from watchdog.observers import Observer

from ingest_helpers import Collector
from edge_agent.errors import EdgeAgentError
from edge_agent.ingest import Ingest, IngestSettings, WatchFolderError
from edge_agent.ingest import watcher


class FakeInotifyObserverRaising(Observer):
    """A fake: the real inotify observer, except that starting it fails like the kernel would."""

    error = errno.ENOSPC

    def start(self) -> None:
        raise OSError(self.error, os.strerror(self.error))


def _one_sentence(message: str) -> None:
    assert message.endswith(".") and "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("code, sysctl", [(errno.ENOSPC, "fs.inotify.max_user_watches"),
                                          (errno.EMFILE, "fs.inotify.max_user_instances")])
def test_inotify_limits_name_the_sysctl_and_poll(dirs, monkeypatch, code, sysctl):
    watch, state = dirs
    monkeypatch.setattr(FakeInotifyObserverRaising, "error", code)
    monkeypatch.setattr(watcher, "Observer", FakeInotifyObserverRaising)
    c = Collector()
    ingest = Ingest(IngestSettings(watch, state), c.on_file, c.on_rejected)
    with pytest.raises(WatchFolderError) as info:
        ingest.start()
    message = str(info.value)
    _one_sentence(message)
    assert f"sudo sysctl {sysctl}=" in message and "--poll" in message and str(watch) in message
    current = Path(f"/proc/sys/{sysctl.replace('.', '/')}").read_text().strip()
    assert f"{sysctl}={current}" in message  # shows the current value
    assert isinstance(info.value, EdgeAgentError)
    ingest.stop()  # harmless after a failed start; the thread-leak check runs at teardown


def test_polling_needs_no_inotify(dirs, monkeypatch):
    watch, state = dirs
    monkeypatch.setattr(watcher, "Observer", FakeInotifyObserverRaising)
    c = Collector()
    with Ingest(IngestSettings(watch, state, poll=True), c.on_file) as ingest:
        assert ingest.stats()["rescans"] >= 0


def test_missing_watch_folder(tmp_path):
    missing = tmp_path / "nope"
    ingest = Ingest(IngestSettings(missing, tmp_path / "state"), Collector().on_file)
    with pytest.raises(WatchFolderError) as info:
        ingest.start()
    _one_sentence(str(info.value))
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)
    assert "--watch" in str(info.value)
    assert not (tmp_path / "state").exists()  # nothing created before the checks pass


def test_watch_path_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(WatchFolderError, match="is not a folder"):
        Ingest(IngestSettings(f, tmp_path / "state"), Collector().on_file).start()


def test_unreadable_watch_folder(dirs, monkeypatch):
    """Tests run as root, who reads everything; a fake os.access stands for a user without permission."""
    watch, state = dirs
    real_access = os.access
    monkeypatch.setattr(watcher.os, "access",
                        lambda p, mode, **kw: False if str(p) == str(watch) else real_access(p, mode, **kw))
    with pytest.raises(WatchFolderError) as info:
        Ingest(IngestSettings(watch, state), Collector().on_file).start()
    _one_sentence(str(info.value))
    assert "not readable" in str(info.value) and "permission" in str(info.value)


def test_unwritable_state_folder(dirs, tmp_path):
    watch, _ = dirs
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state folder should go")
    with pytest.raises(EdgeAgentError) as info:
        Ingest(IngestSettings(watch, blocker / "state"), Collector().on_file).start()
    _one_sentence(str(info.value))
    assert "state folder" in str(info.value)


@pytest.mark.parametrize("field, value", [("poll_interval", 0), ("rescan_interval", -1),
                                          ("stable_seconds", -0.1), ("workers", 0)])
def test_bad_settings_are_config_errors(tmp_path, field, value):
    from edge_agent.errors import ConfigError

    with pytest.raises(ConfigError, match=field):
        IngestSettings(tmp_path, tmp_path, **{field: value})


def test_api_before_start_says_so(tmp_path):
    ingest = Ingest(IngestSettings(tmp_path, tmp_path / "s"), Collector().on_file)
    with pytest.raises(RuntimeError, match="start"):
        ingest.mark_series_done("1.2.3")
