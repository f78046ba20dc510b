#!/usr/bin/env bash
# Tether kickstart: install the agent if it is absent, then claim this node.
#
#   bash <(curl -sS https://CLOUD/kickstart.sh) --claim-token TOKEN \
#       --claim-rooms ROOM1,ROOM2 --claim-url https://CLOUD [--claim-proxy PROXY]
#
# Install source: `pip install SPEC` with `--package SPEC`, which the Cloud's
# admin points at wherever they publish the agent (a wheel URL, a private index
# spec, a path). There is no default: installing whatever a public index holds
# under the name "tether" could install someone else's code as root. This
# script never upgrades an existing install.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: kickstart.sh --claim-token TOKEN --claim-url URL [options]

  --claim-token TOKEN     the Space's claiming token
  --claim-rooms R1,R2     War Rooms to add the node to
  --claim-url URL         the Cloud's base URL (https://...)
  --claim-proxy PROXY     none | env | socks5[h]://[user:pass@]host:port | http://...
  --claim-id UUID         claim as this node id (a new identity)
  --prefix DIR            the agent's install prefix (TETHER_PREFIX)
  --package SPEC          what `pip install` installs when tether-claim is absent
                          (a wheel URL or path, or a spec for your own index)
  --insecure              do not verify the Cloud's TLS certificate (dangerous)
  --non-interactive       never ask anything (the default; accepted for compatibility)
  -h, --help              show this help
USAGE
}

die() { echo "kickstart: ERROR: $*" >&2; exit 1; }

token="" rooms="" url="" proxy="" claim_id="" prefix="" package="" insecure=0

need_value() { if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi; }

while [ "$#" -gt 0 ]; do
  case "$1" in
    --claim-token=*) token="${1#*=}" ;;
    --claim-token) need_value "$@"; token="$2"; shift ;;
    --claim-rooms=*) rooms="${1#*=}" ;;
    --claim-rooms) need_value "$@"; rooms="$2"; shift ;;
    --claim-url=*) url="${1#*=}" ;;
    --claim-url) need_value "$@"; url="$2"; shift ;;
    --claim-proxy=*) proxy="${1#*=}" ;;
    --claim-proxy) need_value "$@"; proxy="$2"; shift ;;
    --claim-id=*) claim_id="${1#*=}" ;;
    --claim-id) need_value "$@"; claim_id="$2"; shift ;;
    --prefix=*) prefix="${1#*=}" ;;
    --prefix) need_value "$@"; prefix="$2"; shift ;;
    --package=*) package="${1#*=}" ;;
    --package) need_value "$@"; package="$2"; shift ;;
    --insecure) insecure=1 ;;
    --non-interactive|--dont-wait) ;;
    -h|--help) usage; exit 0 ;;
    *) echo "kickstart: ERROR: unknown option '$1'" >&2; usage >&2; exit 1 ;;
  esac
  shift
done

if [ -z "$token" ] && [ -n "$url$rooms$proxy" ]; then
  die "--claim-token is needed to claim (a Space admin finds it on the Connect Nodes page)"
fi

if ! command -v tether-claim >/dev/null 2>&1; then
  [ -n "$package" ] || die "tether-claim is not installed and no --package SPEC was given: \
install the Tether agent first (pip install WHEEL_OR_PATH), or pass --package with the wheel \
your Cloud's admin publishes"
  echo "kickstart: tether-claim not found; installing '$package' with pip" >&2
  if command -v pip3 >/dev/null 2>&1; then pip=pip3
  elif command -v pip >/dev/null 2>&1; then pip=pip
  else die "neither tether-claim nor pip is installed: install Python 3.11+ and pip first"
  fi
  "$pip" install "$package" || die "pip install '$package' failed"
  command -v tether-claim >/dev/null 2>&1 \
    || die "'$package' was installed but tether-claim is not on PATH: add pip's bin directory to PATH"
fi

if [ -z "$token" ]; then
  echo "kickstart: the agent is installed; no --claim-token given, so not claiming." >&2
  exit 0
fi
[ -n "$url" ] || die "--claim-url is needed: the Cloud's base URL, e.g. https://cloud.example.com"

args=("-token=$token" "-url=$url")
[ -n "$rooms" ] && args+=("-rooms=$rooms")
[ -n "$proxy" ] && args+=("-proxy=$proxy")
[ -n "$claim_id" ] && args+=("-id=$claim_id")
[ "$insecure" = 1 ] && args+=("-insecure")
[ -n "$prefix" ] && args+=("--prefix" "$prefix")

set +e
tether-claim "${args[@]}"
rc=$?
set -e
exit "$rc"
