#!/bin/sh
# Mints a demo mesh PKI with openssl: a root CA and, for each identity given,
# an ECDSA P-256 leaf valid for 30 days that works as TLS server and client
# (as a mesh identity issuer makes them).
#
#   scripts/mint-mesh-pki.sh DIR [NAME=]IDENTITY...
#
# Writes DIR/ca.pem and DIR/ca.key (the root; reused if present, so running
# it again rotates leaves under the same CA), and for each identity
# DIR/NAME.pem and DIR/NAME.key (NAME defaults to the identity itself), e.g.
#   scripts/mint-mesh-pki.sh pki web=web.emojivoto.serviceaccount.identity.linkerd.cluster.local
# An identity starting with spiffe:// gets that URI as its only SAN instead
# of a DNS name. Demo use only: the CA key sits next to the certificates.
set -eu

if [ "$#" -lt 2 ]; then
  echo "usage: $0 DIR [NAME=]IDENTITY..." >&2
  exit 2
fi
dir=$1
shift
mkdir -p "$dir"

if [ ! -f "$dir/ca.pem" ] || [ ! -f "$dir/ca.key" ]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 365 \
    -subj "/CN=portcullis demo root" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

ext=$(mktemp)
csr=$(mktemp)
trap 'rm -f "$ext" "$csr"' EXIT
for arg in "$@"; do
  case "$arg" in
    *=*) file=${arg%%=*}; id=${arg#*=} ;;
    *) file=; id=$arg ;;
  esac
  case "$id" in
    spiffe://*) san="URI:$id"; : "${file:=$(printf '%s' "$id" | sed 's|^spiffe://||; s|/|_|g')}" ;;
    *) san="DNS:$id"; : "${file:=$id}" ;;
  esac
  cat >"$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$san
EXT
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/$file.key" -out "$csr" -subj "/CN=$(printf '%.60s' "$file")"
  openssl x509 -req -in "$csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$ext" \
    -out "$dir/$file.pem"
  echo "$dir/$file.pem $dir/$file.key"
done
