"""Job notifications to the webhook_url a job was scheduled with (http or https only, checked
in SQL). Best effort: a webhook that fails is logged, never retried, and never fails the job."""

from __future__ import annotations

import http.client
import json
import logging
import urllib.request
from collections.abc import Mapping
from typing import Any

from .log import fields

log = logging.getLogger("pggit.webhooks")
TIMEOUT_SECONDS = 10


def should_notify(notify: Mapping[str, Any], succeeded: bool, final: bool) -> bool:
    if not notify.get("webhook_url"):
        return False
    if succeeded:
        return bool(notify.get("on_success"))
    return final and bool(notify.get("on_failure"))


def post(url: str, payload: Mapping[str, Any], job_id: str, worker: str) -> bool:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload, default=str).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "pggit-supervisor"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            ok = 200 <= response.status < 300
    # what a bad endpoint can do: refuse or drop the connection, time out, fail TLS (OSError,
    # URLError among them), speak garbage (HTTPException), or be no URL urllib can open (ValueError)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        log.warning("webhook failed" + fields(job=job_id, worker=worker, error=str(exc)))
        return False
    log.info("webhook sent" + fields(job=job_id, worker=worker, ok=ok))
    return ok
