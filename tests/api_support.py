"""Shared by the HTTP API tests: the app in-process with every response checked against its
own /openapi.json, and a render worker on a thread of the test process."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import wait_for
from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from werkzeug import Request

from dhserve.api import create_app
from dhserve.api.openapi import document
from dhserve.config import Settings
from dhserve.jobs.worker import RenderWorker

FAST = {"poll_seconds": 0.2, "heartbeat_seconds": 1.0, "lease_seconds": 5.0}


class CheckedClient:
    """Flask's test client; every response must match the OpenAPI document."""

    spec = OpenAPI.from_dict(document(), config=Config(
        extra_media_type_deserializers={"application/problem+json": json.loads}))

    def __init__(self, app):
        self.app = app
        self.client = app.test_client()
        self.checked = 0

    def open(self, *args, **kwargs):
        response = self.client.open(*args, **kwargs)
        sent = response.request           # its body was consumed by the app: match on the rest
        request = Request.from_values(path=sent.path, method=sent.method,
                                      query_string=sent.query_string.decode())
        self.spec.validate_response(WerkzeugOpenAPIRequest(request),
                                    WerkzeugOpenAPIResponse(response))
        self.checked += 1
        return response

    def get(self, *args, **kwargs):
        return self.open(*args, method="GET", **kwargs)

    def post(self, *args, **kwargs):
        return self.open(*args, method="POST", **kwargs)

    def delete(self, *args, **kwargs):
        return self.open(*args, method="DELETE", **kwargs)


class Service:
    """The API app and, when started, render workers on threads, over one data dir."""

    def __init__(self, data_dir: Path, **overrides):
        self.settings = Settings(data_dir=data_dir, **{**FAST, **overrides})
        self.app = create_app(self.settings)
        self.client = CheckedClient(self.app)
        self.store = self.app.extensions["dhserve"].store
        self._workers: list[tuple[RenderWorker, threading.Thread]] = []

    @property
    def temp(self) -> Path:
        return self.settings.temp_dir

    def start_worker(self) -> RenderWorker:
        worker = RenderWorker(self.settings)
        thread = threading.Thread(target=worker.run, kwargs={"install_signals": False})
        thread.start()
        self._workers.append((worker, thread))
        wait_for(lambda: any(w.id == worker.id and w.ready for w in self.store.workers()),
                 60, "the render worker to be ready")
        return worker

    def close(self) -> None:
        for worker, thread in self._workers:
            worker.stop(grace=0)
            thread.join(timeout=30)
            assert not thread.is_alive()
        self.store.close()


@pytest.fixture
def service(tmp_path):
    made: list[Service] = []

    def make(**overrides) -> Service:
        made.append(Service(tmp_path / "data", **overrides))
        return made[-1]

    yield make
    for svc in made:
        svc.close()
