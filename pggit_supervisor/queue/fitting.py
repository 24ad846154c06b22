"""What makes a report fit the limits the queue functions enforce (schema/009, 013), and the
shell-quoted form of a command a DBA reads."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

READY_CHANNEL = "pggit_backup_job_ready"

# No call a worker makes should take long; one that does is a hang, and the supervisor's
# watchdog would kill the whole worker. Fail the call instead and let the worker reconnect.
SESSION_OPTIONS = "-c statement_timeout=20s -c lock_timeout=10s -c idle_in_transaction_session_timeout=60s"

# What the queue functions accept (schema/009): a report over these limits is refused with 22023.
MAX_TEXT_BYTES = 64 * 1024
MAX_JSON_BYTES = 256 * 1024
# what pggit.record_job_command accepts (schema/013)
MAX_COMMAND_BYTES = 16 * 1024


def shell_command(argv: Sequence[str]) -> str:
    """The argv as one line a person can read and paste into a shell (NULs, which no argv can
    hold anyway, replaced as fit_text does). An argument holding a control character (a line
    break, a terminal escape: C0 or C1) is written with bash's ANSI-C quoting, $'a\\nb', so that
    what a DBA reads is one line and moves no cursor; pggit.record_job_command refuses them raw."""
    return " ".join(_ansi_c_quote(arg) if _CONTROL.search(arg) else shlex.quote(arg) for arg in argv).replace(
        "\x00", "\ufffd"
    )


_CONTROL = re.compile("[\x01-\x1f\x7f-\x9f]")


def _ansi_c_quote(arg: str) -> str:
    def one(char: str) -> str:
        if char in "\\'":
            return "\\" + char
        if _CONTROL.match(char):
            return f"\\x{ord(char):02x}" if ord(char) < 0x80 else f"\\u{ord(char):04x}"
        return char

    return "$'" + "".join(one(char) for char in arg) + "'"


def fit_text(text: str | None, limit: int = MAX_TEXT_BYTES) -> str | None:
    """`text` cut to its last `limit` bytes of UTF-8 (the end of a tool's output says most), without
    NUL characters (PostgreSQL text cannot hold them; a tool may well print them)."""
    if text is None:
        return None
    text = text.replace("\x00", "\ufffd")
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    marker = "[...] "
    return marker + data[len(data) - limit + len(marker) :].decode("utf-8", errors="ignore")


def _without_nul(value: Any) -> Any:
    """The same JSON value with NUL characters replaced: jsonb refuses \\u0000."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, Mapping):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nul(v) for v in value]
    return value


def fit_result(result: Mapping[str, Any]) -> str:
    """The result record as JSON; the output tails give way if it would exceed the limit."""
    encoded = json.dumps(_without_nul(result))
    if len(encoded.encode()) <= MAX_JSON_BYTES:
        return encoded
    trimmed = {k: v for k, v in _without_nul(result).items() if not k.endswith("_tail")}
    trimmed["tails_dropped"] = f"the result record exceeded {MAX_JSON_BYTES} bytes"
    return json.dumps(trimmed)


def fit_facts(facts: Mapping[str, Any]) -> str:
    """The backup's facts as JSON; its metadata gives way if it would exceed the limit (the sizes,
    checksum, location and verification still reach the backup row)."""
    encoded = json.dumps(_without_nul(facts))
    if len(encoded.encode()) <= MAX_JSON_BYTES:
        return encoded
    trimmed = _without_nul(facts)
    trimmed["metadata"] = {
        "metadata_dropped": f"{len(encoded.encode())} bytes of facts exceeded the {MAX_JSON_BYTES}-byte limit"
    }
    return json.dumps(trimmed)
