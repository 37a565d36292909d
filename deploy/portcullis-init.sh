#!/bin/sh
# portcullis-init: route every inbound TCP connection of a pod through the
# Portcullis proxy, as Linkerd's proxy-init does for linkerd-proxy.
#
# Runs once per pod, as an init container with NET_ADMIN and NET_RAW, in the
# pod's network namespace (or by hand in a VM's or test's namespace). It owns
# two chains of the nat table and nothing else:
#
#   PORTCULLIS_INBOUND  (jumped to from PREROUTING, for TCP arriving from the
#                        network): RETURN for the proxy's admin port and the
#                        skip list, then REDIRECT everything else to the
#                        proxy's inbound port. REDIRECT keeps the original
#                        destination for the proxy (SO_ORIGINAL_DST).
#   PORTCULLIS_OUTPUT   (jumped to from OUTPUT, for TCP sent inside the pod):
#                        RETURN for the proxy's own UID (the proxy never
#                        intercepts itself: no loops, even with --app-addr set
#                        to the pod IP), then TCP a process of the pod sends to
#                        the pod's own non-loopback address (it leaves through
#                        lo) goes through PORTCULLIS_INBOUND like traffic from
#                        outside, so the pod IP is never a way around policy.
#                        Loopback destinations (127.0.0.0/8, ::1) and traffic
#                        leaving the pod are untouched: Portcullis is an
#                        inbound proxy only.
#
# Idempotent: the rules are applied in one iptables-restore --noflush
# transaction that declares (creates or flushes) both chains and refills them,
# so re-running leaves exactly one copy of each rule and there is no moment
# when the chains are empty; a jump from PREROUTING/OUTPUT is added only when
# it is missing. --dry-run prints that transaction for a fresh namespace
# without touching the system (no root or iptables needed).
#
# POSIX sh; needs iptables (nft or legacy backend) with its -restore and
# -save companions. Exit status: 0 done, 1 iptables failed, 2 bad usage.

set -euf

CHAIN_IN=PORTCULLIS_INBOUND
CHAIN_OUT=PORTCULLIS_OUTPUT

usage() {
	cat <<'EOF'
Usage: portcullis-init.sh [OPTIONS]

Redirect all inbound TCP of this network namespace to the Portcullis proxy
(nat table, chains PORTCULLIS_INBOUND and PORTCULLIS_OUTPUT). Re-running is
safe: the chains are flushed and refilled atomically, jumps added once.

Options (each also read from the environment variable shown; flags win):
  --proxy-inbound-port PORT   proxy's inbound port, target of the redirect
                              [PORTCULLIS_PROXY_INBOUND_PORT, default 4143]
  --proxy-admin-port PORT     proxy's admin port, never redirected
                              [PORTCULLIS_PROXY_ADMIN_PORT, default 4191]
  --proxy-uid UID             UID the proxy runs as; its own traffic is
                              never redirected [PORTCULLIS_PROXY_UID, default 2102]
  --skip-inbound-ports LIST   comma-separated ports or ranges (22,8000-8010)
                              that bypass the proxy
                              [PORTCULLIS_SKIP_INBOUND_PORTS, default none]
  --iptables CMD              iptables binary: iptables, iptables-nft or
                              iptables-legacy (CMD-restore and CMD-save must
                              exist too) [PORTCULLIS_IPTABLES, default iptables]
  --ipv6                      also apply the rules with ip6tables
                              [PORTCULLIS_IPV6=true|false, default false]
  --ip6tables CMD             ip6tables binary, as --iptables
                              [PORTCULLIS_IP6TABLES, default ip6tables]
  --dry-run                   print the iptables-restore input for a fresh
                              namespace and change nothing
  --remove                    delete the jumps and both chains, then exit
  -h, --help                  show this help

Exit status: 0 done, 1 iptables failed, 2 bad usage.
EOF
}

die_usage() {
	echo "portcullis-init: $*" >&2
	echo "portcullis-init: see --help" >&2
	exit 2
}

die() {
	echo "portcullis-init: $*" >&2
	exit 1
}

# --- configuration: environment first, then flags -------------------------

inbound_port=${PORTCULLIS_PROXY_INBOUND_PORT:-4143}
admin_port=${PORTCULLIS_PROXY_ADMIN_PORT:-4191}
proxy_uid=${PORTCULLIS_PROXY_UID:-2102}
skip_inbound_ports=${PORTCULLIS_SKIP_INBOUND_PORTS:-}
iptables=${PORTCULLIS_IPTABLES:-iptables}
ip6tables=${PORTCULLIS_IP6TABLES:-ip6tables}
ipv6=${PORTCULLIS_IPV6:-false}
dry_run=false
remove=false

