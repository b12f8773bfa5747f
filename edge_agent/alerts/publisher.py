"""AlertPublisher: the outbox and the MQTT connection, owned by one publisher thread.

paho calls its callbacks on its network thread while holding its own lock, so
the callbacks (edge_agent.alerts.link) only put ``(kind, ...)`` events on a
queue. The publisher thread (``edge-agent-publisher``) is the only one that
calls ``publish()`` and the only one that writes the outbox. Each turn it
drains the queue; new alerts/results are committed together in one fsync'd
transaction (group commit) before their callers return; then PUBACKs,
receipts and connection events are applied and due rows are published oldest
first within a small in-flight window. Topics, payloads and the two delivery
modes: docs/ALERTS.md.

Broker trouble is told on the ``edge_agent.broker`` logger (shown at the
default verbosity, see :mod:`edge_agent.logs`): a WARNING at the first failed
connection attempt with what to check, repeated at most every
:attr:`AlertPublisher.broker_warning_interval` seconds while it lasts, and one
INFO line when the broker is back, with the outbox backlog.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import socket
import sqlite3
import ssl
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable

import paho.mqtt.client as paho

from edge_agent.alerts import mqtt
from edge_agent.alerts.alarms import Alarms
from edge_agent.alerts.link import PublisherLink
from edge_agent.alerts.outbox import Outbox, OutboxError, OutboxRow
from edge_agent.alerts.payloads import build_status, encode, validate_payload
from edge_agent.alerts.settings import MqttSettings
from edge_agent.errors import EdgeAgentError
from edge_agent.logs import BROKER_LOG

log = logging.getLogger(__name__)
broker_log = logging.getLogger(BROKER_LOG)

#: While the broker cannot be reached, its warning is repeated at most this often (seconds).
BROKER_WARNING_INTERVAL_S = 60.0

_BATCH = 512
_PRUNE_DONE_AFTER_S = 7 * 24 * 3600


class PublisherNotRunning(EdgeAgentError):
    """raise_alert/publish_result was called while the publisher is not running."""


def connect_failure_reason(exc: BaseException | None, tls: bool = False) -> str:
    """Why one connection attempt failed, in words (from the OSError paho met, when it was handed over)."""
    if exc is None:
        return "no connection"
    if tls and isinstance(exc, (ConnectionResetError, ConnectionAbortedError)):
        return "the connection was reset during the TLS handshake; is it a plain MQTT port (then use mqtt://)?"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the broker's TLS certificate was not accepted: {exc.verify_message or exc.reason or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens on that port"
    if isinstance(exc, TimeoutError):
        return "no answer: timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class BrokerTrouble:
    """How long the broker has been out of reach, and when to say so again (publisher thread only).

    :meth:`attempt_failed` answers ``"first"`` at the first failed attempt of an
    outage, ``"repeat"`` when ``interval`` seconds have passed since it was last
    told, else None (the caller logs at DEBUG then). :meth:`back` ends it.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self.since: float | None = None      # monotonic start of the outage (None: no outage)
        self.attempts = 0                    # failed attempts in this outage
        self.last_reason = ""
        self._told_at: float | None = None   # when the outage was last told (None: not yet)

    @property
    def active(self) -> bool:
        return self.since is not None

    def lost(self) -> None:
        """An established connection dropped (the link warned already): the outage starts now."""
        if self.since is None:
            self.since, self.attempts, self._told_at = self._clock(), 0, None

    def attempt_failed(self, reason: str) -> str | None:
        now = self._clock()
        if self.since is None:
            self.since, self.attempts, self._told_at = now, 0, None
        self.attempts += 1
        self.last_reason = reason
        if self._told_at is None:
            self._told_at = now
            return "first"
        if now - self._told_at >= self.interval:
            self._told_at = now
            return "repeat"
        return None

    def back(self) -> tuple[float, int] | None:
        """The broker answers again: (outage seconds, failed attempts), or None when there was no outage."""
        if self.since is None:
            return None
        out = (self._clock() - self.since, self.attempts)
        self.since, self.attempts, self._told_at, self.last_reason = None, 0, None, ""
        return out

    def duration(self) -> str:
        return _duration(0.0 if self.since is None else self._clock() - self.since)


