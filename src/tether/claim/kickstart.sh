#!/usr/bin/env bash
# Tether kickstart: install the agent from your own Cloud, start it as a
# service, claim this node and wait until the Cloud has it live.
#
#   curl -fsSk -o /tmp/tether-kickstart.sh https://CLOUD/kickstart.sh
#   bash /tmp/tether-kickstart.sh --claim-ca-fingerprint SHA256 \
#       --claim-token TOKEN --claim-rooms ROOM1,ROOM2 --claim-url https://CLOUD
#
# Everything comes from the Cloud: its CA (accepted only if its SHA-256 is the
# one in --claim-ca-fingerprint), then the agent wheel and every dependency
# from /downloads/, each checked against the Cloud's SHA256SUMS, installed with
# `pip install --no-index` into a virtualenv (default /opt/tether). Nothing is
# fetched from a package index.
#
# Run again without claim options: upgrades the agent from the Cloud.
# With claim options on a claimed node: changes nothing and says so.
# --uninstall: removes what it made.
#
# Exit codes are tether-claim's (docs/claiming.md): 0 claimed (or nothing to
# do), 1 bad argument or missing Python, 2 files, 4 cannot reach the Cloud or
# its CA does not match, 5 claimed but not live in time, 6 wrong user, 7-17
# the Cloud refused the claim.
set -euo pipefail
umask 022

EXIT_BAD_ARGUMENT=1
EXIT_FILES=2
EXIT_CANNOT_CONNECT=4
EXIT_NOT_LIVE=5
EXIT_WRONG_USER=6
MIN_PYTHON_MINOR=11
SERVICE=tether-agent
AGENT_USER=tether
LAUNCHD_LABEL=io.tether.agent

usage() {
  cat <<'USAGE'
usage: kickstart.sh [--claim-token TOKEN --claim-url URL [claim options]] [options]

Claim options (all of them go to tether-claim):
  --claim-token TOKEN          the Space's claiming token
  --claim-rooms R1,R2          War Rooms to add the node to
  --claim-url URL              the Cloud's base URL (https://...)
  --claim-proxy PROXY          none | env | socks5[h]://[user:pass@]host:port |
                               http[s]://[user:pass@]host:port (downloads use it too)
  --claim-id UUID              claim as this node id (a new identity)
  --claim-ca-fingerprint FP    SHA-256 of the Cloud's CA (AA:BB:... or sha256:hex):
                               its /ca.pem is accepted only if it matches
  --claim-ca-file FILE         the Cloud's CA certificate (PEM), instead of downloading it
  --insecure                   do not verify the Cloud's TLS certificate (dangerous)

Install options:
  --install DIR                where the agent's virtualenv goes (default /opt/tether as
                               root; required otherwise: an unprivileged install)
  --prefix DIR                 the agent's files (etc/, var/): default / as root,
                               else the --install DIR
  --cloud-url URL              where to download from (default: --claim-url, or the
                               Cloud this node is claimed into)
  --wait SECONDS               how long to wait for the node to be live (default 60)
  --uninstall                  stop and remove what kickstart installed
  --non-interactive, --dont-wait   accepted for compatibility (never asks)
  -h, --help                   show this help
USAGE
}

say() { printf 'kickstart: %s\n' "$*" >&2; }
die() {
  local code="$1"
  shift
  printf 'kickstart: ERROR: %s\n' "$*" >&2
  exit "$code"
}

# -- arguments ---------------------------------------------------------------

token="" rooms="" url="" proxy="" claim_id="" ca_fp="" ca_file="" insecure=0
install_dir="" prefix="" cloud_url="" wait_s=60 uninstall=0 print_service="" default_install=0

need_value() {
  if [ "$#" -lt 2 ] || [ -z "$2" ]; then
    die "$EXIT_BAD_ARGUMENT" "$1 needs a value"
  fi
}

