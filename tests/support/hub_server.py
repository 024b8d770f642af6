"""A loopback server that speaks the Hugging Face Hub's HTTP API to the real `huggingface_hub` client.

No Hub-compatible server can be installed on the project's machines and none of them reaches
huggingface.co, so Hub publishing is tested against this: a threaded `http.server` on 127.0.0.1 (a
free port), holding an in-memory, git-like store per repo (commits with sha1 oids, branches, tags,
files stored by content under their git blob sha1). Tests point `HF_ENDPOINT` (or `endpoint=`) at
`HubServer.url` and drive the unmodified client over real HTTP.

Endpoints, as huggingface_hub 2.4 calls them (checked against its source: hf_api.py, _commit_api.py,
_upload_pipeline.py, file_download.py, _snapshot_download.py, utils/_pagination.py, utils/_http.py):

    POST   /api/repos/create                                create_repo; 409 body carries `url` (exist_ok reads it)
    POST   /api/validate-yaml                               README.md front matter check (upload_folder / create_commit,
                                                            ModelCard.validate): YAML, and `card_metadata_errors`
    GET    /api/whoami-v2                                   whoami
    POST   /api/{type}s/{ns}/{name}/preupload/{rev}         upload mode per file: always `uploadMode: regular`,
                                                            `shouldIgnore: false`, `oid` (git sha1) of the file on rev
    POST   /api/{type}s/{ns}/{name}/commit/{rev}            NDJSON: header / file (base64) / deletedFile / deletedFolder
    POST   /api/{type}s/{ns}/{name}/branch/{branch}         create_branch (body: optional startingPoint); DELETE too
    POST   /api/{type}s/{ns}/{name}/tag/{rev}               create_tag (body: tag, optional message); DELETE /tag/{tag}
    GET    /api/{type}s/{ns}/{name}/refs                    list_repo_refs
    GET    /api/{type}s/{ns}/{name}[/revision/{rev}]        model_info / repo_info (`sha`, `siblings`)
    GET    /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]     list_repo_tree (recursive, Link-header pagination)
    HEAD   /[{type}s/]{ns}/{name}/resolve/{rev}/{path}      file metadata: ETag, X-Repo-Commit, Content-Length; no body
    GET    /[{type}s/]{ns}/{name}/resolve/{rev}/{path}      file bytes; honours `Range: bytes=N-` (resumed downloads)

Errors carry `X-Error-Code` (RepoNotFound / RevisionNotFound / EntryNotFound) and a JSON `{"error": ...}`
body, which is how `hf_raise_for_status` picks the exception class.

Not modelled, on purpose: LFS and Xet. With `hf_xet` installed (it is), an `lfs` preupload answer makes the
client upload through a Xet CAS server; answering `regular` keeps every byte inside the NDJSON commit, and
the HEAD reply sends no `X-Xet-Hash`, so downloads are plain HTTP GETs. An `lfsFile` commit line is refused.

Fault injection (`HubServer.inject`): fail the next N requests (or all) whose method and path match with a
status (500/503/..., JSON body, optional Retry-After), drop the connection (close the socket without a
response, before or after applying the request), or corrupt the body of a GET. Every request is recorded
(method, path, lower-cased headers, body) so tests can assert what arrived, e.g. the Authorization header.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

DEFAULT_BRANCH = "main"
# What the Hub puts in the first commit of a new repo (abridged: the real file lists ~35 LFS patterns).
INITIAL_GITATTRIBUTES = (
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
)
REPO_TYPES = ("model", "dataset", "space")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REF_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_API_REPO_RE = re.compile(
    r"^/api/(?P<type>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)(?P<rest>/.*)?$"
)
_RESOLVE_RE = re.compile(
    r"^/(?:(?P<type>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"
)
_COMMIT_OID_RE = re.compile(r"^[0-9a-f]{40}$")


# Licence ids the Hub accepts in card metadata (https://huggingface.co/docs/hub/repositories-licenses; abridged).
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0",
    "cc0-1.0", "llama2", "llama3", "llama3.1", "gemma", "openrail", "other", "unknown",
})
_HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")


def card_metadata_errors(meta: dict) -> list[str]:
    """What the Hub's card validator refuses in model-card metadata, for the fields RouterForge writes:
    license (a known id), library_name, tags, datasets and base_model (repo ids), and the model-index schema
    (https://github.com/huggingface/hub-docs/blob/main/modelcard.md: name, results[].task.type,
    results[].dataset.type/name, results[].metrics[].type/value)."""
    errors = []
    if "license" in meta and meta["license"] not in HUB_LICENSES:
        errors.append(f'"license" must be one of the Hub license identifiers, got {meta["license"]!r}')
    if "library_name" in meta and not isinstance(meta["library_name"], str):
        errors.append('"library_name" must be a string')
    for key in ("tags", "datasets", "base_model"):
        value = meta.get(key)
        if value is None:
            continue
        items = [value] if isinstance(value, str) and key != "tags" else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            errors.append(f'"{key}" must be a list of strings')
        elif key != "tags" and (bad := [v for v in items if not _HUB_ID_RE.match(v)]):
            errors.append(f'"{key}" must hold repo ids, got {bad}')
    index = meta.get("model-index")
    if index is None:
        return errors
    if not isinstance(index, list):
        return [*errors, '"model-index" must be an array']
    for i, model in enumerate(index):
        where = f"model-index[{i}]"
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append(f'"{where}.name" is required')
            continue
        results = model.get("results")
        if not isinstance(results, list):
            errors.append(f'"{where}.results" must be an array')
            continue
        for j, result in enumerate(results):
            at = f"{where}.results[{j}]"
            task, dataset, metrics = (result.get(k) if isinstance(result, dict) else None
                                      for k in ("task", "dataset", "metrics"))
            if not (isinstance(task, dict) and isinstance(task.get("type"), str)):
                errors.append(f'"{at}.task.type" is required')
            if not (isinstance(dataset, dict) and all(isinstance(dataset.get(k), str) for k in ("type", "name"))):
                errors.append(f'"{at}.dataset.type" and "{at}.dataset.name" are required')
            if not isinstance(metrics, list) or not metrics:
                errors.append(f'"{at}.metrics" must be a non-empty array')
                continue
            for k, metric in enumerate(metrics):
                if not (isinstance(metric, dict) and isinstance(metric.get("type"), str) and "value" in metric):
                    errors.append(f'"{at}.metrics[{k}]" needs "type" and "value"')
    return errors


def git_blob_oid(content: bytes) -> str:
    """The git blob sha1 of `content`: what the Hub returns as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now_iso() -> str:
    # The client's parse_datetime expects '%Y-%m-%dT%H:%M:%S.%fZ'.
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ---------------------------------------------------------------------------------------------- store


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, str]  # path -> git blob oid
    title: str
    description: str
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tag_messages: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        """Branch, tag or full commit oid -> commit oid (None if unknown)."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        if _COMMIT_OID_RE.fullmatch(revision) and revision in self.commits:
            return revision
        return None


@dataclass
class RecordedRequest:
    method: str
    path: str  # path and query, as sent
    headers: dict[str, str]  # lower-cased names
    body: bytes
    status: int | None = None  # None: the connection was dropped without a response

    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class Fault:
    """Fail requests whose method and path match; `times=None` fails every matching request."""

    path_pattern: re.Pattern
    method: str | None
    times: int | None
    action: str  # "status" | "drop" | "drop_after" | "corrupt"
    status: int = 503
    retry_after_s: int | None = None
    html_body: bool = False
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return (self.method is None or self.method == method) and self.path_pattern.search(path) is not None


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload, headers: dict[str, str] | None = None) -> _Response:
        return cls(
            status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
        )

    @classmethod
    def error(
        cls, status: int, message: str, code: str | None = None, extra: dict | None = None
    ) -> _Response:
        headers = {"X-Error-Message": message}
        if code is not None:
            headers["X-Error-Code"] = code
        return cls.json(status, {"error": message, **(extra or {})}, headers)


class _HttpError(Exception):
    def __init__(self, response: _Response):
        super().__init__(response.status)
        self.response = response


# ---------------------------------------------------------------------------------------------- server


class HubServer:
    """In-memory Hub on 127.0.0.1. `tokens` maps a valid bearer token to its user name."""

    def __init__(self, tokens: dict[str, str] | None = None, tree_page_size: int = 1000):
        self.tokens = dict(tokens or {})
        self.tree_page_size = tree_page_size
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}  # git blob oid -> content (content-addressed, shared by all repos)
        self.requests: list[RecordedRequest] = []
        self.unhandled: list[
            str
        ] = []  # "METHOD path" of requests no route matched (a client the server does not know)
        self.faults: list[Fault] = []
        self._lock = threading.RLock()
        self._commit_counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> HubServer:
        handler = type("BoundHubHandler", (_HubHandler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- fault injection

    def inject(
        self,
        path_pattern: str,
        *,
        method: str | None = None,
        times: int | None = 1,
        status: int = 503,
        drop: bool = False,
        after_handling: bool = False,
        corrupt: bool = False,
        retry_after_s: int | None = None,
        html_body: bool = False,
    ) -> Fault:
        """Fail the next `times` requests (all if None) matching `method` and the regex `path_pattern`.

        Default: answer `status` with a JSON error body (`html_body=True`: an HTML page, as a gateway in front of
        the Hub sends), with `Retry-After: retry_after_s` if given. `drop=True`: close the socket without any response,
        before applying the request or, with `after_handling=True`, after applying it (a lost response).
        `corrupt=True`: serve the normal response with the first body byte flipped (same length, same ETag).
        """
        action = "corrupt" if corrupt else ("drop_after" if after_handling else "drop") if drop else "status"
        fault = Fault(re.compile(path_pattern), method, times, action, status, retry_after_s, html_body)
        with self._lock:
            self.faults.append(fault)
        return fault

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None

    # -- seeding and inspection helpers for tests

    def seed_repo(self, repo_id: str, files: dict[str, bytes], repo_type: str = "dataset",
                  title: str = "Upload files", tag: str | None = None) -> str:
        """Commit `files` to `main` of a repo (created as the Hub creates one if missing); return the commit oid.

        For repos whose content a test only reads, e.g. a dataset repo in the Hub's layout (README.md with a
        `configs:` block, `data/train-00000-of-00001.parquet`): the same store the HTTP commit endpoint
        writes, without a client round trip per test.
        """
        with self._lock:
            repo = self.repos.get((repo_type, repo_id))
            if repo is None:
                repo = Repo(repo_type, repo_id, False, _now_iso())
                initial = {".gitattributes": self._store_blob(INITIAL_GITATTRIBUTES)}
                repo.branches[DEFAULT_BRANCH] = self._new_commit(repo, None, initial, "initial commit", "")
                self.repos[(repo_type, repo_id)] = repo
            head = repo.branches[DEFAULT_BRANCH]
            tree = dict(repo.commits[head].files)
            tree.update({path: self._store_blob(content) for path, content in files.items()})
            oid = self._new_commit(repo, head, tree, title, "")
            repo.branches[DEFAULT_BRANCH] = oid
            if tag is not None:
                repo.tags[tag] = oid
            return oid

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self._lock:
            return self.repos[(repo_type, repo_id)]

    def refs(self, repo_id: str, repo_type: str = "model") -> dict[str, dict[str, str]]:
        with self._lock:
            repo = self.repos.get((repo_type, repo_id))
            if repo is None:
                return {"branches": {}, "tags": {}}
            return {"branches": dict(repo.branches), "tags": dict(repo.tags)}

    def files_at(self, repo_id: str, revision: str, repo_type: str = "model") -> dict[str, bytes]:
        with self._lock:
            repo = self.repos[(repo_type, repo_id)]
            oid = repo.resolve(revision)
            assert oid is not None, f"unknown revision {revision}"
            return {path: self.blobs[blob] for path, blob in repo.commits[oid].files.items()}

    def requests_matching(self, method: str | None = None, path_pattern: str = "") -> list[RecordedRequest]:
        pattern = re.compile(path_pattern)
        with self._lock:
            return [
                r for r in self.requests if (method is None or r.method == method) and pattern.search(r.path)
            ]

    def stored_texts(self) -> Iterator[bytes]:
        """Everything the server persisted: file contents, commit titles/descriptions, tag messages."""
        with self._lock:
            yield from self.blobs.values()
            for repo in self.repos.values():
                for commit in repo.commits.values():
                    yield commit.title.encode() + b"\n" + commit.description.encode()
                for message in repo.tag_messages.values():
                    yield message.encode()

    # -- store operations (called with the lock held)

    def _new_commit(
        self, repo: Repo, parent: str | None, files: dict[str, str], title: str, description: str
    ) -> str:
        self._commit_counter += 1
        canonical = json.dumps([parent, sorted(files.items()), title, description, self._commit_counter])
        oid = hashlib.sha1(canonical.encode()).hexdigest()
        repo.commits[oid] = Commit(oid, parent, dict(files), title, description, _now_iso())
        return oid

    def _store_blob(self, content: bytes) -> str:
        oid = git_blob_oid(content)
        self.blobs[oid] = content
        return oid

    def repo_url(self, repo: Repo) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.url}/{prefix}{repo.repo_id}"


# ---------------------------------------------------------------------------------------------- handler


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub: the client's pooled connections get reused
    hub: HubServer  # set on the per-server subclass

    def log_message(self, format, *args) -> None:  # noqa: A002 - silence the default stderr access log
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # -- plumbing

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        # Read the whole request first: closing a socket with unread input sends RST instead of FIN, and a
        # dropped connection must look like "server disconnected without a response", deterministically.
        body = self._read_body()
        record = RecordedRequest(method, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        with hub._lock:
            hub.requests.append(record)
        fault = hub._take_fault(method, urlsplit(self.path).path)
        if fault is not None and fault.action == "drop":
            self.close_connection = True
            return
        if fault is not None and fault.action == "status":
            if fault.html_body:
                page = f"<html><body><h1>{fault.status} Bad Gateway</h1></body></html>".encode()
                response = _Response(fault.status, page, {"Content-Type": "text/html"})
            else:
                response = _Response.json(fault.status, {"error": f"injected HTTP {fault.status}"})
            if fault.retry_after_s is not None:
                response.headers["Retry-After"] = str(fault.retry_after_s)
        else:
            try:
                response = self._route(method, body)
            except _HttpError as err:
                response = err.response
        if fault is not None and fault.action == "drop_after":
            self.close_connection = True
            return
        if fault is not None and fault.action == "corrupt" and response.body:
            response.body = bytes([response.body[0] ^ 0xFF]) + response.body[1:]
        record.status = response.status
        self._send(response, send_body=method != "HEAD")

    def _send(self, response: _Response, send_body: bool) -> None:
        self.send_response(response.status)
        headers = {"Content-Length": str(len(response.body)), **response.headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if send_body and response.body:
            self.wfile.write(response.body)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return self.hub.tokens.get(auth[len("Bearer ") :])
        return None

    def _require_user(self) -> str:
        user = self._user()
        if user is None:
            raise _HttpError(_Response.error(401, "Invalid credentials in Authorization header"))
        return user

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and self._user() is None):
            raise _HttpError(_Response.error(404, "Repository not found", "RepoNotFound"))
        return repo

    def _resolve(self, repo: Repo, revision: str) -> str:
        oid = repo.resolve(revision)
        if oid is None:
            raise _HttpError(_Response.error(404, f"Invalid rev id: {revision}", "RevisionNotFound"))
        return oid

    @staticmethod
    def _json(body: bytes) -> dict:
        try:
            data = json.loads(body or b"{}")
        except json.JSONDecodeError as err:
            raise _HttpError(_Response.error(400, f"invalid JSON body: {err}")) from err
        if not isinstance(data, dict):
            raise _HttpError(_Response.error(400, "JSON body must be an object"))
        return data

    # -- routing

    def _route(self, method: str, body: bytes) -> _Response:
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        hub = self.hub
        with hub._lock:
            if path == "/api/repos/create" and method == "POST":
                return self._create_repo(body)
            if path == "/api/validate-yaml" and method == "POST":
                return self._validate_yaml(body)
            if path == "/api/whoami-v2" and method == "GET":
                user = self._require_user()
                return _Response.json(200, {"type": "user", "name": user, "auth": {"type": "access_token"}})
            m = _API_REPO_RE.match(path)
            if m is not None:
                repo_type = m["type"][:-1]
                repo_id = f"{m['ns']}/{m['name']}"
                # Each segment after the repo id was quoted with safe="" by the client: split, then unquote.
                rest = [unquote(seg) for seg in (m["rest"] or "").split("/")[1:]]
                response = self._repo_api(method, repo_type, repo_id, rest, query, body)
                if response is not None:
                    return response
            m = _RESOLVE_RE.match(path)
            if m is not None and method in ("GET", "HEAD"):
                repo_type = m["type"][:-1] if m["type"] else "model"
                filename = "/".join(unquote(seg) for seg in m["file"].split("/"))
                return self._resolve_file(repo_type, f"{m['ns']}/{m['name']}", unquote(m["rev"]), filename)
            hub.unhandled.append(f"{method} {self.path}")
            return _Response.error(404, f"not implemented by the loopback hub: {method} {path}")

    def _repo_api(self, method, repo_type, repo_id, rest, query, body) -> _Response | None:
        head = rest[0] if rest else ""
        if method == "GET" and head == "":
            return self._repo_info(repo_type, repo_id, DEFAULT_BRANCH)
        if method == "GET" and head == "revision" and len(rest) == 2:
            return self._repo_info(repo_type, repo_id, rest[1])
        if method == "GET" and head == "refs" and len(rest) == 1:
            return self._refs(repo_type, repo_id, query)
        if method == "GET" and head == "tree" and len(rest) >= 2:
            return self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]), query)
        if method == "POST" and head == "preupload" and len(rest) == 2:
            return self._preupload(repo_type, repo_id, rest[1], body)
        if method == "POST" and head == "commit" and len(rest) == 2:
            return self._commit(repo_type, repo_id, rest[1], query, body)
        if head == "branch" and len(rest) == 2 and method in ("POST", "DELETE"):
            return self._branch(method, repo_type, repo_id, rest[1], body)
        if head == "tag" and len(rest) == 2 and method in ("POST", "DELETE"):
            return self._tag(method, repo_type, repo_id, rest[1], body)
        return None

    # -- endpoints

    def _create_repo(self, body: bytes) -> _Response:
        user = self._require_user()
        data = self._json(body)
        name, organization = data.get("name"), data.get("organization") or user
        repo_type = data.get("type") or "model"
        if repo_type not in REPO_TYPES:
            return _Response.error(400, f"invalid repo type {repo_type!r}")
        if not isinstance(name, str) or not _NAME_RE.match(name) or not _NAME_RE.match(organization):
            return _Response.error(400, f"invalid repo name {organization}/{name}")
        repo_id = f"{organization}/{name}"
        existing = self.hub.repos.get((repo_type, repo_id))
        if existing is not None:
            return _Response.json(
                409,
                {"error": f"You already created this {repo_type} repo", "url": self.hub.repo_url(existing)},
            )
        repo = Repo(
            repo_type, repo_id, data.get("visibility") == "private" or bool(data.get("private")), _now_iso()
        )
        initial = {".gitattributes": self.hub._store_blob(INITIAL_GITATTRIBUTES)}
        repo.branches[DEFAULT_BRANCH] = self.hub._new_commit(repo, None, initial, "initial commit", "")
        self.hub.repos[(repo_type, repo_id)] = repo
        return _Response.json(
            200,
            {
                "url": self.hub.repo_url(repo),
                "name": repo_id,
                "id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            },
        )

    def _validate_yaml(self, body: bytes) -> _Response:
        content = self._json(body).get("content", "")
        lines = content.splitlines()
        if not lines or lines[0].strip() != "---":
            return _Response.json(
                200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
            )
        try:
            end = next(i for i, line in enumerate(lines[1:], start=1) if line.strip() == "---")
        except StopIteration:
            return _Response.json(400, {"errors": [{"message": "unterminated YAML front matter"}]})
        try:
            meta = yaml.safe_load("\n".join(lines[1:end]))
        except yaml.YAMLError as err:
            return _Response.json(400, {"errors": [{"message": f"invalid YAML: {err}"}]})
        if meta is not None and not isinstance(meta, dict):
            return _Response.json(400, {"errors": [{"message": "YAML metadata must be a mapping"}]})
        if errors := card_metadata_errors(meta or {}):
            return _Response.json(400, {"errors": [{"message": e} for e in errors]})
        return _Response.json(200, {"errors": [], "warnings": []})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self._repo(repo_type, repo_id)
        commit = repo.commits[self._resolve(repo, revision)]
        namespace = repo_id.split("/")[0]
        return _Response.json(
            200,
            {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": namespace,
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            },
        )

    def _refs(self, repo_type: str, repo_id: str, query: dict) -> _Response:
        repo = self._repo(repo_type, repo_id)

        def refs(kind: str, items: dict[str, str]) -> list[dict]:
            return [
                {"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid}
                for n, oid in sorted(items.items())
            ]

        payload = {"branches": refs("heads", repo.branches), "converts": [], "tags": refs("tags", repo.tags)}
        if query.get("include_prs"):
            payload["pullRequests"] = []
        return _Response.json(200, payload)

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str, query: dict) -> _Response:
        repo = self._repo(repo_type, repo_id)
        oid = self._resolve(repo, revision)
        files = repo.commits[oid].files
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        below = {p: b for p, b in files.items() if p.startswith(prefix)}
        if prefix and not below:
            return _Response.error(404, f"{path} does not exist on {revision}", "EntryNotFound")
        entries: dict[str, dict] = {}
        for file_path, blob in sorted(below.items()):
            parts = file_path[len(prefix) :].split("/")
            depth_range = range(1, len(parts)) if recursive else range(1, min(2, len(parts)))
            for depth in depth_range:  # directories on the way to the file
                directory = prefix + "/".join(parts[:depth])
                dir_oid = hashlib.sha1(("tree:" + oid + directory).encode()).hexdigest()
                entries.setdefault(
                    directory, {"type": "directory", "oid": dir_oid, "size": 0, "path": directory}
                )
            if recursive or len(parts) == 1:
                entries[file_path] = {
                    "type": "file",
                    "oid": blob,
                    "size": len(self.hub.blobs[blob]),
                    "path": file_path,
                }
        listing = [entries[k] for k in sorted(entries)]
        start = int(query.get("cursor", ["0"])[0])
        page = listing[start : start + self.hub.tree_page_size]
        headers = {}
        if start + self.hub.tree_page_size < len(listing):
            next_query = f"recursive={str(recursive).lower()}&cursor={start + self.hub.tree_page_size}"
            headers["Link"] = f'<{self.hub.url}{urlsplit(self.path).path}?{next_query}>; rel="next"'
        return _Response.json(200, page, headers)

    def _writable_branch(self, repo: Repo, revision: str) -> str:
        if revision not in repo.branches:
            raise _HttpError(
                _Response.error(
                    404, f"Invalid rev id: {revision} (commits go to a branch)", "RevisionNotFound"
                )
            )
        return revision

    def _preupload(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> _Response:
        self._require_user()
        repo = self._repo(repo_type, repo_id)
        files = repo.commits[repo.branches[self._writable_branch(repo, revision)]].files
        answer = []
        for item in self._json(body).get("files", []):
            entry = {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False}
            if item["path"] in files:
                entry["oid"] = files[item["path"]]
            answer.append(entry)
        return _Response.json(200, {"files": answer, "commitOid": repo.branches[revision]})

    def _commit(self, repo_type: str, repo_id: str, revision: str, query: dict, body: bytes) -> _Response:
        self._require_user()
        repo = self._repo(repo_type, repo_id)
        branch = self._writable_branch(repo, revision)
        if query.get("create_pr"):
            return _Response.error(400, "create_pr is not supported by the loopback hub")
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/x-ndjson":
            return _Response.error(400, "commit payload must be application/x-ndjson")
        try:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return _Response.error(400, f"malformed NDJSON commit payload: {err}")
        if not lines or lines[0].get("key") != "header":
            return _Response.error(400, "first NDJSON line must be the commit header")
        header = lines[0]["value"]
        head = repo.branches[branch]
        if header.get("parentCommit") not in (None, head):
            return _Response.error(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[head].files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "")
            if (
                not path
                or path.startswith("/")
                or ".." in path.split("/")
                or path.split("/")[0] in (".git", ".cache")
            ):
                return _Response.error(400, f"invalid path in commit: {path!r}")
            if key == "file":
                if value.get("encoding") != "base64":
                    return _Response.error(400, f"unsupported encoding {value.get('encoding')!r}")
                files[path] = self.hub._store_blob(base64.b64decode(value["content"], validate=True))
            elif key == "deletedFile":
                if path not in files:
                    return _Response.error(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                folder = path.rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(folder)}
            elif key == "lfsFile":
                return _Response.error(
                    400, "the loopback hub only takes regular uploads (preupload answers 'regular')"
                )
            else:
                return _Response.error(400, f"unknown commit operation {key!r}")
        oid = self.hub._new_commit(
            repo, head, files, header.get("summary", ""), header.get("description", "")
        )
        repo.branches[branch] = oid
        return _Response.json(
            200,
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self.hub.repo_url(repo)}/commit/{oid}",
                "hookOutput": "",
            },
        )

    def _branch(self, method: str, repo_type: str, repo_id: str, branch: str, body: bytes) -> _Response:
        self._require_user()
        repo = self._repo(repo_type, repo_id)
        if method == "DELETE":
            if branch not in repo.branches:
                return _Response.error(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if branch == DEFAULT_BRANCH:
                return _Response.error(403, "cannot delete the default branch")
            del repo.branches[branch]
            return _Response.json(200, {})
        if not _REF_NAME_RE.match(branch) or branch in repo.tags:
            return _Response.error(400, f"invalid branch name {branch!r}")
        if branch in repo.branches:
            return _Response.error(409, "Reference already exists")
        start = self._json(body).get("startingPoint") or DEFAULT_BRANCH
        repo.branches[branch] = self._resolve(repo, start)
        return _Response.json(200, {})

    def _tag(self, method: str, repo_type: str, repo_id: str, revision: str, body: bytes) -> _Response:
        self._require_user()
        repo = self._repo(repo_type, repo_id)
        if method == "DELETE":  # DELETE /tag/{tag}
            if revision not in repo.tags:
                return _Response.error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            del repo.tags[revision]
            repo.tag_messages.pop(revision, None)
            return _Response.json(200, {})
        data = self._json(body)
        tag = data.get("tag")
        if not isinstance(tag, str) or not _REF_NAME_RE.match(tag) or tag in repo.branches:
            return _Response.error(400, f"invalid tag name {tag!r}")
        if tag in repo.tags:
            return _Response.error(409, "Tag already exists")
        repo.tags[tag] = self._resolve(repo, revision)
        if data.get("message"):
            repo.tag_messages[tag] = data["message"]
        return _Response.json(200, {})

    def _resolve_file(self, repo_type: str, repo_id: str, revision: str, filename: str) -> _Response:
        repo = self._repo(repo_type, repo_id)
        oid = self._resolve(repo, revision)
        blob = repo.commits[oid].files.get(filename)
        if blob is None:
            return _Response(
                404,
                b'{"error": "Entry not found"}',
                {"Content-Type": "application/json", "X-Error-Code": "EntryNotFound", "X-Repo-Commit": oid},
            )
        content = self.hub.blobs[blob]
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{blob}"',
            "X-Repo-Commit": oid,
            "Accept-Ranges": "bytes",
        }
        range_header = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
        if m is not None:
            start = int(m[1])
            end = int(m[2]) if m[2] else len(content) - 1
            if start >= len(content) or end < start:
                return _Response(416, b"", {"Content-Range": f"bytes */{len(content)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            return _Response(206, content[start : end + 1], headers)
        return _Response(200, content, headers)
