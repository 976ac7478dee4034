"""What the service lets in: the write token, paths confined to the data roots, names, request sizes.

- Writes (install, uninstall, submit, cancel) need the service's token as ``Authorization: Bearer <token>`` (or
  ``X-Landcover-Token``), compared in constant time. Reads are open to whoever reaches the port: the service
  binds to loopback unless told otherwise.
- A path the client names on the server's disk is read only if it lies under a ``--data-root`` once every
  symlink is resolved: ``..`` is refused outright, a relative path is taken under the first root, an absolute
  path or a symlink that leads outside every root is refused.
- Request bodies are bounded (JSON small, model uploads by ``--max-upload-mb``) before they are read whole.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class ApiError(Exception):
    """A request the service refuses: HTTP ``status`` and a one-line ``message`` naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())


#: names of installed models: what a URL path segment and a folder name can both hold safely
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: URL schemes imagery may be read from (anything else, e.g. file:// or /vsi…, could read the server's disk)
URL_SCHEMES = ("http://", "https://", "s3://", "gs://")


def check_name(name: str, what: str = "model name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.endswith((".", ".partial")):
        raise ApiError(400, f"{what} {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                            "or digit")
    return name


def check_token(expected: str, header_auth: str | None, header_token: str | None) -> None:
    """Refuse a write without the service's token (401) or with another one (403)."""
    given = header_token
    if given is None and header_auth:
        scheme, _, value = header_auth.partition(" ")
        given = value.strip() if scheme.lower() == "bearer" else None
    if not given:
        raise ApiError(401, "this request changes the service: send its token as 'Authorization: Bearer <token>' "
                            "(landcover serve printed it, or set it with --token / LANDCOVER_TOKEN)")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8")):
        raise ApiError(403, "wrong token: send the token the service was started with")


@dataclass(frozen=True)
class DataRoots:
    """The folders whose files clients may name (resolved once, symlinks and all)."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, folders: Sequence[str | os.PathLike]) -> DataRoots:
        return cls(tuple(Path(f).resolve(strict=True) for f in folders))

    def resolve(self, given: str, what: str = "path") -> str:
        """The real path of ``given`` (a file or folder that exists under a data root), or an ApiError."""
        if not isinstance(given, str) or not given or "\x00" in given:
            raise ApiError(400, f"{what} {given!r}: give a path under the service's data root")
        if not self.roots:
            raise ApiError(403, f"{what} {given!r}: the service reads no files of its own (start it with "
                                "--data-root DIR)")
        parts = given.replace("\\", "/").split("/")
        if ".." in parts:
            raise ApiError(403, f"{what} {given!r}: '..' is not allowed; give a path under the data root")
        if given.startswith(("/vsi", "~")) or "://" in given:
            raise ApiError(403, f"{what} {given!r}: not a path under the data root")
        candidate = Path(given) if os.path.isabs(given) else self.roots[0] / given
        real = candidate.resolve(strict=False)  # every symlink followed: a link out of the root is refused
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            raise ApiError(403, f"{what} {given!r}: outside the service's data root "
                                f"({', '.join(str(r) for r in self.roots)})")
        if not real.exists():
            raise ApiError(404, f"{what} {given!r}: no such file under the data root")
        return str(real)

    def inside(self, real_path: str) -> bool:
        """Whether an already resolved local path lies under a root (e.g. a STAC Item's asset)."""
        real = Path(real_path).resolve(strict=False)
        return any(real == root or real.is_relative_to(root) for root in self.roots)


def is_url(value: str) -> bool:
    return isinstance(value, str) and value.lower().startswith(URL_SCHEMES)


class BodyLimit:
    """ASGI middleware: request bodies over ``limit`` bytes (``upload_limit`` for ``upload_paths``) get a 413
    before the app reads them whole; a body without Content-Length is counted as it streams."""

    def __init__(self, app, limit: int, upload_limit: int, upload_prefixes: tuple[str, ...]):
        self.app, self.limit, self.upload_limit, self.prefixes = app, limit, upload_limit, upload_prefixes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = scope["method"] == "POST" and scope["path"].startswith(self.prefixes) and any(
            k == b"content-type" and not v.startswith(b"application/json") for k, v in scope["headers"])
        limit = self.upload_limit if upload else self.limit
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    return await _json_error(send, 400, "Content-Length is not a number")
                if size > limit:
                    return await _json_error(send, 413, f"request body of {size} bytes is over the limit of "
                                                        f"{limit} bytes")
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, f"request body is over the limit of {limit} bytes")
            return message

        return await self.app(scope, counted, send)


async def _json_error(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