while [ "$#" -gt 0 ]; do
  opt="$1"
  val=""
  case "$opt" in
    --*=*)
      val="${opt#*=}"
      opt="${opt%%=*}"
      ;;
    --claim-token | --claim-rooms | --claim-url | --claim-proxy | --claim-id | \
      --claim-ca-fingerprint | --claim-ca-file | --install | --prefix | --cloud-url | \
      --wait | --print-service)
      need_value "$@"
      val="$2"
      shift
      ;;
  esac
  case "$opt" in
    --claim-token) token="$val" ;;
    --claim-rooms) rooms="$val" ;;
    --claim-url) url="$val" ;;
    --claim-proxy) proxy="$val" ;;
    --claim-id) claim_id="$val" ;;
    --claim-ca-fingerprint) ca_fp="$val" ;;
    --claim-ca-file) ca_file="$val" ;;
    --install) install_dir="$val" ;;
    --prefix) prefix="$val" ;;
    --cloud-url) cloud_url="$val" ;;
    --wait) wait_s="$val" ;;
    --print-service) print_service="$val" ;;
    --insecure | --claim-insecure) insecure=1 ;;
    --uninstall) uninstall=1 ;;
    --non-interactive | --dont-wait) ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      printf "kickstart: ERROR: unknown option '%s'\n" "$opt" >&2
      usage >&2
      exit "$EXIT_BAD_ARGUMENT"
      ;;
  esac
  shift
done

# Every value is checked against a strict character set before use. Values are
# only ever passed as single quoted arguments, never evaluated, but the paths
# also go into a systemd unit and a plist, so nothing else is allowed in.
matches() { [[ "$1" =~ $2 ]]; }
check() {
  local name="$1" value="$2" re="$3" what="$4"
  if [ -n "$value" ] && ! matches "$value" "$re"; then
    die "$EXIT_BAD_ARGUMENT" "$name is not $what: '$value'"
  fi
}
HOST_RE='([A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*|\[[0-9A-Fa-f:.]+\])'
URL_RE="^https://${HOST_RE}(:[0-9]{1,5})?/?$"
check --claim-token "$token" '^[A-Za-z0-9._~+/=-]{1,512}$' "a claiming token (copy it from Connect Nodes)"
check --claim-rooms "$rooms" '^[A-Za-z0-9-]{1,64}(,[A-Za-z0-9-]{1,64}){0,99}$' \
  "a comma-separated list of War Room ids"
check --claim-url "$url" "$URL_RE" "an https URL of the Cloud (https://host[:port])"
check --cloud-url "$cloud_url" "$URL_RE" "an https URL of the Cloud (https://host[:port])"
check --claim-proxy "$proxy" \
  "^(none|env|(socks5h?|https?)://([A-Za-z0-9._~%!*+,;=-]+(:[A-Za-z0-9._~%!*+,;=-]*)?@)?${HOST_RE}(:[0-9]{1,5})?/?)$" \
  "none, env or a socks5://, socks5h://, http:// or https:// proxy URL (percent-encode other characters)"
check --claim-id "$claim_id" '^[0-9A-Fa-f]{8}-?([0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}$' "a UUID"
check --claim-ca-fingerprint "$ca_fp" '^(sha256:|SHA256:)?([0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$' \
  "a SHA-256 fingerprint (64 hex digits, colons allowed)"
check --claim-ca-file "$ca_file" '^[A-Za-z0-9._/+-]+$' "a file path of plain characters"
check --install "$install_dir" '^/[A-Za-z0-9._/+-]*$' "an absolute path of plain characters"
check --prefix "$prefix" '^/[A-Za-z0-9._/+-]*$' "an absolute path of plain characters"
check --wait "$wait_s" '^[0-9]{1,4}$' "a number of seconds"
url="${url%/}"
cloud_url="${cloud_url%/}"

if [ -z "$token" ] && [ -n "$url$rooms$proxy$claim_id" ]; then
  die "$EXIT_BAD_ARGUMENT" "--claim-token is needed to claim (a Space admin finds it on the Connect Nodes page)"
fi
if [ -n "$token" ] && [ -z "$url" ]; then
  die "$EXIT_BAD_ARGUMENT" "--claim-url is needed: the Cloud's base URL, e.g. https://cloud.example.com"
fi

# -- where things go -----------------------------------------------------------

os="$(uname -s)"
case "$os" in
  Linux | Darwin) ;;
  *) die "$EXIT_BAD_ARGUMENT" "$os is not supported: the agent runs on Linux and macOS" ;;
esac
root=0
[ "$(id -u)" = 0 ] && root=1
if [ -z "$install_dir" ]; then
  if [ "$root" = 0 ] && [ -z "$print_service" ]; then
    die "$EXIT_WRONG_USER" "run this as root (sudo) to install under /opt/tether, or give --install DIR for an unprivileged install"
  fi
  install_dir=/opt/tether
  default_install=1
