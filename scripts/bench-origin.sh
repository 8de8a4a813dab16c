# Shared by the proxy benchmarks (sourced, not run): a free loopback port, core pinning, the
# nginx origin with the test CA's certificate, the .keyzero.toml that binds the benchmark
# secret to it, and the nginx and HAProxy baselines. Needs $work (a scratch directory), $FIX
# (tests/fixtures/tls) and a pids array.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The load generator and the origin on core 0, the proxy under test on core 1.
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  GEN="taskset -c 0"; PROXY="taskset -c 1"
else
  GEN=""; PROXY=""
fi

VALUE="ghp_benchREALvalue_0123456789abcdef"

# start_origin PORT: nginx (one worker) answering a small JSON body over TLS on PORT, and the
# kz config in $work that sends the benchmark secret there as api.kz.test.
start_origin() {
  local port=$1
  mkdir -p "$work/origin/logs"
  cat > "$work/origin/nginx.conf" <<CONF
worker_processes 1;
pid $work/origin/nginx.pid;
error_log $work/origin/logs/error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate $FIX/server.pem; ssl_certificate_key $FIX/server.key;
    location / { default_type application/json; return 200 '{"ok":true}\n'; }
  }
}
CONF
  $GEN nginx -p "$work/origin" -c "$work/origin/nginx.conf" -g 'daemon off;' & pids+=($!)
  cat > "$work/.keyzero.toml" <<TOML
[secrets]
GH = { provider = "env", ref = "BENCH_VALUE", hosts = ["api.kz.test"] }
[network]
hosts = { "api.kz.test" = "127.0.0.1" }
allow_private = true
upstream_ca = "$FIX/ca.pem"
TOML
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return; sleep 0.1; done
}

# start_rp DIR PORT WORKERS: an nginx TLS reverse proxy in $work/DIR towards the origin on $UP,
# setting the benchmark credential, on the proxy core.
start_rp() {
  mkdir -p "$work/$1/logs"
  cat > "$work/$1/nginx.conf" <<CONF
worker_processes $3;
pid $work/$1/nginx.pid;
error_log $work/$1/logs/error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:$UP; keepalive 256; }
  # Terminate TLS, rewrite the credential, re-encrypt upstream: the work kz does.
  server {
    listen 127.0.0.1:$2 ssl;
    ssl_certificate $FIX/server.pem; ssl_certificate_key $FIX/server.key;
    location / {
      proxy_pass https://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $VALUE";
      proxy_ssl_trusted_certificate $FIX/ca.pem; proxy_ssl_verify on; proxy_ssl_name api.kz.test;
      proxy_ssl_session_reuse on;
    }
  }
}
CONF
  $PROXY nginx -p "$work/$1" -c "$work/$1/nginx.conf" -g 'daemon off;' & pids+=($!)
}
# start_hap NAME PORT THREADS: HAProxy doing the same (TLS terminated and re-encrypted with
# verification, connections reused); its pid in $hap_pid.
start_hap() {
  cat "$FIX/server.pem" "$FIX/server.key" > "$work/hap.pem"
  cat > "$work/$1.cfg" <<CONF
global
  nbthread $3
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:$2 ssl crt $work/hap.pem
  http-request set-header Authorization "Bearer $VALUE"
  default_backend origin
backend origin
  server o 127.0.0.1:$UP ssl verify required ca-file $FIX/ca.pem sni str(api.kz.test)
CONF
  $PROXY haproxy -f "$work/$1.cfg" -db & pids+=($!); hap_pid=$!
}
