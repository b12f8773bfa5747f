"""A C-STORE destination, as configured: ``AET@host:port`` (no pynetdicom here: config checks it)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge_agent.errors import ConfigError

_DESTINATION = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\s]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Destination:
    """A C-STORE destination: called AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AET@host:port`` → :class:`Destination`; a malformed one is a :class:`ConfigError` sentence."""
    match = _DESTINATION.match(str(text).strip())
    if not match or not match["aet"].strip() or not 0 < int(match["port"]) <= 65535:
        raise ConfigError(f"pacs destination {text!r} is not AET@host:port (an AE title of 1-16 characters, a host "
                          "and a TCP port), e.g. PACS@10.0.0.5:104.")
    return Destination(match["aet"].strip(), match["host"].strip("[]"), int(match["port"]))
