#!/usr/bin/env python3
"""Sluice performance suite: sluice, Envoy, nginx and HAProxy as the same plain reverse
proxy in one run, plus the upstream alone as the ceiling. Writes docs/benchmarks.md,
docs/benchmarks/results.json and PNG charts. Run through tests/perf/run.sh, which installs
what this needs. All traffic stays on 127.0.0.1; every load is bounded in time and count;
every process started here is stopped by its PID."""

import argparse, asyncio, json, os, platform, re, signal, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PERF = ROOT / "tests" / "perf"
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
PROXY_CPU, LOAD_CPU = "0", "1"   # the proxy gets core 0; upstream and load generator core 1
UPSTREAM_PORT = 18081
HZ = os.sysconf("SC_CLK_TCK")
UPSTREAM_H2 = False  # set per scenario: the proxies speak h2 to the upstream
ACCESS_LOG = None    # set per scenario: a file each proxy writes one line per request to
TRACING = None       # set per scenario: percent of requests sluice and Envoy trace
GZIP_LEVEL = None    # set per scenario: the gzip level of each proxy's compressor
STATIC_ROOT = None   # set per scenario: a directory each proxy serves files from itself
CACHE = False        # set per scenario: each proxy keeps upstream responses in its cache
UPSTREAM_PID = None  # set by main(): the upstream, whose CPU shows how often a cache missed

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2): return
        except OSError: time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")

def tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop(); out.append(p)
        for t in Path(f"/proc/{p}/task").glob("*/children"):
            todo += [int(c) for c in t.read_text().split()]
    return out

def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, IndexError): pass
    return total / HZ

def rss_bytes(pid, key="VmRSS"):
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"): total += int(line.split()[1]) * 1024
        except FileNotFoundError: pass
    return total

# ---------------------------------------------------------------- proxies

CERT_DIR = None  # set by main(): one ECDSA P-256 certificate every proxy serves

def make_certificate(workdir):
    """The certificate and key every proxy's TLS listener serves (ECDSA P-256, CN localhost)."""
    d = Path(workdir) / "tls"; d.mkdir(exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-days", "2"], check=True, capture_output=True)
    (d / "combined.pem").write_text((d / "cert.pem").read_text() + (d / "key.pem").read_text())
    return d

# The policy filters the A/B puts in front of the router (tests/perf/ab.sh FILTERS=1): a
# CORS policy for every route, a local rate limit that checks every request and never
# runs out, and RBAC that allows GETs from loopback.
POLICY_FILTERS = [
    {"name": "envoy.filters.http.cors", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
    {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "bench_rl",
        "token_bucket": {"max_tokens": 1000000000, "tokens_per_fill": 1000000000, "fill_interval": "1s"},
        "filter_enabled": {"default_value": {"numerator": 100}},
        "filter_enforced": {"default_value": {"numerator": 100}}}},
    {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "ALLOW", "policies": {"loopback-gets": {
            "permissions": [{"header": {"name": ":method", "string_match": {"exact": "GET"}}}],
            "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}}]}}}}},
]
POLICY_CORS = {"envoy.filters.http.cors": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
    "allow_origin_string_match": [{"exact": "https://app.example"}], "allow_methods": "GET"}}

# A collector nobody listens on: tracing benchmarks measure what spans cost a request
# when the export fails (Envoy's and sluice's both drop them).
DOWN_COLLECTOR = {
    "name": "otel", "type": "STATIC", "connect_timeout": "0.25s",
    "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
    "load_assignment": {"cluster_name": "otel", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 19199}}}}]}]},
}


def otel_tracing(percent):
    """The connection manager's tracing: `percent` % sampled, an upstream span each."""
    return {
        "random_sampling": {"value": percent},
        "spawn_upstream_span": True,
        "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
            "service_name": "bench",
            "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}, "timeout": "0.25s"}}},
    }


def file_access_log(path):
    """Envoy's default access log format, to `path`."""
    return {"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path}}


def otlp_access_log():
    """The OpenTelemetry access logger to the `otel` collector: Envoy's default format's
    fields as the body, the status and flags as attributes."""
    text = lambda s: {"string_value": s}
    return {"name": "envoy.access_loggers.open_telemetry", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
        "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}, "timeout": "0.25s"},
        "log_name": "bench",
        "body": text('[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
                     '%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
                     '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
                     '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"'),
        "attributes": {"values": [
            {"key": "status", "value": text("%RESPONSE_CODE%")},
            {"key": "flags", "value": text("%RESPONSE_FLAGS%")}]}}}


def gzip_filter(level):
    """Envoy's compressor with zlib's usual window and memory level (nginx's defaults)."""
    return {"name": "envoy.filters.http.compressor", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor",
        "compressor_library": {"name": "gzip", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip",
            "compression_level": f"COMPRESSION_LEVEL_{level}", "window_bits": 15, "memory_level": 8}},
        "response_direction_config": {"common_config": {"content_type_matcher": [{"exact": "text/html"}]}}}}

