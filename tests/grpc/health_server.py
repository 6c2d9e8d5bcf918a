"""A gRPC server with only the standard health service, answering `status` for "".

Usage: health_server.py PORT STATUS LIFETIME_S. Listens on 127.0.0.1 only and exits by
itself after LIFETIME_S (tests stop it by PID before that).
"""
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

port, status, lifetime = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
servicer = health.HealthServicer()
servicer.set("", health_pb2.HealthCheckResponse.ServingStatus.Value(status))
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
server.add_insecure_port(f"127.0.0.1:{port}")
server.start()
print("ready", flush=True)
server.wait_for_termination(timeout=lifetime)