fi
install_dir="${install_dir%/}"
if [ -z "$prefix" ]; then
  if [ "$default_install" = 1 ]; then
    prefix=/
  else
    prefix="$install_dir"
  fi
fi
prefix="${prefix%/}" # "" is the packaged layout, /
prefix_arg="${prefix:-/}"
venv="$install_dir/venv"
etc_dir="$prefix/etc/tether"
lib_dir="$prefix/var/lib/tether"
log_dir="$prefix/var/log/tether"
run_dir="$prefix/var/run/tether"
cloud_dir="$lib_dir/cloud.d"
made="$install_dir/kickstart.made" # what this script created, for --uninstall
pidfile="$run_dir/agent.pid"
unit_file=/etc/systemd/system/$SERVICE.service
if [ "$root" = 1 ]; then
  plist_file=/Library/LaunchDaemons/$LAUNCHD_LABEL.plist
else
  plist_file="${HOME:-/nonexistent}/Library/LaunchAgents/$LAUNCHD_LABEL.plist"
fi
run_user=""
[ "$root" = 1 ] && [ "$os" = Linux ] && run_user=$AGENT_USER

# -- the service definitions ---------------------------------------------------

systemd_unit() {
  local rw_paths=""
  # ProtectSystem=strict: the files of another prefix must be made writable.
  if [ -n "$prefix" ]; then
    rw_paths="ReadWritePaths=$lib_dir $log_dir $run_dir
"
  fi
  # packaging/systemd/tether-agent.service is this with the default paths.
  cat <<UNIT
# The Tether agent. Installed by kickstart.sh; see docs/agent.md.
[Unit]
Description=Tether agent: metrics and the Cloud link
Documentation=https://github.com/tether/tether/blob/main/docs/agent.md
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=$AGENT_USER
Group=$AGENT_USER
Environment=TETHER_PREFIX=$prefix_arg
ExecStart=$venv/bin/tether-agent -D
# Started once the agent answers on its control socket (bounded by TimeoutStartSec).
ExecStartPost=/bin/sh -c 'until $venv/bin/tether-cli --timeout 1 ping >/dev/null 2>&1; do sleep 0.2; done'
TimeoutStartSec=30
ExecReload=$venv/bin/tether-cli reload-claiming-state
# SIGTERM: the agent tells the Cloud it is stopping (Goodbye) and closes the link.
KillSignal=SIGTERM
TimeoutStopSec=20
Restart=on-failure
RestartSec=5
StateDirectory=tether
StateDirectoryMode=0750
LogsDirectory=tether
RuntimeDirectory=tether
ConfigurationDirectory=tether
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
${rw_paths}
[Install]
WantedBy=multi-user.target
UNIT
}

launchd_plist() {
  cat <<PLIST
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>$LAUNCHD_LABEL</string>
  <key>ProgramArguments</key>
  <array>
    <string>$venv/bin/tether-agent</string>
    <string>-D</string>
  </array>
  <key>EnvironmentVariables</key>
  <dict>
    <key>TETHER_PREFIX</key>
    <string>$prefix_arg</string>
  </dict>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <dict>
    <key>SuccessfulExit</key>
    <false/>
  </dict>
  <key>ExitTimeOut</key>
  <integer>20</integer>
  <key>StandardErrorPath</key>
  <string>$log_dir/agent.out</string>
</dict>
</plist>
PLIST
}

case "$print_service" in
  "") ;;
  systemd)
    systemd_unit
    exit 0
    ;;
  launchd)
    launchd_plist
    exit 0
    ;;
  *) die "$EXIT_BAD_ARGUMENT" "--print-service takes systemd or launchd" ;;
esac

# -- helpers -------------------------------------------------------------------