def envoy_style_bootstrap(listen, admin, tls_listen=None):
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "bench", "codec_type": "AUTO",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    addr = lambda p: {"socket_address": {"address": "127.0.0.1", "port_value": p}}
    clusters = [upstream_cluster(addr)]
    if ACCESS_LOG:
        hcm["access_log"] = [file_access_log(ACCESS_LOG)]
    if GZIP_LEVEL is not None:
        hcm["http_filters"].insert(0, gzip_filter(GZIP_LEVEL))
    if CACHE:
        # Envoy's in-memory store: sluice bounds it at 64 MiB, Envoy leaves it unbounded.
        hcm["http_filters"].insert(0, {"name": "envoy.filters.http.cache", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"}}})
    if STATIC_ROOT is not None:
        hcm["http_filters"].insert(0, {"name": "files", "typed_config": {
            "@type": "type.googleapis.com/sluice.extensions.filters.http.file_server.v1.FileServer",
            "root": STATIC_ROOT}})
    if TRACING is not None:
        hcm["tracing"] = otel_tracing(TRACING)
        clusters.append(DOWN_COLLECTOR)
    listeners = [{"name": "bench", "address": addr(listen),
                  "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}]
    if tls_listen:
        # Every TLS listener of the suite does full handshakes: no tickets, no session cache.
        tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "disable_stateless_session_resumption": True, "disable_stateful_session_resumption": True,
            "common_tls_context": {"alpn_protocols": ["h2", "http/1.1"], "tls_certificates": [{
                "certificate_chain": {"filename": str(CERT_DIR / "cert.pem")},
                "private_key": {"filename": str(CERT_DIR / "key.pem")}}]}}}
        listeners.append({"name": "bench_tls", "address": addr(tls_listen), "filter_chains": [{
            "transport_socket": tls,
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": dict(hcm, stat_prefix="bench_tls")}]}]})
    return {"admin": {"address": addr(admin)},
            "static_resources": {
                "listeners": listeners,
                "clusters": clusters}}

def upstream_cluster(addr):
    cluster = {"name": "upstream", "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": addr(UPSTREAM_PORT)}}]}]}}
    if UPSTREAM_H2:
        # One HTTP/2 connection (prior knowledge) to the upstream, multiplexing every request.
        cluster["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return cluster

class Proxy:
    """A proxy under test: started pinned to PROXY_CPU with one worker."""
    def __init__(self, name, workdir):
        self.name, self.dir, self.proc = name, Path(workdir), None
        self.port, self.h2_port, self.admin = free_port(), None, free_port()
        self.tls_port = free_port()

    def start(self):
        cmd = self.command()
        self.proc = subprocess.Popen(["taskset", "-c", PROXY_CPU] + cmd, stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / f"{self.name}.log", "w"), start_new_session=True)
        wait_port(self.port)
        if self.h2_port: wait_port(self.h2_port)
        if self.tls_port: wait_port(self.tls_port)
        time.sleep(0.3)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try: self.proc.wait(5)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()

    @property
    def pid(self): return self.proc.pid

class Sluice(Proxy):
    def command(self):
        self.h2_port = None
        self.config = self.dir / "sluice.json"
        self.config.write_text(json.dumps(envoy_style_bootstrap(self.port, self.admin, self.tls_port)))
        return [str(TARGET / "sluice"), "-c", str(self.config), "--concurrency", "1", "--log-level", "warn"]
    def reload(self):
        self.proc.send_signal(signal.SIGHUP)

class SluiceBefore(Sluice):
    """An earlier sluice build (SLUICE_BEFORE_BIN), for before/after comparisons."""
    def command(self):
        cmd = super().command()
        cmd[0] = os.environ["SLUICE_BEFORE_BIN"]
        return cmd

class Envoy(Proxy):
    def command(self):
        self.config = self.dir / "envoy.json"
        self.config.write_text(json.dumps(envoy_style_bootstrap(self.port, self.admin, self.tls_port)))
        return [os.environ["ENVOY_BIN"], "-c", str(self.config), "--concurrency", "1", "--disable-hot-restart",
                "--base-id", str(7000 + os.getpid() % 1000), "-l", "error"]

