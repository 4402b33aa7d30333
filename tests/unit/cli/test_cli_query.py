"""`rayft query` against a stand-in HTTP server speaking the documented API (no Ray needed)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from rayft.cli import main


class _Api(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "a", "object": "model", "task": "sequence_classification"},
                                                    {"id": "chat", "object": "model", "task": "sft"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["model"] not in {"a", "chat"}:
            self._send(404, {"error": {"message": f"model {body['model']!r} not found", "type": "invalid_request_error",
                                       "code": "model_not_found"}})
        elif self.path == "/v1/classify":
            self._send(200, {"object": "classification", "data": [
                {"index": i, "label": "pos", "probabilities": {"neg": 0.25, "pos": 0.75}}
                for i, _ in enumerate(body["inputs"])]})
        else:
            self._send(200, {"object": "text_completion", "choices": [{"index": 0, "text": " paris ."}]})


@pytest.fixture()
def server():
    httpd = HTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_query_classifies_and_completes(server, capsys):
    assert main(["query", "--url", server, "--model", "a", "great film", "dull"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "pos" in out[0] and "pos=0.750" in out[0] and out[1].endswith("dull")
    assert main(["query", "--url", server, "--model", "chat", "capital of france?"]) == 0
    assert json.loads(capsys.readouterr().out)["completion"] == " paris ."


def test_query_unknown_model_is_a_clean_error(server, capsys):
    assert main(["query", "--url", server, "--model", "nope", "x"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err