record() { printf '%s\n' "$*" >>"$made"; }
has_systemd() { [ "$os" = Linux ] && [ "$root" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }
has_launchd() { [ "$os" = Darwin ] && command -v launchctl >/dev/null 2>&1; }

agent_cli() { TETHER_PREFIX="$prefix_arg" "$venv/bin/tether-cli" "$@"; }

claimed_id() {
  if [ -r "$cloud_dir/claimed_id" ]; then
    tr -d '[:space:]' <"$cloud_dir/claimed_id"
  fi
}

stop_agent() {
  if has_systemd && [ -f "$unit_file" ]; then
    systemctl stop "$SERVICE" >/dev/null 2>&1 || true
  elif has_launchd && [ -f "$plist_file" ]; then
    launchctl unload "$plist_file" >/dev/null 2>&1 || true
  fi
  if [ -r "$pidfile" ]; then
    local pid
    pid="$(tr -dc '0-9' <"$pidfile")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$pidfile"
  fi
}

# -- --uninstall ---------------------------------------------------------------

if [ "$uninstall" = 1 ]; then
  [ -f "$made" ] || die "$EXIT_FILES" "$made is missing: nothing installed by kickstart at --install $install_dir"
  id_before="$(claimed_id || true)"
  stop_agent
  if has_systemd && [ -f "$unit_file" ]; then
    systemctl disable "$SERVICE" >/dev/null 2>&1 || true
  fi
  # Newest first; only the kinds of entries this script writes.
  tac_lines="$(awk '{ l[NR] = $0 } END { for (i = NR; i > 0; i--) print l[i] }' "$made")"
  while IFS=' ' read -r kind path; do
    case "$kind" in
      file) rm -f "$path" && say "removed $path" ;;
      dir)
        # Only what this script makes: the venv and the agent's own directories.
        case "$path" in
          */venv | */tether) rm -rf "$path" && say "removed $path" ;;
        esac
        ;;
      user)
        if command -v userdel >/dev/null 2>&1; then
          userdel "$path" >/dev/null 2>&1 && say "removed the user $path"
        fi
        ;;
    esac
  done <<<"$tac_lines"
  if has_systemd; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
  rm -f "$made"
  rmdir "$install_dir" 2>/dev/null || true
  say "the Tether agent is uninstalled."
  if [ -n "$id_before" ]; then
    say "node $id_before is still listed in its Space: remove it there (Nodes, Remove) to revoke its credential."
  fi
  exit 0
fi

# -- a claimed node with claim options: nothing to do ------------------------

current_id="$(claimed_id || true)"
if [ -n "$token" ] && [ -n "$current_id" ] && [ -x "$venv/bin/tether-agent" ]; then
  if [ -z "$claim_id" ] || [ "$(printf '%s' "$claim_id" | tr 'A-F' 'a-f')" = "$current_id" ]; then
    say "this node is already claimed as node $current_id ($cloud_dir/claimed_id): nothing changed."
    say "To upgrade the agent run kickstart.sh without claim options; to claim it into another Space as a new node add --claim-id \$(uuidgen)."
    exit 0
  fi
fi

# -- Python --------------------------------------------------------------------

python_install_hint() {
  if [ "$os" = Darwin ]; then
    echo "brew install python@3.12"
    return
  fi
  local ids=""
  if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    ids="$(. /etc/os-release && echo "${ID:-} ${ID_LIKE:-}")"
  fi
  case " $ids " in
    *" debian "* | *" ubuntu "*) echo "apt-get install -y python3 python3-venv" ;;
    *" fedora "* | *" rhel "* | *" centos "*) echo "dnf install -y python3.11" ;;
    *" suse "* | *" opensuse "*) echo "zypper install -y python311" ;;
    *" alpine "*) echo "apk add python3" ;;
    *" arch "*) echo "pacman -S --noconfirm python" ;;
    *) echo "install Python 3.11 or newer with its venv module from your distribution" ;;
  esac
}

python=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
    "$candidate" -c "import sys; sys.exit(sys.version_info < (3, $MIN_PYTHON_MINOR))" 2>/dev/null; then
    python="$(command -v "$candidate")"
    break
  fi
done
if [ -z "$python" ]; then
  die "$EXIT_BAD_ARGUMENT" "the agent needs Python 3.$MIN_PYTHON_MINOR or newer; install it with: $(python_install_hint)"
fi
if ! "$python" -c "import venv, ensurepip" 2>/dev/null; then
  die "$EXIT_BAD_ARGUMENT" "$python has no venv module (with ensurepip); install it with: $(python_install_hint)"
fi

# -- the Cloud and its CA --------------------------------------------------------

if [ -z "$cloud_url" ]; then
  cloud_url="$url"
fi
if [ -z "$cloud_url" ] && [ -r "$cloud_dir/cloud.conf" ]; then
  cloud_url="$(sed -n 's/^[[:space:]]*cloud base url[[:space:]]*=[[:space:]]*//p' "$cloud_dir/cloud.conf" | head -n 1)"
  check "cloud base url in $cloud_dir/cloud.conf" "$cloud_url" "$URL_RE" "an https URL"