def backoff_delay(base: float, attempt: int, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: base * 2**(attempt-1), capped at ``cap``, times a factor in [1, 1.25]."""
    delay = min(cap, base * (2 ** max(0, min(attempt - 1, 30))))
    return delay * rng.uniform(1.0, 1.25)


class AlertPublisher:
    """Durable alert delivery: outbox first, then MQTT QoS 1 until acknowledged (see docs/ALERTS.md).

    ``on_delivery(state, kind)`` is called on the publisher thread
    when a row reaches its end: ``confirmed`` (a consumer's receipt made an
    alert done) or ``rejected`` (the broker refused it for good); the agent
    counts these in ``edge_agent_alerts_total``. ``on_alarm(sentence)`` gets
    every alarm.
    """

    #: Seconds between repeated "cannot reach the broker" warnings while an outage lasts.
    broker_warning_interval: float = BROKER_WARNING_INTERVAL_S

    def __init__(self, settings: MqttSettings, outbox_path: Path,
                 on_alarm: Callable[[str], None] | None = None,
                 on_delivery: Callable[[str, str], None] | None = None) -> None:
        if settings.url is None:
            raise EdgeAgentError("The alert publisher needs a broker URL; start the embedded broker first or "
                                 "pass --broker mqtt://host:port.")
        self.settings = settings
        self.outbox_path = Path(outbox_path)
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._alarms = Alarms(on_alarm, settings.alarm_depth, settings.alarm_oldest_age_s)
        self._on_delivery = on_delivery
        self._link = PublisherLink(settings, self._events)
        self._stop = threading.Event()
        self._flush_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._submit_lock = threading.Lock()   # _closed and enqueueing "put"/"sync" happen atomically
        self._closed = True
        self._lock = threading.Lock()          # guards _snapshot and _counters
        self._snapshot: dict = {"depth": 0, "by_state": {}, "oldest_pending_age_s": None}
        self._counters: dict = {}
        # No deadline is ever set further ahead than this (backoff_delay's cap with its jitter); one that
        # is was set before the wall clock stepped back, and is due now (Outbox.due).
        self._horizon = 1.25 * max(settings.retry_max_delay, settings.receipt_timeout) + 5.0
        # (created_at, monotonic time first seen, its age then) of the oldest undelivered row: its age
        # goes on on the monotonic clock, so a wall-clock step neither raises nor hides the age alarm.
        self._oldest: tuple[float, float, float] | None = None
        self._rng = random.Random()
        # Owned by the publisher thread only:
        # mid -> (seq, revision, delivery, attempts, kind)
        self._inflight: dict[int, tuple[int, int, str, int, str]] = {}
        self._trouble: BrokerTrouble | None = None   # made when the thread starts (the interval may be set)
        self._ever_connected = False
        self._connack_seen = False   # a CONNACK answered the current connection attempt
        self._late_events: list = []
        self._last_refresh = 0.0
        self._last_full_count = 0.0

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        """Open the outbox (in-flight rows back to pending) and connect in the background, retrying forever."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._started.clear()
        self._start_error = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="edge-agent-publisher", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error

    def threads(self) -> list[threading.Thread]:
        """The long-lived threads this part runs (the agent supervises them)."""
        return [self._thread] if self._thread is not None else []

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Publish what can be published within ``flush_timeout``, then retained ``offline``, then disconnect."""
        if self._thread is None:
            return
        self._flush_deadline = time.monotonic() + max(0.0, flush_timeout)
        self._stop.set()
        self._events.put(("wake",))
        self._thread.join()
        self._thread = None

    def raise_alert(self, payload: dict) -> str:
        """Commit ``payload`` (an alert, see build_alert) to the outbox, fsync'd, and return its alert_id.

        A higher revision of a known alert_id replaces the earlier one and is (re)delivered; an equal or
        lower revision changes nothing (raising the same alert twice is harmless).
        """
        validate_payload("alert", payload)
        return self._submit("alert", payload["alert_id"], payload["revision"], self.settings.topic("alerts"),
                            payload, self.settings.delivery)

    def publish_result(self, payload: dict) -> None:
        """Commit a result payload (see build_result); delivered at QoS 1, done at PUBACK."""
        validate_payload("result", payload)
        self._submit("result", payload["result_id"], 1, self.settings.topic("results"), payload, "broker")

    def publish_preview(self, payload: dict) -> None:
        """Commit a key-image preview (see edge_agent.alerts.previews.build_preview); done at PUBACK.

        Its own row (key ``preview:<alert_id>``): a higher revision replaces the earlier one, like an alert,
        and it is delivered in ``broker`` mode whatever ``delivery`` is, so it never waits for a receipt.
        """
        validate_payload("preview", payload)
        self._submit("preview", f"preview:{payload['alert_id']}", payload["revision"],
                     self.settings.topic("previews"), payload, "broker")

    def set_status_counters(self, counters: dict) -> None:
        """Counters merged into the periodic heartbeat on the status topic."""
        with self._lock:
            self._counters.update(counters)

    def stats(self) -> dict:
        """Outbox depth (pending + in flight + awaiting receipt), oldest pending age, counts, connection, alarms."""
        with self._lock:
            snap = dict(self._snapshot)
        return {**snap, "by_state": dict(snap.get("by_state", {})), "connected": self._link.connected,
                "protocol": self._link.protocol, "delivery": self.settings.delivery, "alarms": self._alarms.recent()}

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is pending, in flight or awaiting a receipt (test helper)."""
        deadline = time.monotonic() + timeout
        while self._thread is not None:
            synced: Future = Future()
            with self._submit_lock:
                if self._closed:
                    return False
                self._events.put(("sync", synced))
            try:
                depth = synced.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
            if depth == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return False

    # ------------------------------------------------------------------ callers -> publisher thread
    def _submit(self, kind: str, key: str, revision: int, topic: str, payload: dict, delivery: str) -> str:
        done: Future = Future()
        with self._submit_lock:
            if self._closed or self._stop.is_set():
                raise PublisherNotRunning("The alert publisher is not running; start it before raising alerts.")
            self._events.put(("put", kind, key, int(revision), topic, encode(payload), delivery, done))
        done.result()  # re-raises an outbox error in the caller
        return key

    # ------------------------------------------------------------------ the publisher thread
    def _run(self) -> None:
        outbox = None
        try:
            outbox = Outbox(self.outbox_path)
            with outbox.transaction():
                reset = outbox.reset_inflight()
            if reset:
                log.info("outbox: %d message(s) left in flight by the previous run are pending again", reset)
            self._refresh_snapshot(outbox, force=True)
            self._link.connect()
        except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
            self._start_error = exc
            self._closed = True
            if outbox is not None:
                outbox.close()
            self._started.set()
            return
        self._started.set()
        self._trouble = BrokerTrouble(self.broker_warning_interval)
        try:
            self._loop(outbox)
        except Exception:  # noqa: BLE001 - last boundary of the thread
            log.exception("alert publisher thread failed; alerts stay in the outbox for the next start")
        finally:
            try:
                self._link.publish_offline(self._events, self._late_events)
                self._link.close()
            finally:
                with self._submit_lock:
                    self._closed = True
                self._commit_late_events(outbox)
                outbox.close()

    def _commit_late_events(self, outbox: Outbox) -> None:
        """After the loop: commit alerts raised during shutdown (delivered at next start), release waiters."""
        events = self._late_events + self._drain(0)
        self._late_events = []
        puts = [e for e in events if e[0] == "put"]
        if puts:
            self._commit_puts(outbox, puts)
        for event in events:
            if event[0] == "sync":
                event[1].set_exception(PublisherNotRunning("The alert publisher stopped."))

    def _loop(self, outbox: Outbox) -> None:
        next_heartbeat = time.monotonic() + self.settings.heartbeat_interval
        next_prune = time.monotonic() + 3600
        while True:
            wait = self._wait_time(outbox, next_heartbeat)
            events = self._drain(wait)
            puts = [e for e in events if e[0] == "put"]
            syncs = [e[1] for e in events if e[0] == "sync"]
            if puts:   # new alerts/results: one fsync'd commit for the whole batch (group commit)
                self._commit_puts(outbox, puts)
            try:
                with outbox.transaction(durable=False):          # state transitions, then publish due rows
                    for event in events:
                        if event[0] not in ("put", "sync"):
                            self._apply(outbox, event)
                    if self._link.connected:
                        self._publish_due(outbox)
            except sqlite3.Error as exc:   # the rows stay as they were and are retried: nothing is lost
                log.error("cannot update the alert outbox %s (%s); retrying", self.outbox_path, exc)
                self._stop.wait(1.0)
            if self._link.check_connack_timeout():
                self._inflight.clear()
            if syncs:
                self._last_full_count = 0.0   # wait_idle()/stats() after it see exact counts
            self._refresh_snapshot(outbox, force=bool(syncs))
            for fut in syncs:
                fut.set_result(self._snapshot["depth"])
            now = time.monotonic()
            if self._link.connected and now >= next_heartbeat:
                self._publish_status("heartbeat")
                next_heartbeat = now + self.settings.heartbeat_interval
            if now >= next_prune:
                with outbox.transaction(durable=False):
                    outbox.prune_done(time.time() - _PRUNE_DONE_AFTER_S)
                next_prune = now + 3600
            if self._stop.is_set():
                idle = not self._inflight and not outbox.has_pending()
                if idle or not self._link.connected or now >= self._flush_deadline:
                    return

    def _commit_puts(self, outbox: Outbox, puts: list) -> None:
        futures = []
        try:
            with outbox.transaction(durable=True):
                for event in puts:
                    futures.extend(self._apply(outbox, event))
        except sqlite3.Error as exc:
            error = OutboxError(f"Cannot commit to the alert outbox {self.outbox_path} ({exc}); free disk space "
                                "or fix the state directory, the alert was NOT raised.")
            self._alarms.raise_(str(error))
            for event in puts:
                event[-1].set_exception(error)
            return
        self._refresh_snapshot(outbox, force=True)   # before callers see their result
        for fut, result in futures:
            fut.set_result(result)

    def _wait_time(self, outbox: Outbox, next_heartbeat: float) -> float:
        if self._stop.is_set():
            return 0.02
        wait = min(1.0, max(0.0, next_heartbeat - time.monotonic()))
        if self._link.connected and len(self._inflight) < self.settings.inflight_window:
            due = outbox.next_due_at()
            if due is not None:
                ahead = due - time.time()
                wait = min(wait, 0.0 if ahead > self._horizon else max(0.0, ahead))
        return wait

    def _drain(self, wait: float) -> list:
        events = []
        try:
            events.append(self._events.get(timeout=wait) if wait > 0 else self._events.get_nowait())
            while len(events) < _BATCH:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass
        return events

    def _apply(self, outbox: Outbox, event: tuple) -> list:
        kind = event[0]
        now = time.time()
        if kind == "put":
            _, msg_kind, key, revision, topic, payload, delivery, fut = event
            outcome = outbox.put(kind=msg_kind, message_key=key, revision=revision, topic=topic,
                                 payload=payload, delivery=delivery, now=now)
            log.debug("outbox: %s %s revision %d %s", msg_kind, key, revision, outcome)
            return [(fut, outcome)]
        if kind == "wake" or not self._link.owns(event[1]):
            return []   # from a client replaced by a protocol fallback: stale
        if kind == "puback":
            self._handle_puback(outbox, event[2], event[3], now)
        elif kind == "receipt":
            self._handle_receipt(outbox, event[2], now)
        elif kind == "connack":
            self._connack_seen = True
            self._handle_connack(outbox, event[2])
        elif kind == "disconnected":
            if self._link.on_disconnected(event[2]):
                self._inflight.clear()
                outbox.requeue_inflight(now)
                self._trouble.lost()
            elif not self._connack_seen and not self._stop.is_set():
                # TCP was accepted but the broker hung up before any CONNACK: a TLS port spoken to in plain
                # MQTT, or a proxy/firewall in between.
                hint = "" if self.settings.address.tls else "; is it a TLS port (then use mqtts://)?"
                self._attempt_failed(outbox, f"the broker closed the connection before answering{hint}")
        elif kind == "socket_open":
            self._connack_seen = False
            self._link.on_socket_open()
        elif kind == "connect_failed":
            self._attempt_failed(outbox, connect_failure_reason(event[2] if len(event) > 2 else None,
                                                                self.settings.address.tls))
        return []

    # ------------------------------------------------------------------ broker trouble, told at a bounded rate
    _CHECK = ("check the host and port in mqtt.broker (--broker), that the broker is running and reachable from "
              "this machine (firewall), TLS (mqtts:// for a TLS port, mqtt.ca_file, the client certificate) and "
              "the credentials (mqtt.username, EDGE_AGENT_MQTT_PASSWORD or mqtt.password_file)")

    def _backlog(self, outbox: Outbox) -> int:
        self._refresh_snapshot(outbox, force=True)
        return int(self._snapshot.get("depth", 0))

    def _attempt_failed(self, outbox: Outbox, reason: str) -> None:
        told = self._trouble.attempt_failed(reason)
        url = self.settings.url
        if told == "first":
            broker_log.warning("Cannot reach the MQTT broker at %s (%s): %s; alerts wait in the outbox (%d now) and "
                               "the agent keeps trying.", url, reason, self._CHECK, self._backlog(outbox))
        elif told == "repeat":
            broker_log.warning("Still cannot reach the MQTT broker at %s after %s (%d attempts; last: %s), %d "
                               "message(s) wait in the outbox: %s.", url, self._trouble.duration(),
                               self._trouble.attempts, reason, self._backlog(outbox), self._CHECK)
        else:
            log.debug("cannot reach the MQTT broker at %s (%s); retrying", url, reason)

    def _handle_puback(self, outbox: Outbox, mid: int, reason_code, now: float) -> None:
        if mid in self._link.status_mids:
            self._link.status_mids.discard(mid)
            return
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return  # a PUBACK from before a reconnect: the row was requeued and goes out again
        seq, revision, delivery, attempts, kind = entry
        if reason_code.is_failure:
            text = mqtt.reason_text(reason_code)
            if getattr(reason_code, "value", 0) in mqtt.TRANSIENT_PUBACK:
                outbox.mark_retry(seq, revision, now + backoff_delay(1.0, 3, self.settings.retry_max_delay,
                                                                    self._rng), text)
                return
            if outbox.mark_rejected(seq, revision, text, now):
                self._alarms.raise_(f"The broker rejected message {seq} on {self.settings.topic('alerts')} with "
                            f"{text}; fix the broker ACL for this client, the alert is kept as rejected.")
                self._delivered("rejected", kind)
            return
        receipt_due = None
        if delivery == "receipt":
            receipt_due = now + backoff_delay(self.settings.receipt_timeout, attempts,
                                              max(self.settings.retry_max_delay, self.settings.receipt_timeout),
                                              self._rng)
        outbox.mark_acked(seq, revision, now, receipt_due)

    def _handle_receipt(self, outbox: Outbox, raw: bytes, now: float) -> None:
        try:
            receipt = json.loads(raw)
            validate_payload("receipt", receipt, strict=False)
        except (ValueError, EdgeAgentError) as exc:
            log.warning("ignoring a malformed receipt on %s: %s", self.settings.topic("receipts"), exc)
            return
        if outbox.confirm(receipt["alert_id"], int(receipt["revision"]), now):
            self._delivered("confirmed", "alert")
            log.debug("receipt: %s revision %s confirmed by %s", receipt["alert_id"], receipt["revision"],
                      receipt.get("consumer", "?"))

    def _handle_connack(self, outbox: Outbox, reason_code) -> None:
        self._inflight.clear()
        outcome = self._link.on_connack(reason_code)
        if outcome == "connected":
            self._publish_status("birth")   # retained state re-published after every reconnect
            back = self._trouble.back()
            first = not self._ever_connected
            self._ever_connected = True
            if back is not None:
                outage, attempts = back
                broker_log.info("The MQTT broker at %s is reachable again after %s (%d failed attempt(s)); "
                                "outbox backlog: %d message(s), sending now.", self.settings.url, _duration(outage),
                                attempts, self._backlog(outbox))
            elif first:
                broker_log.info("Connected to the MQTT broker at %s (MQTT %s); outbox backlog: %d message(s).",
                                self.settings.url, self._link.protocol, self._backlog(outbox))
        elif outcome == "refused":
            # Refused every reconnect (wrong password): alarmed at the first and then at the warning's slow rate.
            told = self._trouble.attempt_failed(f"refused: {mqtt.reason_text(reason_code)}")
            if told is not None:
                self._alarms.raise_(f"The MQTT broker {self.settings.url} refused the connection: "
                                    f"{mqtt.reason_text(reason_code)}; check the username, password, client "
                                    "certificate and ACL.")
            else:
                log.debug("the MQTT broker %s refused the connection again (%s)", self.settings.url,
                          mqtt.reason_text(reason_code))

    def _delivered(self, state: str, kind: str) -> None:
        if self._on_delivery is None:
            return
        try:
            self._on_delivery(state, kind)
        except Exception:  # noqa: BLE001 - a broken hook must not stop delivery
            log.exception("the on_delivery callback failed")

    def _publish_due(self, outbox: Outbox) -> None:
        free = self.settings.inflight_window - len(self._inflight)
        if free <= 0:
            return
        now = time.time()
        for row in outbox.due(free, now, self._horizon):
            self._publish_row(outbox, row, now)

    def _publish_row(self, outbox: Outbox, row: OutboxRow, now: float) -> None:
        if row.kind == "alert":
            user_props = [("alert_id", row.message_key), ("revision", str(row.revision))]
        elif row.kind == "preview":
            user_props = [("alert_id", row.message_key.split(":", 1)[1]), ("revision", str(row.revision))]
        else:
            user_props = [("result_id", row.message_key)]
        info = self._link.client.publish(row.topic, row.payload, qos=1, retain=False,
                                    properties=mqtt.publish_properties(self._link.protocol, user_props))
        if info.rc == paho.MQTT_ERR_SUCCESS or info.rc == paho.MQTT_ERR_NO_CONN:
            # NO_CONN: paho queues it in memory; on the disconnect event the row is requeued anyway.
            self._inflight[info.mid] = (row.seq, row.revision, row.delivery, row.attempts + 1, row.kind)
            outbox.mark_inflight(row.seq, now)
            if row.state == "acked":
                log.info("no receipt yet for %s revision %d; republished (attempt %d)", row.message_key,
                         row.revision, row.attempts + 1)
        else:
            outbox.mark_inflight(row.seq, now)
            outbox.mark_retry(row.seq, row.revision,
                              now + backoff_delay(1.0, row.attempts + 1, self.settings.retry_max_delay, self._rng),
                              paho.error_string(info.rc))

    def _publish_status(self, reason: str) -> int | None:
        stats = self.stats()
        with self._lock:
            counters = dict(self._counters)
        payload = build_status(site=self.settings.site, device=self.settings.device, state="online", reason=reason,
                               protocol=self._link.protocol, delivery=self.settings.delivery,
                               outbox={"depth": stats["depth"], "oldest_pending_age_s": stats["oldest_pending_age_s"],
                                       "rejected": stats["by_state"].get("rejected", 0),
                                       "done": stats["by_state"].get("done", 0)},
                               alarms=stats["alarms"][-5:], counters=counters)
        return self._link.publish_status(payload)

    # ------------------------------------------------------------------ bookkeeping
    def _refresh_snapshot(self, outbox: Outbox, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_refresh < 0.05:
            return
        full = now - self._last_full_count > 1.0   # done/rejected are recounted at most once a second
        previous = self._snapshot.get("by_state", {})
        counts = outbox.counts(None if full else {k: previous.get(k, 0) for k in ("done", "rejected")})
        self._last_refresh = now
        if full:
            self._last_full_count = now
        created = counts.pop("oldest_created_at", None)
        if created is None:
            self._oldest = None
        elif self._oldest is None or self._oldest[0] != created:
            self._oldest = (created, now, counts["oldest_pending_age_s"])
        else:
            counts["oldest_pending_age_s"] = round(self._oldest[2] + (now - self._oldest[1]), 3)
        with self._lock:
            self._snapshot = counts
        self._alarms.check_outbox(counts["depth"], counts["oldest_pending_age_s"])
