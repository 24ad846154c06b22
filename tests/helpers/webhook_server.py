"""A local HTTP endpoint for the notification tests, and the README's receiver snippet.

Endpoint is a threading http.server on 127.0.0.1 (loopback: a config must list 127.0.0.1 in
notifications.allowed_hosts for a worker to post to it) that answers each POST with the next of
its answers, the last one for every later request, and records what it got. readme_verify is the
`verify` function of README "Notifications", compiled from the README's own text, so the tests
check the snippet users copy, not a copy of it.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Callable
from typing import Any

from helpers import ROOT

SECRET = b"0123456789abcdef-test-secret"
HANG = "hang"  # an answer: none at all, until the endpoint is closed


def readme_verify() -> Callable[..., bool]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Notifications\n") :].split("\n## ", 1)[0]
    [code] = [block for block in re.findall(r"```python\n(.*?)```", section, re.S) if "def verify(" in block]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (the documented snippet itself)
    return namespace["verify"]


class Endpoint:
    """Answers: an HTTP status, HANG, or a callable given the request handler."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []
        self.released = threading.Event()
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                answer = endpoint.answers.pop(0) if len(endpoint.answers) > 1 else endpoint.answers[0]
                if answer == HANG:
                    endpoint.released.wait(60)
                elif callable(answer):
                    answer(self)
                else:
                    self.send_response(answer)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