fi
if [ -z "$cloud_url" ]; then
  die "$EXIT_BAD_ARGUMENT" "no Cloud to install from: give --claim-url (with --claim-token) or --cloud-url"
fi
cloud_url="${cloud_url%/}"

work="$(mktemp -d "${TMPDIR:-/tmp}/tether-kickstart.XXXXXX")"
trap 'rm -rf "$work"' EXIT

curl_args=(-fsS --retry 2 --connect-timeout 10)
case "$proxy" in
  "" | env) ;;
  none) curl_args+=(--noproxy '*') ;;
  *) curl_args+=(--proxy "$proxy") ;;
esac

fingerprint_of() {
  # SHA-256 of the certificate's DER bytes, as `openssl x509 -fingerprint -sha256`.
  "$python" -c 'import hashlib, ssl, sys
print(hashlib.sha256(ssl.PEM_cert_to_DER_cert(open(sys.argv[1]).read())).hexdigest())' "$1" 2>/dev/null
}
normal_fp() { printf '%s' "${1#*256:}" | tr -d ':' | tr 'A-F' 'a-f'; }

ca=""
if [ -n "$ca_file" ]; then
  [ -r "$ca_file" ] || die "$EXIT_BAD_ARGUMENT" "--claim-ca-file $ca_file cannot be read"
  cp "$ca_file" "$work/ca.pem"
  ca="$work/ca.pem"
elif [ -n "$ca_fp" ]; then
  # -k for this one download only: the fingerprint check below is the trust.
  curl "${curl_args[@]}" -k -o "$work/ca.pem" "$cloud_url/ca.pem" ||
    die "$EXIT_CANNOT_CONNECT" "cannot download the Cloud's CA from $cloud_url/ca.pem"
  ca="$work/ca.pem"
elif [ -r "$cloud_dir/cloud_fullchain.pem" ]; then
  ca="$cloud_dir/cloud_fullchain.pem"
fi
if [ -n "$ca_fp" ]; then
  got="$(fingerprint_of "$ca" || true)"
  [ -n "$got" ] || die "$EXIT_CANNOT_CONNECT" "the Cloud's CA ($cloud_url/ca.pem) is not a PEM certificate"
  if [ "$got" != "$(normal_fp "$ca_fp")" ]; then
    die "$EXIT_CANNOT_CONNECT" "the Cloud's CA has SHA-256 $got, not the $(normal_fp "$ca_fp") this command carries: this is not your Cloud, or its CA changed. Nothing was installed."
  fi
  say "the Cloud's CA matches the fingerprint"
fi
if [ "$insecure" = 1 ]; then
  say "WARNING: --insecure: the Cloud's certificate is not verified; anyone on the path can impersonate it"
  curl_args+=(-k)
elif [ -n "$ca" ]; then
  curl_args+=(--cacert "$ca")
fi

fetch() {
  curl "${curl_args[@]}" -o "$2" "$cloud_url/$1" ||
    die "$EXIT_CANNOT_CONNECT" "cannot download $cloud_url/$1 (is the Cloud reachable, and its certificate trusted? give --claim-ca-fingerprint)"
}

# -- the agent from the Cloud's wheelhouse --------------------------------------

arch="$(uname -m)"
wanted() {
  case "$1" in
    *-none-any.whl) return 0 ;;
  esac
  if [ "$os" = Linux ]; then
    case "$1" in *linux*"_$arch"*.whl) return 0 ;; esac
  else
    case "$1" in *macosx*"_$arch"*.whl | *macosx*universal2*.whl) return 0 ;; esac
  fi
  return 1
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | cut -d' ' -f1
  else
    "$python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
  fi
}

started_at="$(date +%s)"
mkdir -p "$work/wheels"
fetch downloads/SHA256SUMS "$work/SHA256SUMS"
version=""
count=0
while IFS= read -r line; do
  [ -n "$line" ] || continue
  matches "$line" '^[0-9a-f]{64}  [A-Za-z0-9][A-Za-z0-9._+-]*\.whl$' ||
    die "$EXIT_CANNOT_CONNECT" "the Cloud's SHA256SUMS has a line that is not a checksum of a wheel: '$line'"
  sum="${line%%  *}"
  name="${line#*  }"
  wanted "$name" || continue
  fetch "downloads/$name" "$work/wheels/$name"
  [ "$(sha256_of "$work/wheels/$name")" = "$sum" ] ||
    die "$EXIT_CANNOT_CONNECT" "$name from the Cloud does not match its checksum: nothing was installed"
  count=$((count + 1))
  case "$name" in tether-*-py3-none-any.whl)
    version="${name#tether-}"
    version="${version%%-*}"
    ;;
  esac
