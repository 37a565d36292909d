#!/usr/bin/env bash
# Instructions per request through Portcullis, counted by callgrind: the
# load-independent figure on a shared machine (see benches/RESULTS.md).
#
#   bash benches/callgrind.sh [h1|h2] [N1 N2]     (KEEP=DIR keeps the profiles;
#                                                   C=conns M=streams, default 4 and 8)
#
# Runs the release proxy under `valgrind --tool=callgrind` twice, with the
# load harness's policy shape (a Server on the app port, the allowing
# `zz-bench-allow` authorization for unauthenticated 127.0.0.0/8,
# `--default-policy deny`, one tokio worker), nginx answering `200` as the
# app, and `h2load` sending N1 then N2 requests over 4 connections (h2: 4
# connections x 8 streams). (Ir(N2) - Ir(N1)) / (N2 - N1) removes start-up
# and shutdown. Needs valgrind, nginx and h2load (benches/setup.sh).
set -euo pipefail

mode=${1:-h1}
n1=${2:-1000}
n2=${3:-6000}
conns=${C:-4}
streams=${M:-8}
root=$(cd "$(dirname "$0")/.." && pwd)
command -v valgrind >/dev/null || apt-get install -y -qq valgrind >/dev/null
cargo build --release -q -p portcullis-proxy --bin portcullis
bin="$root/target/release/portcullis"

dir=$(mktemp -d)
trap 'kill $(cat "$dir"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$dir"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
app=$(free_port)
listen=$(free_port)
admin=$(free_port)
inbound=$(free_port)

# the app: nginx answering 200 on HTTP/1.1 and h2c
mkdir -p "$dir/nginx"
cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/nginx; proxy_temp_path $dir/nginx;
  fastcgi_temp_path $dir/nginx; uwsgi_temp_path $dir/nginx; scgi_temp_path $dir/nginx;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$app$( [ "$mode" = h2 ] && echo " http2"); location / { return 200 "hello, world\n"; } }
}
EOF
nginx -c "$dir/nginx.conf" -p "$dir/nginx" &

cat >"$dir/policy.yaml" <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: bench, labels: {app: bench-app}}
spec:
  containers:
  - name: app
    ports: [{name: app, containerPort: $app}]
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: bench-server, namespace: bench}
spec:
  podSelector: {matchLabels: {app: bench-app}}
  port: $app
  proxyProtocol: unknown
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: zz-bench-allow, namespace: bench}
spec:
  server: {name: bench-server}
  client:
    unauthenticated: true
    networks: [{cidr: 127.0.0.0/8}]
EOF

count() { # N -> total instructions of a proxy run serving N requests
  local n=$1 out="$dir/callgrind.$1"
  TOKIO_WORKER_THREADS=1 PORTCULLIS_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin" --inbound-addr "127.0.0.1:$inbound" --map "127.0.0.1:$listen=$app" --app-addr 127.0.0.1 \
    --admin-addr "127.0.0.1:$admin" --policy-file "$dir/policy.yaml" --workload bench/app \
    --default-policy deny 2>"$dir/proxy.$n.log" &
  local pid=$!
  echo $pid >"$dir/proxy.pid"
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$admin/ready" >/dev/null && break
    sleep 0.1
  done
  if [ "$mode" = h2 ]; then
    h2load -c "$conns" -m "$streams" -n "$n" "http://127.0.0.1:$listen/" >"$dir/h2load.$n" 2>&1
  else
    h2load --h1 -c "$conns" -n "$n" "http://127.0.0.1:$listen/" >"$dir/h2load.$n" 2>&1
  fi
  grep -q "$n succeeded" "$dir/h2load.$n" || { cat "$dir/h2load.$n" "$dir/proxy.$n.log" >&2; exit 1; }
  kill -TERM $pid
  wait $pid || true
  awk '/^summary:/ {print $2}' "$out"
}

a=$(count "$n1")
b=$(count "$n2")
# KEEP=DIR keeps the callgrind files for callgrind_annotate.
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$dir"/callgrind.* "$KEEP"/; fi
echo "mode=$mode c=$conns m=$streams Ir($n1)=$a Ir($n2)=$b instructions/request=$(( (b - a) / (n2 - n1) ))"