# A flag's value: "--flag VALUE" or "--flag=VALUE".
need_value() {
	[ "$#" -ge 2 ] || die_usage "$1 needs a value"
}

while [ "$#" -gt 0 ]; do
	case "$1" in
	--proxy-inbound-port=*) inbound_port=${1#*=} ;;
	--proxy-inbound-port) need_value "$@"; inbound_port=$2; shift ;;
	--proxy-admin-port=*) admin_port=${1#*=} ;;
	--proxy-admin-port) need_value "$@"; admin_port=$2; shift ;;
	--proxy-uid=*) proxy_uid=${1#*=} ;;
	--proxy-uid) need_value "$@"; proxy_uid=$2; shift ;;
	--skip-inbound-ports=*) skip_inbound_ports=${1#*=} ;;
	--skip-inbound-ports) need_value "$@"; skip_inbound_ports=$2; shift ;;
	--iptables=*) iptables=${1#*=} ;;
	--iptables) need_value "$@"; iptables=$2; shift ;;
	--ip6tables=*) ip6tables=${1#*=} ;;
	--ip6tables) need_value "$@"; ip6tables=$2; shift ;;
	--ipv6) ipv6=true ;;
	--dry-run) dry_run=true ;;
	--remove) remove=true ;;
	-h | --help) usage; exit 0 ;;
	*) die_usage "unknown argument '$1'" ;;
	esac
	shift
done

# --- validation: every value ends up in an iptables rule, so only digits,
# ranges and known words pass (no way to smuggle in extra rule options) ----

# is_port NAME VALUE: VALUE is a decimal port 1..65535.
check_port() {
	case "$2" in
	'' | *[!0-9]*) die_usage "$1: '$2' is not a port number" ;;
	esac
	# strip leading zeros so sh arithmetic does not read octal
	_p=$(echo "$2" | sed 's/^0*//')
	[ -n "$_p" ] && [ "${#_p}" -le 5 ] && [ "$_p" -le 65535 ] ||
		die_usage "$1: '$2' is not a port in 1-65535"
	echo "$_p"
}

inbound_port=$(check_port --proxy-inbound-port "$inbound_port")
admin_port=$(check_port --proxy-admin-port "$admin_port")
[ "$inbound_port" != "$admin_port" ] ||
	die_usage "--proxy-inbound-port and --proxy-admin-port are both $inbound_port"

case "$proxy_uid" in
'' | *[!0-9]*) die_usage "--proxy-uid: '$proxy_uid' is not a numeric UID" ;;
esac
[ "${#proxy_uid}" -le 10 ] || die_usage "--proxy-uid: '$proxy_uid' is too large"

case "$ipv6" in
true | 1 | yes) ipv6=true ;;
false | 0 | no | '') ipv6=false ;;
*) die_usage "PORTCULLIS_IPV6: '$ipv6' is not true or false" ;;
esac

# The skip list, normalised to iptables --dport syntax (N or N:M), one per
# line. Spaces around commas are allowed; empty entries are not.
skip_dports=""
skip_list=$(echo "$skip_inbound_ports" | tr -d ' ')
case "$skip_list" in
,* | *, | *,,*) die_usage "--skip-inbound-ports: empty entry in '$skip_inbound_ports'" ;;
esac
old_ifs=$IFS
IFS=,
for entry in $skip_list; do
	IFS=$old_ifs
	case "$entry" in
	*-*)
		lo=$(check_port --skip-inbound-ports "${entry%%-*}")
		hi=$(check_port --skip-inbound-ports "${entry#*-}")
		[ "$lo" -le "$hi" ] ||
			die_usage "--skip-inbound-ports: range '$entry' is backwards"
		dport="$lo:$hi"
		;;
	*) dport=$(check_port --skip-inbound-ports "$entry") ;;
	esac
	skip_dports="$skip_dports $dport"
done
IFS=$old_ifs

# --- the rules --------------------------------------------------------------

# Rules are written exactly as iptables-save prints them, so that what
# --dry-run shows can be compared line by line with the live table.

