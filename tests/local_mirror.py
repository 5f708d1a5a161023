"""A local HTTP mirror for the download tests: files served from 127.0.0.1, with faults."""

import http.server
import threading
import time

from conftest import SLICE

from vae_jax import download

FILE_NAMES = [remote.name for remote in download.DATASETS["mnist"].files]


class Mirror:
    """An HTTP server on 127.0.0.1 serving `files` (name -> bytes), with faults on demand.

    `faults[name]` is a list consumed one per request of that file: "drop" sends the
    headers and half the body, then closes the connection; "500" answers an error.
    `delay_s` sleeps after each 64 KiB, to make a download last. `requests` logs names.
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.faults: dict[str, list[str]] = {}
        self.delay_s = 0.0
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                mirror.requests.append(name)
                if name not in mirror.files:
                    self.send_error(404)
                    return
                fault = mirror.faults.get(name, []).pop(0) if mirror.faults.get(name) else None
                if fault == "500":
                    self.send_error(500)
                    return
                body = mirror.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "drop":
                    body = body[: len(body) // 2]
                for start in range(0, len(body), 1 << 16):
                    self.wfile.write(body[start : start + (1 << 16)])
                    time.sleep(mirror.delay_s)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def slice_files() -> dict[str, bytes]:
    return {name: (SLICE / "idx" / name).read_bytes() for name in FILE_NAMES}


def shared_files(full_data) -> dict[str, bytes]:
    return {name: (full_data / "mnist_idx" / name).read_bytes() for name in FILE_NAMES}
