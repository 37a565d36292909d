#!/usr/bin/env sh
# The Portcullis demo, on one machine, without a cluster: the demo app on
# 127.0.0.1:8080 plays the walkthrough's `backend` pod, and the proxy
# enforces proxy/demo/policy.yaml for `demo/backend` on a --map listener
# (127.0.0.1:4180 -> app port 8080; no iptables needed).
#
# Usage: proxy/demo/run.sh   (Ctrl-C stops both)
# The app port is the policy's containerPort (8080); the proxy's ports can
# be changed with PROXY_ADDR and ADMIN_ADDR.
set -eu
cd "$(dirname "$0")/../.."

APP_PORT=8080
APP_ADDR=127.0.0.1:$APP_PORT
PROXY_ADDR=${PROXY_ADDR:-127.0.0.1:4180}
ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:4191}

cargo build --quiet -p portcullis-proxy --bin portcullis --example demo-app

./target/debug/examples/demo-app "$APP_ADDR" &
APP=$!
./target/debug/portcullis \
    --policy-file proxy/demo/policy.yaml --workload demo/backend \
    --map "$PROXY_ADDR=$APP_PORT" \
    --inbound-addr 127.0.0.1:0 --admin-addr "$ADMIN_ADDR" &
PROXY=$!
trap 'kill $APP $PROXY 2>/dev/null' EXIT INT TERM

i=0
until curl -sf "http://$ADMIN_ADDR/ready" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then echo "the proxy did not become ready" >&2; exit 1; fi
    sleep 0.1
done

cat <<MSG

Portcullis is enforcing proxy/demo/policy.yaml for demo/backend.
Only the frontend's identity may call the backend; kubelet's readiness
probe (GET /ready) is allowed for everyone. Try:

  curl -i http://$PROXY_ADDR/ready      # 200: the probe route is authorized
  curl -i http://$PROXY_ADDR/orders     # 403 + l5d-proxy-error: not the frontend
  curl -s http://$ADMIN_ADDR/metrics | grep authz
  curl -s http://$ADMIN_ADDR/policy

Ctrl-C to stop.
MSG
wait $PROXY
