"""A standard-library client for ``glae serve``, and a server in a child process.

Programs, the tests and ``benchmarks/serve_load.py`` talk to the API the same way: a
multipart upload over plain HTTP, every answer JSON (errors too).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from typing import Any


def post_image(url: str, data: bytes, filename: str = "photo.jpg", timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    """``POST`` ``data`` as the multipart field ``file`` to ``url``; returns ``(status, JSON body)``."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}, method="POST")
    return _json_response(request, timeout)


def get_json(url: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """``GET`` ``url``; returns ``(status, JSON body)``."""
    return _json_response(urllib.request.Request(url), timeout)


def _json_response(request: urllib.request.Request, timeout: float) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalServer:
    """``python -m glae serve ARGS`` on a free loopback port, stopped on exit.

    ``with LocalServer(["--model", path]) as server: post_image(server.url + "/api/predict", ...)``.
    Entering waits for ``/health``; a server that exits first raises ``RuntimeError``
    with its output. The output goes to a temporary file, not a pipe: a pipe nobody reads
    fills up with access-log lines and then blocks the server.
    """

    def __init__(self, args: list[str], startup_timeout: float = 180.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "glae", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.startup_timeout = startup_timeout
        self.output = tempfile.TemporaryFile("w+")
        self.process: subprocess.Popen[str] | None = None

    def log(self) -> str:
        """Everything the server printed so far."""
        self.output.seek(0)
        return self.output.read()

    def __enter__(self) -> "LocalServer":
        self.process = subprocess.Popen(self.args, stdout=self.output, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"glae serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if get_json(self.url + "/health", timeout=2)[0] == 200:
                    return self
            except (OSError, ValueError):  # not up yet, or something else answers on the port
                pass
            time.sleep(0.2)
        log = self.log()
        self.__exit__()  # ``with`` never calls it when __enter__ raises
        raise RuntimeError(f"glae serve did not answer /health within {self.startup_timeout:g} s:\n{log}")

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.close()
