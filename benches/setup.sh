#!/usr/bin/env bash
# Installs the peers and load tools the load harness (benches/load) drives:
# HAProxy, nginx (with its stream module, for the TCP bulk scenario), wrk,
# h2load (nghttp2-client), iperf3 and openssl. Idempotent: a tool already on
# PATH is not reinstalled, and nothing is done when everything is present.
#
# Called by hand before `cargo bench --bench load`, and by .ci/run so that
# tests/bench_smoke.rs exercises every target. Debian/Ubuntu only (apt-get);
# must run as root or with sudo available.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
# Debian ships nginx's stream (L4) module as a dynamic module.
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)

if [ "${#need[@]}" -eq 0 ]; then
  echo "benches/setup.sh: all load tools present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

echo "benches/setup.sh: installing ${need[*]}"
# Package scripts must not start system-wide haproxy/nginx/iperf3 daemons: the
# harness runs its own instances with generated configs on free ports, and a
# stray daemon would steal CPU from the measurement. policy-rc.d (exit 101 =
# "action forbidden") is honoured by invoke-rc.d; remove it afterwards unless
# it existed before.
created_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
cleanup() {
  if [ -n "$created_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
echo "benches/setup.sh: done"
