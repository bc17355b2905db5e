"""`reporter_from_env`: which variables turn traces on, the warnings when they cannot be, and once end to end: a run
exported over OTLP/HTTP to a receiver the test starts, decoded with the OTLP protobuf definitions."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from flowctl.interpreter.persistence.store import RunStatus
from flowctl.interpreter.redact import Redactor
from flowctl.telemetry import TraceReporter, capture_mode, reporter_from_env, traces_endpoint
from tests.support.net import free_port
from tests.telemetry.helpers import run_pipeline

REPO = Path(__file__).resolve().parents[2]


class Receiver(ThreadingHTTPServer):
    """A minimal OTLP/HTTP trace receiver: keeps every ExportTraceServiceRequest POSTed to /v1/traces."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) of every span received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    found.extend((resource, span) for span in scope_spans.spans)
        return found


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.paths.append(self.path)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.requests.append(request)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.anyio
async def test_a_run_is_exported_over_otlp_http(tmp_path: Path, receiver: Receiver) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "flowctl-e2e",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true",
    }
    traces = reporter_from_env(env, Redactor(), warn=pytest.fail)
    assert isinstance(traces, TraceReporter) and traces.capture_content
    outcome = await run_pipeline("tree", tmp_path, traces)
    traces.close()  # flushes: the exporter has POSTed every span when this returns
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    received = receiver.spans()
    assert {resource["service.name"] for resource, _ in received} == {"flowctl-e2e"}
    spans = {span.span_id: span for _, span in received}
    by_name: dict[str, list[Any]] = {}
    for span in spans.values():
        by_name.setdefault(span.name, []).append(span)
    [run] = by_name["invoke_workflow traced_tree"]
    assert run.parent_span_id == b""
    assert {a.key: _value(a.value) for a in run.attributes}["gen_ai.workflow.name"] == "traced_tree"
    [child_run] = by_name["invoke_workflow"]
    [child_step] = by_name["pipeline child"]
    assert child_run.parent_span_id == child_step.span_id and child_step.parent_span_id == run.span_id
    chats = by_name["chat gpt-4o-mini"]
    assert len(chats) == 5  # flaky twice, two items, the child's step
    water = next(c for c in chats if "Summarise water." in str(_attributes(c).get("gen_ai.input.messages")))
    assert spans[water.parent_span_id].parent_span_id == child_run.span_id
    assert _attributes(water)["gen_ai.usage.output_tokens"] > 0
    assert len({span.trace_id for span in spans.values()}) == 1


def _attributes(span: Any) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in span.attributes}


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_SERVICE_NAME": "x"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_no_reporter_unless_the_environment_asks(env: dict[str, str]) -> None:
    assert reporter_from_env(env, Redactor(), warn=pytest.fail) is None


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"},
        {"OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_TRACES_EXPORTER": "console"},
    ],
)
def test_a_reporter_when_it_does(env: dict[str, str]) -> None:
    traces = reporter_from_env(env, Redactor(), warn=pytest.fail)
    assert isinstance(traces, TraceReporter) and not traces.capture_content
    traces.close()  # nothing recorded: nothing sent


@pytest.mark.parametrize(
    ("env", "warning"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "warning: flowctl exports traces over OTLP http/protobuf only, not grpc: no traces",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            "warning: OTEL_TRACES_EXPORTER=zipkin: flowctl exports otlp or console only",
        ),
    ],
)
def test_what_cannot_be_done_is_refused_with_a_warning(env: dict[str, str], warning: str) -> None:
    said: list[str] = []
    assert reporter_from_env(env, Redactor(), warn=said.append) is None
    assert said == [warning]


def test_endpoints_follow_the_otlp_specification() -> None:
    assert traces_endpoint({}) == "http://localhost:4318/v1/traces"
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == "http://c:4318/v1/traces"
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x"}
    assert traces_endpoint(both) == "http://t/x"


# Python without the extra, in a fresh interpreter: the SDK and the exporter made unimportable (the API stays: the
# mcp package requires it)
WITHOUT_EXTRA = """
import sys
for name in ("opentelemetry.sdk", "opentelemetry.exporter"):
    sys.modules[name] = None
from flowctl.interpreter.redact import Redactor
from flowctl.telemetry import reporter_from_env
print(reporter_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, Redactor()))
print(reporter_from_env({}, Redactor()))
"""


def test_without_the_extra_one_warning_and_no_reporter() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["None", "None"]
    assert done.stderr.splitlines() == [
        "warning: OpenTelemetry variables are set but the otel extra is not installed "
        "(pip install 'flowctl-agents[otel]'): no traces"
    ]


UNREACHABLE = """
from flowctl.interpreter.redact import Redactor
from flowctl.telemetry import reporter_from_env
import sys
traces = reporter_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": sys.argv[1]}, Redactor())
traces.run_started("r-1", "p", False)
traces.run_finished("r-1", "succeeded", 1.0, 0, "")
traces.close()
print("closed")
"""


def test_an_unreachable_receiver_costs_one_line() -> None:
    """Not a page of retries and tracebacks: one warning, and the command ends normally."""
    url = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}  # the exporter's own deadline (read from os.environ)
    done = subprocess.run(
        [sys.executable, "-c", UNREACHABLE, url], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout) == (0, "closed\n")
    [line] = done.stderr.splitlines()
    assert line.startswith(f"warning: could not send traces to {url}/v1/traces") and line.endswith(": spans are lost")


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("", (False, False)),
        ("false", (False, False)),
        ("true", (True, False)),
        ("TRUE", (True, False)),
        ("SPAN_ONLY", (True, False)),
        ("EVENT_ONLY", (False, True)),
        ("SPAN_AND_EVENT", (True, True)),
        ("NO_CONTENT", (False, False)),
    ],
)
def test_the_content_switch(value: str, mode: tuple[bool, bool]) -> None:
    assert capture_mode({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": value}) == mode


def test_flowctl_run_exports_when_the_environment_asks(tmp_path: Path, receiver: Receiver) -> None:
    """The command end to end: `flowctl run` in its own process, with the standard variables set."""
    import os
    import subprocess
    import sys

    here = Path(__file__).parent / "pipelines"
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "flowctl-cli"}
    done = subprocess.run(
        [sys.executable, "-m", "flowctl.cli", "run", str(here / "tree.yaml"), "-q", "--scripted",
         str(here / "tree.fixture.yaml"), "--store", str(tmp_path / "runs.db")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = {span.name for _, span in receiver.spans()}
    assert "invoke_workflow traced_tree" in names and "chat gpt-4o-mini" in names
