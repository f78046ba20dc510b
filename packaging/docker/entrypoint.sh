#!/usr/bin/env bash
# Entrypoint of the tether/agent image.
#
# 1. Accepts the NETDATA_CLAIM_* names as aliases of TETHER_CLAIM_* (TETHER_ wins).
# 2. Writes TETHER_CLAIM_CA (PEM text, or the path of a PEM file) to
#    cloud.d/cloud_fullchain.pem so both the claim and the link trust the Cloud.
# 3. Warns when /var/lib/tether is not on a persistent volume: the node's identity
#    lives there, and losing it means a new node in the Cloud on every re-create.
# 4. Runs `tether-agent -D "$@"`; the agent claims on start only when it is not
#    claimed yet, so restarts never claim again. A first argument that is not an
#    option runs that command instead (e.g. `tether-claim ...`, `tether-cli ...`).
#
# The claiming token is never printed. All paths honour TETHER_PREFIX (default /),
# so the script also runs outside a container against a temporary prefix.
set -euo pipefail

say() { printf 'tether-entrypoint: %s\n' "$*" >&2; }

prefix="${TETHER_PREFIX:-/}"
prefix="${prefix%/}"
lib_dir="$prefix/var/lib/tether"
cloud_dir="$lib_dir/cloud.d"
# Where mounts are read from; only tests point it elsewhere.
mountinfo="${TETHER_MOUNTINFO:-/proc/self/mountinfo}"

map_netdata_names() {
    local name tether_var netdata_var
    for name in TOKEN URL ROOMS PROXY CA; do
        tether_var="TETHER_CLAIM_$name"
        netdata_var="NETDATA_CLAIM_$name"
        if [[ -n "${!netdata_var:-}" ]]; then
            if [[ -z "${!tether_var:-}" ]]; then
                export "$tether_var=${!netdata_var}"
            else
                say "both $tether_var and $netdata_var are set; using $tether_var"
            fi
        fi
        # One source of truth for the agent, and one copy less of the token.
        unset "$netdata_var"
    done
}

# Prints "FSTYPE MOUNTPOINT ROOT" of the mount holding $1 (longest mount point wins).
mount_of() {
    awk -v target="$1" '
        function unescape(s) { gsub(/\\040/, " ", s); gsub(/\\011/, "\t", s); return s }
        {
            mnt = unescape($5); root = unescape($4); fstype = ""
            for (i = 7; i <= NF; i++) if ($i == "-") { fstype = $(i + 1); break }
            prefix = (mnt == "/") ? "/" : mnt "/"
            if ((target == mnt || index(target, prefix) == 1) && length(mnt) >= best_len) {
                best_len = length(mnt); best = fstype " " mnt " " root
            }
        }
        END { if (best != "") print best }
    ' "$mountinfo" 2>/dev/null || true
}

check_persistent_storage() {
    local target found fstype mnt root advice
    target="$(realpath -m "$lib_dir")"
    found="$(mount_of "$target")"
    advice="Mount a named volume, a PersistentVolumeClaim or a host directory at $target."
    if [[ -z "$found" ]]; then
        say "warning: cannot tell whether $target is on persistent storage ($mountinfo unreadable)"
        return
    fi
    read -r fstype mnt root <<<"$found"
    case "$fstype" in
        tmpfs | ramfs | overlay | aufs | squashfs)
            say "warning: $target is on $fstype (mounted at $mnt), which is lost when the" \
                "container is re-created: the node identity and claim go with it and the node" \
                "is claimed again as a new one. $advice"
            return
            ;;
    esac
    if [[ "$mnt" == "/" ]]; then
        say "warning: $target is not a mounted volume, so it lives in the container's own" \
            "layer: re-creating the container loses the node identity and claims a new node." \
            "$advice"
    elif [[ "$root" == *"/kubernetes.io~empty-dir/"* ]]; then
        say "warning: $target is an emptyDir volume, which is deleted with the pod: the" \
            "next pod would claim a new node. Use a hostPath or a PersistentVolumeClaim."
    elif [[ "$root" =~ /volumes/[0-9a-f]{64}/_data$ ]]; then
        say "warning: $target is an anonymous volume: it survives a restart but not a" \
            "re-created container, which would claim a new node. Give it a name," \
            "e.g. -v tetherlib:/var/lib/tether."
    fi
}

install_cloud_ca() {
    local value="${TETHER_CLAIM_CA:-}" pem target tmp
    [[ -n "$value" ]] || return 0
    if [[ "$value" == *"-----BEGIN CERTIFICATE-----"* ]]; then
        pem="$value"
    elif [[ -f "$value" && -r "$value" ]]; then
        pem="$(<"$value")"
        if [[ "$pem" != *"-----BEGIN CERTIFICATE-----"* ]]; then
            say "warning: TETHER_CLAIM_CA names $value, which holds no PEM certificate;" \
                "the Cloud's CA was not installed"
            return 0
        fi
    else
        say "warning: TETHER_CLAIM_CA is neither PEM text (-----BEGIN CERTIFICATE-----...)" \
            "nor a readable file; the Cloud's CA was not installed"
        return 0
    fi
    target="$cloud_dir/cloud_fullchain.pem"
    if [[ -f "$target" && "$(<"$target")" == "$pem" ]]; then
        return 0
    fi
    # Same mode as tether-claim gives cloud.d (it will hold the private key);
    # only cloud.d itself needs it, hence -m with -p.
    # shellcheck disable=SC2174
    if ! mkdir -p -m 0770 "$cloud_dir" 2>/dev/null; then
        say "warning: cannot create $cloud_dir; the Cloud's CA was not installed"
        return 0
    fi
    tmp="$(mktemp "$cloud_dir/.cloud_fullchain.XXXXXX" 2>/dev/null)" || {
        say "warning: $cloud_dir is not writable; the Cloud's CA was not installed at $target"
        return 0
    }
    printf '%s\n' "$pem" >"$tmp"
    chmod 0644 "$tmp"
    if mv -f "$tmp" "$target" 2>/dev/null; then
        say "installed the Cloud's CA at $target"
    else
        rm -f "$tmp"
        say "warning: cannot replace $target (read-only mount?); keeping the file that is there"
    fi
}

mask_password() {
    # scheme://user:secret@host -> scheme://user:***@host
    sed -E 's#^([a-zA-Z0-9+.-]+://[^:/@]*:)[^@]*@#\1***@#' <<<"$1"
}

describe_claim() {
    local claimed=""
    [[ -n "${TETHER_CLAIM_TOKEN:-}" || -n "${TETHER_CLAIM_URL:-}" ]] || return 0
    if [[ -r "$cloud_dir/claimed_id" ]]; then
        claimed="$(tr -d '[:space:]' <"$cloud_dir/claimed_id")"
    fi
    if [[ -n "$claimed" ]]; then
        say "already claimed as node $claimed: the claim variables are ignored"
        return 0
    fi
    local token_state="not set" rooms="${TETHER_CLAIM_ROOMS:-none}" proxy="none"
    [[ -n "${TETHER_CLAIM_TOKEN:-}" ]] && token_state="set (hidden)"
    [[ -n "${TETHER_CLAIM_PROXY:-}" ]] && proxy="$(mask_password "$TETHER_CLAIM_PROXY")"
    say "claim on start: url ${TETHER_CLAIM_URL:-not set}, rooms $rooms, proxy $proxy," \
        "token $token_state"
}

map_netdata_names
install_cloud_ca
check_persistent_storage

if [[ $# -gt 0 && "$1" != -* ]]; then
    exec "$@"
fi
describe_claim
exec tether-agent -D "$@"
