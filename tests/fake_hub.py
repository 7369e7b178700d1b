"""A stand-in for the Hugging Face Hub: just the endpoints huggingface_hub calls to push a model and pull it back.

Push (`HfApi.create_repo` + `upload_folder`):
    POST /api/repos/create                          create a repo (409 when it exists)
    POST /api/validate-yaml                         README.md metadata check
    POST /api/models/{repo}/preupload/{revision}    answers "regular" for every file, so contents come inline
    POST /api/models/{repo}/commit/{revision}       NDJSON: a header line, then base64 files
Pull (`snapshot_download`):
    GET  /api/models/{repo}/revision/{revision}     sha and file list
    GET  /api/models/{repo}/tree/{revision}         file sizes
    HEAD/GET /{repo}/resolve/{revision}/{path}      file metadata and content

A repo belongs to the namespace of the user whose token created it; other namespaces in `orgs` exist but are
not writable (403), unknown namespaces are 404, and a wrong token is 401, as on the Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
REV = r"(?P<rev>[^/]+)"


class FakeHub:
    """Run with `with FakeHub() as hub:`; `hub.url` is the endpoint, `hub.repos[id]` the files of the last commit,
    `hub.commits[id]` the commit headers, `hub.requests` every (method, path, headers) received."""

    def __init__(self, user: str = "me", token: str = "hf_secret_token_0123", orgs: tuple[str, ...] = ("other-org",)):
        self.user, self.token, self.orgs = user, token, set(orgs)
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: dict[str, list[dict]] = {}
        self.requests: list[tuple[str, str, dict]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub._handle(self, "GET")

            def do_HEAD(self):
                hub._handle(self, "HEAD")

            def do_POST(self):
                hub._handle(self, "POST")

            def log_message(self, *args):  # keep pytest output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -------------------------------------------------------------------------------------------- plumbing

    def _routes(self):
        return (
            ("POST", r"/api/repos/create", self._create),
            ("POST", r"/api/validate-yaml", lambda h: self._json(h, {"errors": [], "warnings": []})),
            ("POST", rf"/api/models/{REPO}/preupload/{REV}", self._preupload),
            ("POST", rf"/api/models/{REPO}/commit/{REV}", self._commit),
            ("GET", rf"/api/models/{REPO}/revision/{REV}", self._info),
            ("GET", rf"/api/models/{REPO}/tree/{REV}", self._tree),
            ("GET", rf"/{REPO}/resolve/{REV}/(?P<path>.+)", self._resolve),
            ("HEAD", rf"/{REPO}/resolve/{REV}/(?P<path>.+)", self._resolve),
        )

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = unquote(urlparse(handler.path).path)
        self.requests.append((method, path, dict(handler.headers)))
        length = int(handler.headers.get("Content-Length") or 0)
        handler.body = handler.rfile.read(length) if length else b""
        for verb, pattern, answer in self._routes():
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                handler.match = match
                return answer(handler)
        self._error(handler, 404, "no such endpoint")

    def _json(self, handler, data, status: int = 200, headers: dict | None = None) -> None:
        body = json.dumps(data).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _error(self, handler, status: int, message: str, code: str | None = None) -> None:
        self._json(handler, {"error": message}, status, {"X-Error-Code": code} if code else None)

    def _user(self, handler) -> str | None:
        """The caller's user name, or None after answering 401."""
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            self._error(handler, 401, "Invalid credentials in Authorization header")
            return None
        return self.user

    def _repo(self, handler, write: bool) -> str | None:
        """The repo id of the request, or None after answering 401/404."""
        repo = handler.match["repo"]
        if write and self._user(handler) is None:
            return None
        if repo not in self.repos:
            self._error(handler, 404, "Repository not found", code="RepoNotFound")
            return None
        return repo

    # -------------------------------------------------------------------------------------------- push

    def _create(self, handler) -> None:
        user = self._user(handler)
        if user is None:
            return
        payload = json.loads(handler.body)
        namespace = payload.get("organization") or user
        repo = f"{namespace}/{payload['name']}"
        if namespace in self.orgs:
            return self._error(handler, 403, f"You don't have the rights to create a model under {namespace}")
        if namespace != user:
            return self._error(handler, 404, f"Namespace {namespace} not found")
        if repo in self.repos:
            return self._error(handler, 409, "You already created this model repo")
        self.repos[repo], self.commits[repo] = {}, []
        self._json(handler, {"url": f"{self.url}/{repo}", "name": repo, "id": repo})

    def _preupload(self, handler) -> None:
        if self._repo(handler, write=True) is None:
            return
        files = json.loads(handler.body)["files"]
        self._json(handler, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                       for f in files]})

    def _commit(self, handler) -> None:
        repo = self._repo(handler, write=True)
        if repo is None:
            return
        lines = [json.loads(line) for line in handler.body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = dict(self.repos[repo])
        for line in lines:
            if line["key"] == "file":
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            elif line["key"] != "header":
                return self._error(handler, 400, f"the fake hub does not handle {line['key']!r}")
        self.repos[repo] = files
        self.commits[repo].append(header)
        oid = self._sha(repo)
        self._json(handler, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid})

    # -------------------------------------------------------------------------------------------- pull

    def _sha(self, repo: str) -> str:
        return hashlib.sha1(f"{repo}:{len(self.commits[repo])}".encode()).hexdigest()

    def _info(self, handler) -> None:
        repo = self._repo(handler, write=False)
        if repo is not None:
            siblings = [{"rfilename": p} for p in sorted(self.repos[repo])]
            self._json(handler, {"id": repo, "sha": self._sha(repo), "siblings": siblings, "private": False})

    def _tree(self, handler) -> None:
        repo = self._repo(handler, write=False)
        if repo is not None:
            self._json(handler, [
                {"type": "file", "path": p, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for p, data in sorted(self.repos[repo].items())
            ])

    def _resolve(self, handler) -> None:
        repo = self._repo(handler, write=False)
        if repo is None:
            return
        data = self.repos[repo].get(handler.match["path"])
        if data is None:
            return self._error(handler, 404, "Entry not found", code="EntryNotFound")
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        handler.send_header("X-Repo-Commit", self._sha(repo))
        handler.end_headers()
        if handler.command == "GET":
            handler.wfile.write(data)
