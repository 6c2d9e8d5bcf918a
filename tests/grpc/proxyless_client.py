"""A proxyless gRPC client: its channel to xds:///TARGET is configured by the xDS server
named in $GRPC_XDS_BOOTSTRAP (listener, routes, cluster and endpoints, all by name).

Usage: proxyless_client.py TARGET STATUS[,STATUS...] TIMEOUT_S. Calls Health.Check until
it has seen each STATUS in order, printing "seen STATUS" for each; exits 0 when all were
seen, 1 at TIMEOUT_S. Bounded by time and by the number of calls.
"""
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

target, expected, timeout = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3])
deadline = time.time() + timeout
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"xds:///{target}"))
last = None
for _ in range(10_000):
    if not expected or time.time() > deadline:
        break
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as e:
        last = f"{e.code()}: {e.details()}"
    if last == expected[0]:
        print(f"seen {expected.pop(0)}", flush=True)
    else:
        time.sleep(0.05)
if expected:
    print(f"still waiting for {expected}; last answer: {last}", file=sys.stderr)
    sys.exit(1)