class Nginx(Proxy):
    def command(self):
        self.h2_port = free_port()
        d = self.dir / "nginx"; d.mkdir(exist_ok=True)
        # As root, nginx's workers would run as nobody, who cannot enter the private
        # work directory that holds the static root and the cache.
        (d / "nginx.conf").write_text(f"""
{'user root;' if os.geteuid() == 0 else ''} worker_processes 1; daemon off; pid {d}/nginx.pid; error_log stderr error; worker_rlimit_nofile 20000;
events {{ worker_connections 15000; }}
http {{
  {f'access_log {ACCESS_LOG};' if ACCESS_LOG else 'access_log off;'} keepalive_requests 100000000; keepalive_timeout 300s;
  {f'gzip on; gzip_comp_level {GZIP_LEVEL}; gzip_types text/html; gzip_min_length 30; gzip_vary on;' if GZIP_LEVEL else ''}
  {f'proxy_cache_path {d}/cache keys_zone=bench:10m max_size=64m; proxy_cache bench;' if CACHE else ''}
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream up {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 1024; keepalive_requests 100000000; }}
  server {{
    listen 127.0.0.1:{self.port}; listen 127.0.0.1:{self.h2_port} http2;
    listen 127.0.0.1:{self.tls_port} ssl http2;
    ssl_certificate {CERT_DIR}/cert.pem; ssl_certificate_key {CERT_DIR}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets off; ssl_session_cache off;
    location / {{ {f'root {STATIC_ROOT};' if STATIC_ROOT else 'proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering on;'} }}
  }}
}}""")
        return ["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)]

class HAProxy(Proxy):
    def command(self):
        self.h2_port = free_port()
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(f"""
global
  nbthread 1
  maxconn 9500
  tune.ssl.cachesize 0
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  option http-keep-alive
  http-reuse always
{"cache bench" + chr(10) + "  total-max-size 64" + chr(10) + "  max-age 3600" if CACHE else ""}
frontend fe
  bind 127.0.0.1:{self.port}
  bind 127.0.0.1:{self.h2_port} proto h2
  bind 127.0.0.1:{self.tls_port} ssl crt {CERT_DIR}/combined.pem alpn h2,http/1.1 no-tls-tickets
  default_backend be
backend be
  server s1 127.0.0.1:{UPSTREAM_PORT}{" proto h2" if UPSTREAM_H2 else ""}
{"  http-request cache-use bench" + chr(10) + "  http-response cache-store bench" if CACHE else ""}
""")
        return ["haproxy", "-f", str(cfg), "-db"]

class Direct(Proxy):
    """No proxy: the upstream itself, as the ceiling (its CPU is not the proxy's)."""
    def __init__(self, name, workdir):
        super().__init__(name, workdir); self.port = UPSTREAM_PORT; self.tls_port = None
    def start(self): return self
    def stop(self): pass
    @property
    def pid(self): return None

PROXIES = {"sluice": Sluice, "envoy": Envoy, "nginx": Nginx, "haproxy": HAProxy, "upstream-direct": Direct}
if os.environ.get("SLUICE_BEFORE_BIN"):
    PROXIES = {"sluice": Sluice, "sluice-before": SluiceBefore, **{k: v for k, v in PROXIES.items() if k != "sluice"}}

# ---------------------------------------------------------------- load

def on_load_cpu(cmd, timeout):
    out = subprocess.run(["taskset", "-c", LOAD_CPU] + cmd, capture_output=True, text=True, timeout=timeout)
    return out.stdout

def wrk(port, path, connections, duration, extra=(), scheme="http"):
    out = on_load_cpu(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "-s", str(PERF / "latency.lua"),
                       *extra, f"{scheme}://localhost:{port}{path}" if scheme == "https" else f"http://127.0.0.1:{port}{path}"], duration + 30)
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    r = json.loads(line)
    secs = r["duration_us"] / 1e6
    return {"requests": r["requests"], "rps": r["requests"] / secs, "mbps": r["bytes"] / secs / 1e6,
            "bytes_per_req": r["bytes"] / r["requests"] if r["requests"] else None,
            "errors": r["errors"] + r["non2xx"], "p50_us": r["p50_us"], "p99_us": r["p99_us"], "p999_us": r["p999_us"]}

def h2load(port, duration, scheme="http"):
    n = 400_000
    host = "localhost" if scheme == "https" else "127.0.0.1"
    out = on_load_cpu(["h2load", "-c10", "-m10", f"-n{n}", "-t1", f"--duration={duration}", "--warm-up-time=1",
                       f"{scheme}://{host}:{port}/"], duration + 60)
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out).group(2))
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    m = re.search(r"time for request:\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)", out)
    to_us = lambda v, u: float(v) * {"us": 1, "ms": 1000, "s": 1e6}[u]
    return {"requests": done, "rps": rps, "errors": 0, "p50_us": to_us(m.group(5), m.group(6)),
            "p99_us": None, "p999_us": None, "max_us": to_us(m.group(3), m.group(4)), "latency_note": "h2load reports mean (shown as p50) and max"}

def fixed_rate(port, duration, rate=10_000):
    out = on_load_cpu([str(TARGET / "loadgen"), "--addr", f"127.0.0.1:{port}", "--rate", str(rate), "--connections", "50",
                       "--duration-s", str(duration)], duration + 60)
    r = json.loads(out.strip().splitlines()[-1])
    return {"requests": r["requests"], "rps": r["requests"] / duration, "errors": r["errors"],
            "p50_us": r["p50_us"], "p99_us": r["p99_us"], "p999_us": r["p999_us"]}

