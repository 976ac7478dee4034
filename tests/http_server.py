"""A loopback HTTP file server for tests of remote imagery: range requests, byte counting and network failures.

:class:`FileServer` serves a folder on 127.0.0.1 (a free port), as a static host or an object store does for COGs
and STAC Items: ``GET`` and ``HEAD``, ``Range`` requests answered with ``206 Partial Content`` (several ranges in
one request as ``multipart/byteranges``), ``404`` for a missing file. It counts requests and body bytes sent, so
a test can check how much of a file a read fetched, and it can fail the ways networks do:

- ``server.not_found = {"a.tif"}``: answer 404 for those files even though they exist;
- ``server.silent = True``: accept connections and read requests but never answer (a hung server, or a firewall
  that swallows packets);
- ``server.latency_s = 0.02``: wait that long before answering each request (a network's round trip; the
  loopback has none, so counting requests is otherwise free);
- ``server.drop_after_bytes = n``: once ``n`` body bytes have been sent in all, cut every response (the
  connection is closed mid-body, without the rest of the bytes); set it back to ``None`` to restore the network,
  e.g. before a ``--resume`` run.

The server runs in a child process, not a thread: GDAL holds the GIL while it opens a dataset (rasterio does
not release it there), so a server thread in the test's process would never answer GDAL's first request. The
test process talks to the child over the same port, on ``/_control`` (never counted, never silent).

The :func:`http_server` fixture serves ``tmp_path / "www"``; tests write files under ``server.root``.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"(\d*)-(\d*)")
_CONTROL = "_control"


class FileServer:
    """Serves the files under ``root`` on ``http://127.0.0.1:<port>/`` from a child process (see the module
    docstring). Use as a context manager, or :meth:`start` and :meth:`stop`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> FileServer:
        self._proc = subprocess.Popen([sys.executable, __file__, str(self.root)], stdout=subprocess.PIPE,
                                      text=True)
        line = self._proc.stdout.readline()  # the child prints its port once it listens
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"test HTTP server did not start: {line!r}")
        self.port = int(line)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()  # also ends handlers that a silent server holds open
            self._proc.wait(10)
            self._proc.stdout.close()
            self._proc = None

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, name: str = "") -> str:
        """The URL of ``name`` (a path relative to ``root``, with forward slashes)."""
        return f"{self.base_url}/{name.lstrip('/')}"

    # -- counters and failure modes (kept in the child) ------------------------------------------------------
    def _control(self, change: dict | None = None) -> dict:
        data = None if change is None else json.dumps(change).encode()
        with urllib.request.urlopen(urllib.request.Request(self.url(_CONTROL), data=data), timeout=10) as r:
            return json.loads(r.read())

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent since the start or the last :meth:`reset_counts` (headers not counted)."""
        return self._control()["bytes"]

    @property
    def log(self) -> list[dict]:
        """Requests since the start or the last :meth:`reset_counts`, in order: dicts with ``method``, ``path``,
        ``range`` (the Range header or None), ``status`` (0: left unanswered) and ``sent`` (body bytes)."""
        return self._control()["log"]

    @property
    def requests(self) -> int:
        """How many requests came (answered, cut or left unanswered) since the start or the last reset."""
        return len(self.log)

    def reset_counts(self) -> None:
        self._control({"reset": True})

    @property
    def silent(self) -> bool:
        return self._control()["silent"]

    @silent.setter
    def silent(self, value: bool) -> None:
        self._control({"silent": bool(value)})

    @property
    def drop_after_bytes(self) -> int | None:
        return self._control()["drop_after_bytes"]

    @drop_after_bytes.setter
    def drop_after_bytes(self, value: int | None) -> None:
        self._control({"drop_after_bytes": value})

    @property
    def latency_s(self) -> float:
        return self._control()["latency_s"]

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        self._control({"latency_s": float(value)})

    @property
    def not_found(self) -> set[str]:
        return set(self._control()["not_found"])

    @not_found.setter
    def not_found(self, names: Iterable[str]) -> None:
        self._control({"not_found": sorted(names)})


class _State:
    """What the child process keeps: failure modes and counters, shared by its handler threads."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.lock = threading.Lock()
        self.not_found: set[str] = set()
        self.silent = False
        self.drop_after_bytes: int | None = None
        self.latency_s = 0.0
        self.bytes = 0
        self.log: list[dict] = []

    def record(self, method: str, path: str, rng: str | None, status: int, sent: int) -> None:
        with self.lock:
            self.log.append({"method": method, "path": path, "range": rng, "status": status, "sent": sent})

    def allowance(self, n: int) -> int:
        """How many of ``n`` body bytes may be sent before the connection is cut; counts them as sent."""
        with self.lock:
            ok = n if self.drop_after_bytes is None else max(0, min(n, self.drop_after_bytes - self.bytes))
            self.bytes += ok
            return ok

    def control(self, change: dict | None) -> dict:
        with self.lock:
            for key, value in (change or {}).items():
                if key == "reset":
                    self.bytes, self.log = 0, []
                elif key == "not_found":
                    self.not_found = set(value)
                elif key in ("silent", "drop_after_bytes", "latency_s"):
                    setattr(self, key, value)
            return {"bytes": self.bytes, "log": list(self.log), "silent": self.silent,
                    "drop_after_bytes": self.drop_after_bytes, "latency_s": self.latency_s,
                    "not_found": sorted(self.not_found)}


