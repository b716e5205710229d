"""A local stand-in for the Hugging Face Hub: just enough HTTP API for ``HfApi.create_repo`` and ``upload_folder``.

It speaks the endpoints huggingface_hub 2.x calls for a folder upload:

* ``POST /api/repos/create``                      -> {"url": ...}; 409 when the repo exists
* ``GET  /api/models/{repo}[/revision/{rev}]``    -> repo info (asked after a refused create)
* ``POST /api/validate-yaml``                     -> parses the README's YAML header; 400 if it is broken
* ``POST /api/models/{repo}/preupload/{rev}``     -> every file "regular": its bytes travel base64 in the
                                                     commit itself, so neither LFS nor Xet storage is needed
* ``POST /api/models/{repo}/commit/{rev}``        -> the NDJSON commit: header, then one line per file

Every request is recorded (method, path, Authorization header, body), and the
files that arrive are kept per repo (path -> bytes). A token listed in
``bad_tokens`` (or no token) gets 401 on every endpoint, as the Hub answers an
invalid token. Anything else gets 404 and lands in ``unknown`` so a test sees it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import yaml

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_INFO = re.compile(rf"^/api/models/{_REPO}(?:/revision/[^/]+)?$")
_PREUPLOAD = re.compile(rf"^/api/models/{_REPO}/preupload/[^/]+$")
_COMMIT = re.compile(rf"^/api/models/{_REPO}/commit/[^/]+$")


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)  # commit summaries, oldest first


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    body: bytes


class HubStandIn:
    """``with HubStandIn(bad_tokens={"hf_bad"}) as hub: HfApi(endpoint=hub.url, token=...)...``"""

    def __init__(self, bad_tokens: set[str] | frozenset[str] = frozenset()) -> None:
        self.bad_tokens = set(bad_tokens)
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.unknown: list[str] = []  # "METHOD path" of requests the stand-in does not implement
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="hub-standin",
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def files(self, repo_id: str) -> dict[str, bytes]:
        return dict(self.repos[repo_id].files)

    @property
    def authorizations(self) -> list[str | None]:
        return [r.authorization for r in self.requests]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- the API: each returns (status, JSON body) --------------------------------------------
    def answer(self, method: str, path: str, authorization: str | None, body: bytes) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(Request(method, path, authorization, body))
            token = authorization.removeprefix("Bearer ").strip() if authorization else None
            if not token or token in self.bad_tokens:
                return 401, {"error": "Invalid credentials in Authorization header"}
            if method == "POST" and path == "/api/repos/create":
                return self._create(json.loads(body))
            if method == "POST" and path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(body)["content"])
            if method == "GET" and (match := _INFO.match(path)):
                return self._info(match["repo"])
            if method == "POST" and (match := _PREUPLOAD.match(path)):
                return self._preupload(match["repo"], json.loads(body))
            if method == "POST" and (match := _COMMIT.match(path)):
                return self._commit(match["repo"], body)
            self.unknown.append(f"{method} {path}")
            return 404, {"error": f"the Hub stand-in does not implement {method} {path}"}

    def _create(self, payload: dict) -> tuple[int, Any]:
        repo_id = f"{payload.get('organization')}/{payload['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        self.repos[repo_id] = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}

    def _validate_yaml(self, content: str) -> tuple[int, Any]:
        match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
        if not match:
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            return 400, {"error": "invalid YAML", "errors": [{"message": str(exc)}]}
        if not isinstance(meta, dict):
            return 400, {"error": "invalid metadata", "errors": [{"message": "the YAML header is not a mapping"}]}
        return 200, {"errors": [], "warnings": []}

    def _info(self, repo_id: str) -> tuple[int, Any]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}
        sha = hashlib.sha1(repr(repo.commits).encode()).hexdigest()
        return 200, {"id": repo_id, "sha": sha, "private": repo.private,
                     "siblings": [{"rfilename": name} for name in sorted(repo.files)]}

    def _preupload(self, repo_id: str, payload: dict) -> tuple[int, Any]:
        if repo_id not in self.repos:
            return 404, {"error": "Repository not found"}
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                 for f in payload["files"]]
        return 200, {"files": files, "commitOid": hashlib.sha1(repo_id.encode()).hexdigest()}

    def _commit(self, repo_id: str, body: bytes) -> tuple[int, Any]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return 400, {"error": "a commit starts with its header line"}
        arrived: dict[str, bytes] = {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file" and value.get("encoding") == "base64":
                arrived[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                repo.files.pop(value["path"], None)
            else:
                return 422, {"error": f"the Hub stand-in only takes regular base64 files, not {line['key']}"}
        repo.files.update(arrived)
        repo.commits.append(lines[0]["value"]["summary"])
        oid = hashlib.sha1(f"{repo_id}{len(repo.commits)}".encode()).hexdigest()
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True,
                     "pullRequestUrl": None}


def _handler_for(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            path = self.path.split("?", 1)[0]
            status, payload = hub.answer(self.command, path, self.headers.get("Authorization"), self._body())
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read hub.requests instead
            pass

    return Handler