# own_rules LOOPBACK: the chain declarations and contents, without jumps.
own_rules() {
	echo "*nat"
	echo ":$CHAIN_IN - [0:0]"
	echo ":$CHAIN_OUT - [0:0]"
	echo "-A $CHAIN_IN -p tcp -m tcp --dport $admin_port -m comment --comment \"portcullis: proxy admin port\" -j RETURN"
	for dport in $skip_dports; do
		echo "-A $CHAIN_IN -p tcp -m tcp --dport $dport -m comment --comment \"portcullis: skip-inbound-ports\" -j RETURN"
	done
	echo "-A $CHAIN_IN -p tcp -m comment --comment \"portcullis: redirect to proxy\" -j REDIRECT --to-ports $inbound_port"
	echo "-A $CHAIN_OUT -m owner --uid-owner $proxy_uid -m comment --comment \"portcullis: proxy uid\" -j RETURN"
	echo "-A $CHAIN_OUT ! -d $1 -o lo -p tcp -m comment --comment \"portcullis: to own pod address\" -j $CHAIN_IN"
}

JUMP_PREROUTING="-p tcp -j $CHAIN_IN"
JUMP_OUTPUT="-p tcp -j $CHAIN_OUT"

# transaction CMD LOOPBACK FRESH: the iptables-restore input. FRESH=true
# always includes the jumps (what a new namespace needs, shown by --dry-run);
# otherwise a jump is included only when CMD does not already have it.
transaction() {
	own_rules "$2"
	if [ "$3" = true ] || ! "$1" -t nat -C PREROUTING $JUMP_PREROUTING >/dev/null 2>&1; then
		echo "-A PREROUTING $JUMP_PREROUTING"
	fi
	if [ "$3" = true ] || ! "$1" -t nat -C OUTPUT $JUMP_OUTPUT >/dev/null 2>&1; then
		echo "-A OUTPUT $JUMP_OUTPUT"
	fi
	echo "COMMIT"
}

require() {
	command -v "$1" >/dev/null 2>&1 ||
		die "'$1' not found: install iptables, or name the binary with --iptables/--ip6tables"
}

apply() { # CMD LOOPBACK
	require "$1"
	require "$1-restore"
	require "$1-save"
	# Built before the restore starts: iptables-legacy-restore holds the
	# xtables lock while it reads, so the -C checks inside transaction would
	# wait for it forever if they ran on the other side of a pipe.
	rules=$(transaction "$1" "$2" false)
	printf '%s\n' "$rules" | "$1-restore" --noflush ||
		die "$1-restore failed (does this container have NET_ADMIN and NET_RAW?)"
	echo "portcullis-init: $1 nat table now:"
	"$1-save" -t nat
}

remove_rules() { # CMD
	require "$1"
	while "$1" -t nat -C PREROUTING $JUMP_PREROUTING >/dev/null 2>&1; do
		"$1" -t nat -D PREROUTING $JUMP_PREROUTING || die "$1: cannot delete the PREROUTING jump"
	done
	while "$1" -t nat -C OUTPUT $JUMP_OUTPUT >/dev/null 2>&1; do
		"$1" -t nat -D OUTPUT $JUMP_OUTPUT || die "$1: cannot delete the OUTPUT jump"
	done
	# flush both before deleting either: PORTCULLIS_OUTPUT refers to PORTCULLIS_INBOUND
	for chain in $CHAIN_OUT $CHAIN_IN; do
		if "$1" -t nat -n -L "$chain" >/dev/null 2>&1; then
			"$1" -t nat -F "$chain" || die "$1: cannot flush $chain"
		fi
	done
	for chain in $CHAIN_OUT $CHAIN_IN; do
		if "$1" -t nat -n -L "$chain" >/dev/null 2>&1; then
			"$1" -t nat -X "$chain" || die "$1: cannot delete $chain"
		fi
	done
	echo "portcullis-init: removed $CHAIN_IN and $CHAIN_OUT ($1)"
}

# --- main -------------------------------------------------------------------

if [ "$dry_run" = true ]; then
	if [ "$remove" = true ]; then
		die_usage "--dry-run and --remove cannot be combined"
	fi
	echo "# $iptables-restore --noflush"
	transaction "$iptables" 127.0.0.0/8 true
	if [ "$ipv6" = true ]; then
		echo "# $ip6tables-restore --noflush"
		transaction "$ip6tables" ::1/128 true
	fi
	exit 0
fi

if [ "$remove" = true ]; then
	remove_rules "$iptables"
	if [ "$ipv6" = true ]; then
		remove_rules "$ip6tables"
	fi
	exit 0
fi

apply "$iptables" 127.0.0.0/8
if [ "$ipv6" = true ]; then
	apply "$ip6tables" ::1/128
fi