def _handler_for(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as GDAL's curl expects of a file host

        def log_message(self, format, *args) -> None:  # quiet: tests read server.log instead
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def do_POST(self) -> None:
            change = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            self._answer_control(change)

        def _answer_control(self, change: dict | None) -> None:
            body = json.dumps(state.control(change)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path).lstrip("/")
            if path == _CONTROL:
                self._answer_control(None)
                return
            rng = self.headers.get("Range")
            if state.silent:
                state.record(self.command, path, rng, 0, 0)
                threading.Event().wait()  # until the process is killed
            if state.latency_s:
                time.sleep(state.latency_s)
            file = (state.root / path).resolve()
            if path in state.not_found or not file.is_file() or state.root not in file.parents:
                self._send(404, path, rng, b"", {}, length=0)
                return
            size = file.stat().st_size
            parts = _parse_ranges(rng, size) if rng else None
            if parts == []:
                self._send(416, path, rng, b"", {"Content-Range": f"bytes */{size}"}, length=0)
            elif parts is None:
                self._send(200, path, rng, file.read_bytes() if body else b"", {"Content-Type": _content_type(path)},
                           length=size)
            elif len(parts) == 1:
                a, b = parts[0]
                self._send(206, path, rng, _read(file, a, b) if body else b"",
                           {"Content-Type": _content_type(path), "Content-Range": f"bytes {a}-{b}/{size}"},
                           length=b - a + 1)
            else:
                boundary = "landcover-test-boundary"
                out = b"".join(
                    f"\r\n--{boundary}\r\nContent-Type: {_content_type(path)}\r\n"
                    f"Content-Range: bytes {a}-{b}/{size}\r\n\r\n".encode() + _read(file, a, b)
                    for a, b in parts) + f"\r\n--{boundary}--\r\n".encode()
                self._send(206, path, rng, out if body else b"",
                           {"Content-Type": f"multipart/byteranges; boundary={boundary}"}, length=len(out))

        def _send(self, status: int, path: str, rng: str | None, payload: bytes, headers: dict,
                  length: int) -> None:
            self.send_response(status)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            ok = state.allowance(len(payload))
            with contextlib.suppress(OSError):  # the client may go away mid-body; that is its business
                self.wfile.write(payload[:ok])
                self.wfile.flush()
            state.record(self.command, path, rng, status, ok)
            if ok < len(payload):
                # the network failed: close without the rest of the body
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)

    return Handler


def _parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """Inclusive (first, last) byte ranges of a ``Range: bytes=...`` header clipped to the file; ``None`` for a
    header that is not a byte range (served whole, as RFC 9110 allows), ``[]`` when no range is satisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    parts = []
    for item in spec.split(","):
        m = _RANGE.fullmatch(item.strip())
        if not m or m.groups() == ("", ""):
            return None
        first, last = m.groups()
        if first == "":  # suffix range: the last N bytes
            a, b = max(0, size - int(last)), size - 1
        else:
            a, b = int(first), min(size - 1, int(last) if last else size - 1)
        if a <= b and a < size:
            parts.append((a, b))
    return parts


def _read(file: Path, first: int, last: int) -> bytes:
    """Bytes ``first`` to ``last`` (inclusive) of ``file``: only what a range asks for is read from disk."""
    with open(file, "rb") as f:
        f.seek(first)
        return f.read(last - first + 1)


def _content_type(path: str) -> str:
    if path.endswith((".tif", ".tiff")):
        return "image/tiff"
    if path.endswith(".json"):
        return "application/json"
    return "application/octet-stream"


def _serve_forever(root: str) -> None:
    """The child process: serve ``root`` and print the port once listening."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(_State(Path(root))))
    httpd.daemon_threads = True
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever(poll_interval=0.05)


try:  # the fixture for tests; the benchmark and the child process import this module without pytest
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    @pytest.fixture
    def http_server(tmp_path) -> Iterator[FileServer]:
        """A :class:`FileServer` on 127.0.0.1 serving ``tmp_path / "www"`` for the test, stopped after it."""
        with FileServer(tmp_path / "www") as server:
            yield server


if __name__ == "__main__":
    _serve_forever(sys.argv[1])
