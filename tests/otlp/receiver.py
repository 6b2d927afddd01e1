"""An OTLP/gRPC trace receiver for polycall's tests (grpcio + opentelemetry-proto).

Listens on 127.0.0.1 (a free port), answers every Export, and appends each span it
receives to OUT as one JSON line: trace_id, span_id, parent_span_id (hex), name, kind,
service (the resource's service.name) and attributes. Prints "READY <port>" once it
listens; stops on SIGTERM or when stdin closes.

usage: python3 receiver.py OUT
"""

import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()

    def Export(self, request, context):
        lines = []
        for rs in request.resource_spans:
            service = ""
            for kv in rs.resource.attributes:
                if kv.key == "service.name":
                    service = kv.value.string_value
            for ss in rs.scope_spans:
                for span in ss.spans:
                    lines.append(json.dumps({
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "service": service,
                        "status": span.status.code,
                        "attributes": {kv.key: kv.value.string_value for kv in span.attributes},
                    }))
        with self.lock, open(self.out, "a", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    out = sys.argv[1]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(out), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"READY {port}", flush=True)
    # The test closes our stdin (or kills us) when it is done.
    sys.stdin.read()
    server.stop(grace=None)


if __name__ == "__main__":
    main()