done <"$work/SHA256SUMS"
[ -n "$version" ] || die "$EXIT_CANNOT_CONNECT" "the Cloud's /downloads/ holds no agent wheel"
say "downloaded tether $version and $((count - 1)) dependencies from $cloud_url/downloads/ (checksums verified)"

before=""
if [ -x "$venv/bin/python" ]; then
  before="$("$venv/bin/python" -c 'import tether; print(tether.__version__)' 2>/dev/null || true)"
fi
mkdir -p "$install_dir" || die "$EXIT_FILES" "cannot create $install_dir"
[ -f "$made" ] || : >"$made"
if [ ! -x "$venv/bin/pip" ]; then
  "$python" -m venv "$venv" || die "$EXIT_FILES" "cannot create a virtualenv in $venv"
  record dir "$venv"
fi
if ! PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/pip" install -q --no-index \
  --find-links "$work/wheels" --upgrade "tether==$version" >"$work/pip.log" 2>&1; then
  cat "$work/pip.log" >&2
  problem="$(curl "${curl_args[@]}" "$cloud_url/downloads/?format=json" 2>/dev/null |
    "$python" -c 'import json, sys; print(json.load(sys.stdin).get("problem") or "")' 2>/dev/null || true)"
  [ -z "$problem" ] || say "the Cloud says: $problem"
  die "$EXIT_FILES" "pip could not install the agent from the Cloud's wheels (above)"
fi
installed_at="$(date +%s)"
if [ -z "$before" ]; then
  say "installed tether $version in $venv ($((installed_at - started_at)) s)"
elif [ "$before" = "$version" ]; then
  say "the agent is at version $version, the Cloud's"
else
  say "upgraded the agent from $before to $version"
fi
if [ "$root" = 1 ]; then
  for cmd in tether-agent tether-cli tether-claim; do
    if [ ! -e "/usr/local/bin/$cmd" ]; then
      mkdir -p /usr/local/bin
      ln -s "$venv/bin/$cmd" "/usr/local/bin/$cmd" && record file "/usr/local/bin/$cmd"
    fi
  done
fi

# -- user, files ----------------------------------------------------------------

if [ -n "$run_user" ] && ! id "$run_user" >/dev/null 2>&1; then
  if command -v useradd >/dev/null 2>&1; then
    useradd --system --user-group --home-dir "$lib_dir" --no-create-home \
      --shell /usr/sbin/nologin "$run_user" || die "$EXIT_FILES" "cannot create the user $run_user"
  elif command -v adduser >/dev/null 2>&1; then
    adduser -S -D -H -h "$lib_dir" -s /sbin/nologin "$run_user" || die "$EXIT_FILES" "cannot create the user $run_user"
  else
    die "$EXIT_FILES" "cannot create the user $run_user: neither useradd nor adduser is installed"
  fi
  record user "$run_user"
  say "created the system user $run_user"
fi
for d in "$etc_dir" "$lib_dir" "$log_dir" "$run_dir"; do
  if [ ! -d "$d" ]; then
    mkdir -p "$d" || die "$EXIT_FILES" "cannot create $d"
    record dir "$d"
  fi
done
if [ ! -d "$cloud_dir" ]; then
  mkdir -m 0770 "$cloud_dir" || die "$EXIT_FILES" "cannot create $cloud_dir"
fi
if [ ! -f "$etc_dir/tether.conf" ]; then
  {
    echo "# Written by kickstart.sh; see docs/agent.md for every setting."
    echo "[global]"
    [ -z "$run_user" ] || echo "    run as user = $run_user"
  } >"$etc_dir/tether.conf"
fi
if [ -n "$ca" ] && [ "$ca" != "$cloud_dir/cloud_fullchain.pem" ]; then
  install -m 0644 "$ca" "$cloud_dir/cloud_fullchain.pem" || die "$EXIT_FILES" "cannot write $cloud_dir/cloud_fullchain.pem"
  say "the Cloud's CA is trusted by the agent: $cloud_dir/cloud_fullchain.pem"