async def hold_idle(port, count):
    """Opens `count` keep-alive connections, one request each, and holds them."""
    conns = []
    for i in range(count):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        conns.append((r, w))
        if i % 500 == 499: await asyncio.gather(*(drain_response(r) for r, _ in conns[-500:]))
    await asyncio.gather(*(drain_response(r) for r, _ in conns[(count // 500) * 500:]))
    return conns

async def drain_response(reader):
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    await reader.readexactly(length)

def idle_connections(proxy, count):
    async def run():
        warm = await hold_idle(proxy.port, 10)
        time.sleep(0.5); before = rss_bytes(proxy.pid)
        conns = await hold_idle(proxy.port, count)
        time.sleep(1.0); after = rss_bytes(proxy.pid)
        for _, w in conns + warm: w.close()
        return before, after
    before, after = asyncio.run(run())
    return {"requests": count, "rps": None, "errors": 0, "rss_before_mb": before / 1e6, "rss_after_mb": after / 1e6,
            "rss_per_conn_kb": (after - before) / count / 1024}

# ---------------------------------------------------------------- scenarios

SCENARIOS = [
    # name, description, proxies, function(proxy, duration) -> result
    ("h1_small_c50", "HTTP/1.1 keep-alive, 12-byte response, 50 connections (wrk)", lambda p, d: wrk(p.port, "/", 50, d)),
    ("h1_small_c200", "HTTP/1.1 keep-alive, 12-byte response, 200 connections (wrk)", lambda p, d: wrk(p.port, "/", 200, d)),
    ("h1_16k", "HTTP/1.1 keep-alive, 16 KiB response, 10 connections (wrk)", lambda p, d: wrk(p.port, "/16k", 10, d)),
    ("h1_1m", "HTTP/1.1 keep-alive, 1 MiB response, 10 connections (wrk)", lambda p, d: wrk(p.port, "/1m", 10, d)),
    ("h2_100_streams", "HTTP/2 cleartext, 10 connections x 10 streams (h2load)", lambda p, d: h2load(p.h2_port or p.port, d)),
    ("fixed_10k", "HTTP/1.1 at a fixed 10,000 req/s over 50 connections (loadgen, open loop)", lambda p, d: fixed_rate(p.port, d)),
    ("conn_per_request", "HTTP/1.1, a new connection per request, 50 concurrent (wrk, Connection: close)",
     lambda p, d: wrk(p.port, "/", 50, d, ("-H", "Connection: close"))),
    ("up_h2_c50", "HTTP/1.1 keep-alive from 50 connections, HTTP/2 to the upstream, 12-byte response (wrk; nginx cannot proxy to h2)",
     lambda p, d: wrk(p.port, "/", 50, d)),
    ("up_h2_fixed_10k", "HTTP/1.1 at a fixed 10,000 req/s over 50 connections, HTTP/2 to the upstream (loadgen, open loop)",
     lambda p, d: fixed_rate(p.port, d)),
    ("tls_h1_c50", "TLS 1.3 (ECDSA P-256, same certificate everywhere), HTTP/1.1 keep-alive, 12-byte response, 50 connections (wrk)",
     lambda p, d: wrk(p.tls_port, "/", 50, d, scheme="https")),
    ("tls_h2_100_streams", "TLS 1.3, HTTP/2 by ALPN, 10 connections x 10 streams (h2load)",
     lambda p, d: h2load(p.tls_port, d, scheme="https")),
    ("tls_handshakes", "TLS 1.3, a new connection (full handshake: resumption off everywhere) per request, 50 concurrent (wrk, Connection: close); req/s = handshakes/s",
     lambda p, d: wrk(p.tls_port, "/", 50, d, ("-H", "Connection: close"), scheme="https")),
]

# Observability on (issue 11): each proxy's default access log format to a file; tracing
# (OpenTelemetry, an upstream span each) to a collector that is down, for the proxies
# that trace natively.
SCENARIOS += [
    ("fixed_10k_access_log", "fixed_10k with an access log to a file (each proxy's default format)",
     lambda p, d: fixed_rate(p.port, d)),
    ("fixed_10k_traced_100", "fixed_10k with OpenTelemetry tracing, 100 % sampled, collector down (sluice and Envoy)",
     lambda p, d: fixed_rate(p.port, d)),
    ("fixed_10k_traced_1", "fixed_10k with OpenTelemetry tracing, 1 % sampled, collector down (sluice and Envoy)",
     lambda p, d: fixed_rate(p.port, d)),
]
TRACED_SCENARIOS = {"fixed_10k_traced_100": 100.0, "fixed_10k_traced_1": 1.0}

# Web-server work (issue 12): gzip of a 16 KiB HTML response, against nginx's gzip.
SCENARIOS += [
    ("gzip1_16k", "HTTP/1.1 keep-alive, 16 KiB HTML gzipped at level 1 (window 15, memory level 8), 10 connections (wrk)",
     lambda p, d: wrk(p.port, "/16k.html", 10, d, ("-H", "Accept-Encoding: gzip"))),
    ("gzip6_16k", "HTTP/1.1 keep-alive, 16 KiB HTML gzipped at level 6 (window 15, memory level 8), 10 connections (wrk)",
     lambda p, d: wrk(p.port, "/16k.html", 10, d, ("-H", "Accept-Encoding: gzip"))),
]
GZIP_SCENARIOS = {"gzip1_16k": 1, "gzip6_16k": 6}

# Static files from the proxy's own disk (sluice's file server, nginx's root).
SCENARIOS += [
    ("static_1k", "HTTP/1.1 keep-alive, a 1 KiB file from the proxy's disk (page cache), 50 connections (wrk)",
     lambda p, d: wrk(p.port, "/1k.html", 50, d)),
    ("static_1m", "HTTP/1.1 keep-alive, a 1 MiB file from the proxy's disk (page cache), 10 connections (wrk)",
     lambda p, d: wrk(p.port, "/1m.bin", 10, d)),
]
STATIC_SCENARIOS = {"static_1k", "static_1m"}

# Cache hits: a 1 KiB response the upstream marks `public, max-age=3600`, kept by sluice's and
# Envoy's cache filter (in memory), HAProxy's cache (in memory) and nginx's proxy_cache (on
# disk, so from the page cache). The upstream's CPU per request shows that the proxies hit.
SCENARIOS += [
    ("cache_hit_1k", "HTTP/1.1 keep-alive, a cached 1 KiB response (Cache-Control: public, max-age=3600), 50 connections (wrk)",
     lambda p, d: wrk(p.port, "/cached", 50, d)),
]
CACHE_SCENARIOS = {"cache_hit_1k"}

TLS_SCENARIOS = {"tls_h1_c50", "tls_h2_100_streams", "tls_handshakes"}
H2_UPSTREAM_SCENARIOS = {"up_h2_c50", "up_h2_fixed_10k"}

def static_root(workdir):
    """The files of the static scenarios, written once."""
    root = Path(workdir) / "static"
    if not root.exists():
        root.mkdir()
        (root / "1k.html").write_bytes(b"<p>" + b"x" * 1017 + b"</p>")
        (root / "1m.bin").write_bytes(os.urandom(1 << 20))
    return root

def measure(proxy, fn, duration):
    pid = proxy.pid
    cpu0 = cpu_seconds(pid) if pid else 0
    upstream0 = cpu_seconds(UPSTREAM_PID)
    result = fn(proxy, duration)
    if result["requests"]:
        result["upstream_cpu_us_per_req"] = (cpu_seconds(UPSTREAM_PID) - upstream0) * 1e6 / result["requests"]
    if pid:
        cpu = cpu_seconds(pid) - cpu0
        result["cpu_us_per_req"] = cpu * 1e6 / result["requests"] if result["requests"] else None
        result["peak_rss_mb"] = rss_bytes(pid, "VmHWM") / 1e6
    return result

def reload_under_load(workdir, duration, kind=None, name="sluice"):
    """sluice alone: throughput while the route table is swapped 10 times a second."""
    p = (kind or Sluice)(name, workdir).start()
    try:
        base = json.loads(p.config.read_text())
        stop = time.time() + duration
        swaps = 0
        wrk_proc = subprocess.Popen(["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c50", f"-d{duration}s", "-s", str(PERF / "latency.lua"),
                                     f"http://127.0.0.1:{p.port}/"], stdout=subprocess.PIPE, text=True)
        while time.time() < stop - 0.2:
            vh = base["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
            vh["response_headers_to_add"] = [{"header": {"key": "x-swap", "value": str(swaps)}}]
            p.config.write_text(json.dumps(base)); p.reload(); swaps += 1
            time.sleep(0.1)
        out, _ = wrk_proc.communicate(timeout=duration + 30)
        r = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
        secs = r["duration_us"] / 1e6
        return {"requests": r["requests"], "rps": r["requests"] / secs, "errors": r["errors"] + r["non2xx"],
                "p50_us": r["p50_us"], "p99_us": r["p99_us"], "p999_us": r["p999_us"], "swaps": swaps}
    finally:
        p.stop()

def med(values):
    values = [v for v in values if v is not None]
    return (statistics.median(values), min(values), max(values)) if values else (None, None, None)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=int(os.environ.get("PERF_DURATION", 5)))
    ap.add_argument("--reps", type=int, default=int(os.environ.get("PERF_REPS", 3)))
    ap.add_argument("--idle", type=int, default=int(os.environ.get("PERF_IDLE_CONNECTIONS", 9_000)))
    ap.add_argument("--only", default=os.environ.get("PERF_ONLY", ""))
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args()
    wanted = [s for s in args.only.split(",") if s]
    workdir = Path(tempfile.mkdtemp(prefix="sluice-perf-"))
    global CERT_DIR
    CERT_DIR = make_certificate(workdir)
    upstream = subprocess.Popen(["taskset", "-c", LOAD_CPU, str(TARGET / "perf-upstream"), "--listen", f"127.0.0.1:{UPSTREAM_PORT}", "--threads", "1"],
                                start_new_session=True)
    global UPSTREAM_PID
    UPSTREAM_PID = upstream.pid
    results = {}
    try:
        wait_port(UPSTREAM_PORT)
        for name, desc, fn in SCENARIOS:
            if wanted and name not in wanted: continue
            results[name] = {"description": desc, "runs": {}}
            global UPSTREAM_H2, ACCESS_LOG, TRACING, GZIP_LEVEL, STATIC_ROOT, CACHE
            CACHE = name in CACHE_SCENARIOS
            UPSTREAM_H2 = name in H2_UPSTREAM_SCENARIOS
            ACCESS_LOG = str(workdir / "access.log") if name == "fixed_10k_access_log" else None
            TRACING = TRACED_SCENARIOS.get(name)
            GZIP_LEVEL = GZIP_SCENARIOS.get(name)
            STATIC_ROOT = str(static_root(workdir)) if name in STATIC_SCENARIOS else None
            proxies = {p: cls for p, cls in PROXIES.items()
                       if not (name in TLS_SCENARIOS and p == "upstream-direct")
                       and not (UPSTREAM_H2 and p in ("nginx", "upstream-direct"))
                       # HAProxy logs through syslog only; nginx and HAProxy do not trace.
                       and not (ACCESS_LOG and p in ("haproxy", "upstream-direct"))
                       and not (TRACING is not None and p not in ("sluice", "sluice-before", "envoy"))
                       # HAProxy's compression has no levels; the upstream does not compress.
                       and not (GZIP_LEVEL is not None and p in ("haproxy", "upstream-direct"))
                       # Envoy and HAProxy do not serve files.
                       and not (STATIC_ROOT is not None and p not in ("sluice", "sluice-before", "nginx"))
                       # The upstream alone would measure nothing about caching.
                       and not (CACHE and p == "upstream-direct")}
            # Repetitions interleave the proxies, so the machine's drift over minutes
            # spreads over all of them instead of favouring whichever ran first.
            for rep in range(args.reps):
                for proxy_name, cls in proxies.items():
                    proxy = cls(proxy_name, workdir).start()
                    try: results[name]["runs"].setdefault(proxy_name, []).append(measure(proxy, fn, args.duration))
                    finally: proxy.stop()
            for proxy_name, runs in results[name]["runs"].items():
                print(f"{name:18} {proxy_name:16} " + " ".join(f"{r.get('rps') or 0:9.0f}rps/{r.get('cpu_us_per_req') or 0:6.1f}us" for r in runs), flush=True)
        if not wanted or "idle_connections" in wanted:
            results["idle_connections"] = {"description": f"RSS with {args.idle} idle keep-alive connections", "runs": {}}
            for proxy_name, cls in PROXIES.items():
                if proxy_name == "upstream-direct": continue
                proxy = cls(proxy_name, workdir).start()
                try: results["idle_connections"]["runs"][proxy_name] = [idle_connections(proxy, args.idle)]
                finally: proxy.stop()
                print(f"idle_connections   {proxy_name:16} {results['idle_connections']['runs'][proxy_name][0]['rss_per_conn_kb']:.2f} KiB/conn", flush=True)
        if not wanted or "control_plane" in wanted:
            results["control_plane"] = {"description": "sluice-cp with 3 sluice nodes (2 state of the world, 1 delta): time from starting "
                                        "`sluicectl apply` of a changed route table to the fleet-view event in which the last node ACKed it, "
                                        "over 20 applies 100 ms apart per run; sluice-cp RSS with the 3 nodes attached",
                                        "runs": {"sluice-cp": []}}
            for rep in range(args.reps):
                out = subprocess.run([str(TARGET / "cp-latency"), "--bin-dir", str(TARGET), "--rounds", "20"],
                                     capture_output=True, text=True, timeout=300, check=True)
                results["control_plane"]["runs"]["sluice-cp"].append(json.loads(out.stdout))
                r = results["control_plane"]["runs"]["sluice-cp"][-1]
                print(f"control_plane      sluice-cp        median {r['apply_to_last_ack_ms']['median']:.1f} ms, RSS {r['cp_rss_mb']:.1f} MB", flush=True)
        if not wanted or "reload_10hz" in wanted:
            # With SLUICE_BEFORE_BIN the earlier build runs too, rep by rep after this one.
            builds = [("sluice", Sluice)] + ([("sluice-before", SluiceBefore)] if os.environ.get("SLUICE_BEFORE_BIN") else [])
            runs = {name: [] for name, _ in builds}
            for _ in range(args.reps):
                for name, kind in builds:
                    runs[name].append(reload_under_load(workdir, max(args.duration, 5), kind, name))
            results["reload_10hz"] = {"description": "sluice alone: wrk 50 connections while the route table is swapped 10 times a second",
                                      "runs": runs}
    finally:
        upstream.send_signal(signal.SIGTERM); upstream.wait(5)
    out = Path(args.out); (out / "benchmarks").mkdir(parents=True, exist_ok=True)
    meta = environment(args)
    previous = out / "benchmarks" / "results.json"
    if wanted and previous.exists():
        # A partial run (--only) replaces its scenarios in the last full run's results.
        merged = json.loads(previous.read_text())["results"]
        merged.update(results)
        results = merged
        meta["partial_rerun"] = f"{', '.join(wanted)} re-run at {meta['date']}"
    (out / "benchmarks" / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (out / "benchmarks.md").write_text(report(meta, results))
    charts(results, out / "benchmarks")
    print(f"wrote {out / 'benchmarks.md'}")

def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except Exception as e:
        return f"unknown ({e})"

def environment(args):
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "unknown")
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu, "cores": os.cpu_count(),
            "kernel": platform.release(), "sluice": f"git {sha}", "envoy": version([os.environ["ENVOY_BIN"], "--version"]),
            "nginx": version(["nginx", "-v"]), "haproxy": version(["haproxy", "-v"]), "wrk": version(["wrk", "-v"]),
            "h2load": version(["h2load", "--version"]), "duration_s": args.duration, "reps": args.reps}

def fmt(v, unit=""):
    if v is None: return "–"
    return f"{v:,.0f}{unit}" if abs(v) >= 100 else f"{v:.1f}{unit}"

def cell(runs, key, unit=""):
    m, lo, hi = med([r.get(key) for r in runs])
    if m is None: return "–"
    return fmt(m, unit) if lo == hi else f"{fmt(m, unit)} ({fmt(lo)}–{fmt(hi)})"

def report(meta, results):
    lines = ["# Benchmarks", "",
             "Generated by `tests/perf/run.sh` (do not edit by hand). Each proxy is configured as the same plain",
             "reverse proxy to one upstream (one route, upstream keep-alive, access logs off, one worker), pinned to",
             f"CPU {PROXY_CPU}; the upstream and the load generator are pinned to CPU {LOAD_CPU}. Each cell is the median of",
             f"{meta['reps']} runs of {meta['duration_s']} s with min–max in brackets. CPU µs/request is the proxy process's",
             "user+system CPU time over the requests it served — on this 2-core machine the load generator saturates",
             "before a fast proxy does, so it is the fair efficiency figure. `upstream-direct` is the ceiling (no proxy).",
             "Targets, findings and before/after figures of the optimisation rounds: [performance.md](performance.md).",
             "The idle-connection scenario holds 9,000 connections: this machine's hard open-file limit is 20,000 and",
             "HAProxy needs two descriptors per `maxconn`.", "",
             "| machine | |", "| --- | --- |"]
    for k in ["date", "cpu", "cores", "kernel", "sluice", "envoy", "nginx", "haproxy", "wrk", "h2load", "partial_rerun"]:
        if k in meta:
            lines.append(f"| {k} | {meta[k]} |")
    lines += ["", "![throughput ratios](benchmarks/throughput_ratio.png)", "![latency at fixed rate](benchmarks/latency_fixed_rate.png)", ""]
    peers = ["envoy", "nginx", "haproxy"]
    for name, data in results.items():
        lines += [f"## {name}", "", data["description"], ""]
        if name == "control_plane":
            lines += ["| run | apply → last ACK, median ms | p90 ms | min ms | max ms | sluice-cp RSS MB |", "| --- | --- | --- | --- | --- | --- |"]
            for i, r in enumerate(data["runs"]["sluice-cp"], 1):
                l = r["apply_to_last_ack_ms"]
                lines.append(f"| {i} | {l['median']:.1f} | {l['p90']:.1f} | {l['min']:.1f} | {l['max']:.1f} | {r['cp_rss_mb']:.1f} |")
            lines += ["", "Each sample includes starting the `sluicectl` process. The applies are 100 ms apart, so each is an isolated",
                      "change, which the control plane pushes at once; changes within its 10 ms debounce window of a push are coalesced.", ""]
            continue
        if name == "idle_connections":
            lines += ["| proxy | RSS before (MB) | RSS with connections (MB) | KiB per connection |", "| --- | --- | --- | --- |"]
            for p, runs in data["runs"].items():
                r = runs[0]
                lines.append(f"| {p} | {r['rss_before_mb']:.1f} | {r['rss_after_mb']:.1f} | {r['rss_per_conn_kb']:.2f} |")
            s = data["runs"].get("sluice", [{}])[0].get("rss_per_conn_kb")
            best = min((data["runs"][p][0]["rss_per_conn_kb"] for p in peers if p in data["runs"]), default=None)
            if s and best: lines += ["", f"sluice / best peer (lower is better): **{s / best:.2f}**"]
            lines.append(""); continue
        throughput_key = "mbps" if name in ("h1_16k", "h1_1m") else "rps"
        unit = "MB/s" if throughput_key == "mbps" else "req/s"
        lines += [f"| proxy | {unit} | p50 µs | p99 µs | p99.9 µs | CPU µs/req | peak RSS MB | errors |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for p, runs in data["runs"].items():
            lines.append(f"| {p} | {cell(runs, throughput_key)} | {cell(runs, 'p50_us')} | {cell(runs, 'p99_us')} | {cell(runs, 'p999_us')} | "
                         f"{cell(runs, 'cpu_us_per_req')} | {cell(runs, 'peak_rss_mb')} | {sum(r.get('errors') or 0 for r in runs)} |")
        s_runs = data["runs"].get("sluice")
        peer_runs = {p: data["runs"][p] for p in peers if p in data["runs"]}
        if s_runs and peer_runs:
            def ratio(key, higher_better):
                s = med([r.get(key) for r in s_runs])[0]
                vals = {p: med([r.get(key) for r in runs])[0] for p, runs in peer_runs.items()}
                vals = {p: v for p, v in vals.items() if v}
                if not s or not vals: return None
                best_p = max(vals, key=vals.get) if higher_better else min(vals, key=vals.get)
                return f"{s / vals[best_p]:.2f} (best peer: {best_p})"
            def show(v): return v if v is not None else "–"
            lines += ["", f"sluice / best peer — throughput: **{show(ratio(throughput_key, True))}**, "
                          f"CPU µs/req: **{show(ratio('cpu_us_per_req', False))}**, p99: **{show(ratio('p99_us', False))}**"]
        if name in CACHE_SCENARIOS:
            # A proxy that missed would make the upstream work: its CPU per request shows the hit rate.
            lines += ["", "Upstream CPU µs per request (near 0: served from the cache): " + ", ".join(
                f"{p} {cell(runs, 'upstream_cpu_us_per_req')}" for p, runs in data["runs"].items())]
        lines.append("")
    lines += ["## Exact commands", "", "```",
              f"proxy:     taskset -c {PROXY_CPU} <proxy> (configs written by tests/perf/bench.py: one worker each)",
              f"upstream:  taskset -c {LOAD_CPU} target/release/perf-upstream --threads 1",
              f"wrk:       taskset -c {LOAD_CPU} wrk -t1 -c<N> -d<D>s --timeout 5s -s tests/perf/latency.lua http://127.0.0.1:<port><path>",
              f"h2load:    taskset -c {LOAD_CPU} h2load -c10 -m10 -n400000 -t1 --duration=<D> --warm-up-time=1 http://127.0.0.1:<port>/",
              "TLS:       the same tools against https://localhost:<tls port>/ (wrk and h2load over OpenSSL; ALPN h2 for h2load);",
              "           one ECDSA P-256 certificate (openssl req -x509 -newkey ec) for every proxy, session resumption off everywhere",
              f"fixed:     taskset -c {LOAD_CPU} target/release/loadgen --rate 10000 --connections 50 --duration-s <D>",
              "idle:      python asyncio opens N keep-alive connections with one request each; RSS delta / N",
              "control:   target/release/cp-latency --bin-dir target/release --rounds 20", "```", ""]
    return "\n".join(lines)

def charts(results, out):
    try:
        import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: charts skipped", file=sys.stderr); return
    names, ratios = [], {p: [] for p in ["envoy", "nginx", "haproxy"]}
    for name, data in results.items():
        if name in ("idle_connections", "reload_10hz") or "sluice" not in data["runs"]: continue
        key = "mbps" if name in ("h1_16k", "h1_1m") else "rps"
        s = med([r.get(key) for r in data["runs"]["sluice"]])[0]
        names.append(name)
        for p in ratios:
            v = med([r.get(key) for r in data["runs"].get(p, [])])[0] if p in data["runs"] else None
            ratios[p].append(s / v if s and v else 0)
    if names:
        fig, ax = plt.subplots(figsize=(10, 4.5)); w = 0.27
        for i, (p, vals) in enumerate(ratios.items()):
            ax.bar([x + (i - 1) * w for x in range(len(names))], vals, w, label=f"sluice / {p}")
        ax.axhline(1.0, color="black", linewidth=0.8); ax.set_xticks(range(len(names))); ax.set_xticklabels(names, rotation=20)
        ax.set_ylabel("throughput ratio (>1: sluice faster)"); ax.legend(); fig.tight_layout(); fig.savefig(out / "throughput_ratio.png", dpi=110); plt.close(fig)
    if "fixed_10k" in results:
        data = results["fixed_10k"]["runs"]; proxies = list(data)
        fig, ax = plt.subplots(figsize=(9, 4.5)); w = 0.27
        for i, q in enumerate(["p50_us", "p99_us", "p999_us"]):
            ax.bar([x + (i - 1) * w for x in range(len(proxies))], [med([r.get(q) for r in data[p]])[0] or 0 for p in proxies], w, label=q.replace("_us", ""))
        ax.set_xticks(range(len(proxies))); ax.set_xticklabels(proxies); ax.set_yscale("log"); ax.set_ylabel("latency µs (log)")
        ax.set_title("latency at a fixed 10,000 req/s, 50 connections"); ax.legend(); fig.tight_layout(); fig.savefig(out / "latency_fixed_rate.png", dpi=110); plt.close(fig)

if __name__ == "__main__":
    main()