fi
if [ -n "$run_user" ]; then
  chown -R "$run_user:$run_user" "$lib_dir" "$log_dir" "$run_dir"
  chmod 0750 "$lib_dir"
fi

# -- the service --------------------------------------------------------------

start_agent() {
  if has_systemd; then
    if ! [ -f "$unit_file" ] || ! cmp -s <(systemd_unit) "$unit_file"; then
      [ -f "$unit_file" ] || record file "$unit_file"
      systemd_unit >"$unit_file"
      systemctl daemon-reload
    fi
    systemctl enable "$SERVICE" >/dev/null 2>&1 || true
    systemctl restart "$SERVICE" || die "$EXIT_FILES" "systemctl could not start $SERVICE: see journalctl -u $SERVICE"
    say "started the systemd service $SERVICE (enabled at boot)"
  elif has_launchd; then
    mkdir -p "$(dirname "$plist_file")"
    [ -f "$plist_file" ] || record file "$plist_file"
    launchd_plist >"$plist_file"
    launchctl unload "$plist_file" >/dev/null 2>&1 || true
    launchctl load -w "$plist_file" || die "$EXIT_FILES" "launchctl could not load $plist_file"
    say "started the launchd service $LAUNCHD_LABEL"
  else
    stop_agent
    TETHER_PREFIX="$prefix_arg" nohup "$venv/bin/tether-agent" -D -P "$pidfile" \
      >>"$log_dir/agent.out" 2>&1 </dev/null &
    say "no systemd or launchd here: started the agent with nohup (pid $!, output in $log_dir/agent.out); it will not start again at boot: add '$venv/bin/tether-agent -D' (with TETHER_PREFIX=$prefix_arg) to your init system"
  fi
  for _ in $(seq 1 150); do
    agent_cli --timeout 1 ping >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$EXIT_FILES" "the agent did not start: see $log_dir/error.log and $log_dir/agent.out"
}

if [ -z "$token" ]; then
  if [ -z "$before" ] || [ "$before" != "$version" ] || ! agent_cli --timeout 2 ping >/dev/null 2>&1; then
    start_agent
  fi
  say "no --claim-token given, so not claiming."
  exit 0
fi
if [ -z "$before" ] || [ "$before" != "$version" ] || ! agent_cli --timeout 2 ping >/dev/null 2>&1; then
  start_agent
fi

# -- claim, then wait for live ----------------------------------------------------

args=("-token=$token" "-url=$url" "--prefix" "$prefix_arg" "--json")
[ -z "$rooms" ] || args+=("-rooms=$rooms")
[ -z "$proxy" ] || args+=("-proxy=$proxy")
[ -z "$claim_id" ] || args+=("-id=$claim_id")
[ "$insecure" = 0 ] || args+=("-insecure")
set +e
TETHER_PREFIX="$prefix_arg" "$venv/bin/tether-claim" "${args[@]}" >"$work/claim.json" 2>"$work/claim.err"
rc=$?
set -e
node_id="$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("claimed_id") or "")' "$work/claim.json" 2>/dev/null || true)"
if [ "$rc" = 5 ] && [ -n "$node_id" ]; then
  # Claimed, but the agent was not told (it was still starting): tell it now.
  agent_cli reload-claiming-state >/dev/null 2>&1 && rc=0
fi
if [ "$rc" != 0 ]; then
  grep -v '^WARNING: -insecure' "$work/claim.err" >&2 || true
  message="$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["message"])' "$work/claim.json" 2>/dev/null || true)"
  printf 'tether-claim: ERROR: %s\n' "${message:-exit $rc}" >&2
  exit "$rc"
fi

deadline=$(($(date +%s) + wait_s))
while :; do
  state="$(agent_cli --timeout 2 aclk-state json 2>/dev/null || true)"
  if printf '%s' "$state" | "$python" -c 'import json, sys; sys.exit(0 if json.load(sys.stdin).get("connected") else 1)' 2>/dev/null; then
    break
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    printf '%s\n' "$state" >&2
    die "$EXIT_NOT_LIVE" "the node is claimed (node $node_id) but its link to the Cloud did not come up in $wait_s s: see last_error and fix above, and $log_dir/error.log"
  fi
  sleep 0.2
done
echo "Agent was successfully claimed."
echo "Node $node_id is live: $url/nodes/$node_id"
