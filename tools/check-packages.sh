#!/usr/bin/env bash
# Checks the Debian packages `make package` built (usage: check-packages.sh
# <directory of .deb files>): metadata, every shipped file and its mode, the
# hardened units, conffiles and the maintainer scripts that create the
# dedicated users and the owner-only directories. Prints the units' systemd
# exposure scores. Exits non-zero naming every failed expectation.
set -euo pipefail

dir=${1:?usage: check-packages.sh <directory holding the .deb files>}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# expect <description> <file> <extended regex>: the file has a matching line.
expect() {
    grep -Eq -- "$3" "$2" || fail "$1 (no line matching '$3' in $(basename "$2"))"
}

# refuse <description> <file> <extended regex>: no line of the file matches.
refuse() {
    if grep -Eq -- "$3" "$2"; then fail "$1 (a line matches '$3' in $(basename "$2"))"; fi
}

# mode_of <listing> <path>: the permission string dpkg-deb -c gives a path.
mode_of() {
    awk -v p="./$2" '$NF == p { print $1 }' "$1"
}

check_package() {
    local name=$1 user=$2 state=$3 conf=$4
    local deb
    deb=$(ls -t "$dir"/"${name}"_*.deb 2>/dev/null | head -n1)
    if [ -z "$deb" ]; then
        fail "$name: no package in $dir"
        return
    fi
    local out="$work/$name"
    mkdir -p "$out/control" "$out/root"
    dpkg-deb --info "$deb" >"$out/info"
    dpkg-deb --contents "$deb" >"$out/contents"
    dpkg-deb --control "$deb" "$out/control"
    dpkg-deb --extract "$deb" "$out/root"
    echo "$name: $(basename "$deb"), $(stat -c %s "$deb") bytes"

    # Metadata.
    expect "$name: package name" "$out/info" "^ Package: ${name}$"
    expect "$name: adduser is a dependency (postinst uses it)" "$out/info" "^ Depends: .*adduser"

    # Files and modes: the binary, the unit, nothing under /var (the state
    # directory is created by postinst with its owner and mode 0700).
    local unit_path
    unit_path=$(awk '{ print $NF }' "$out/contents" | grep -E "/systemd/system/${name}\.service$" | sed 's|^\./||' || true)
    [ -n "$unit_path" ] || fail "$name: no systemd unit shipped"
    [ "$(mode_of "$out/contents" "usr/bin/$name")" = "-rwxr-xr-x" ] || fail "$name: usr/bin/$name is not -rwxr-xr-x"
    [ -z "$unit_path" ] || [ "$(mode_of "$out/contents" "$unit_path")" = "-rw-r--r--" ] || fail "$name: the unit is not -rw-r--r--"
    awk '{ print $2 }' "$out/contents" | grep -Eqv '^(root/root|0/0)$' && fail "$name: a file is not owned by root"
    refuse "$name: nothing is shipped under /var (postinst creates the state directory)" "$out/contents" '\./var/'

    # The unit: a dedicated user, no privilege, the fail-closed exit codes kept.
    if [ -n "$unit_path" ]; then
        local unit="$out/root/$unit_path"
        expect "$name: the unit runs as $user" "$unit" "^User=${user}$"
        expect "$name: the unit's group is $user" "$unit" "^Group=${user}$"
        for directive in 'NoNewPrivileges=yes' 'ProtectSystem=strict' 'ProtectHome=yes' 'PrivateTmp=yes' '^CapabilityBoundingSet=$' 'UMask=0077' 'StateDirectoryMode=0700' 'RestartPreventExitStatus=2' "ExecStart=/usr/bin/${name} "; do
            expect "$name: the unit sets $directive" "$unit" "$directive"
        done
        refuse "$name: the unit never runs as root" "$unit" '^User=root'
        if command -v systemd-analyze >/dev/null; then
            # Exposure 0 (locked down) to 10 (unprotected); offline review of the shipped file.
            local exposure
            exposure=$(systemd-analyze security --offline=yes --root="$out/root" "$unit" 2>/dev/null | sed -nE 's/.*Overall exposure level for [^:]+: ([0-9.]+).*/\1/p' | tail -n1)
            echo "$name: systemd exposure level ${exposure:-unknown} (0 = locked down, 10 = unprotected)"
            if [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN { exit !(e > 3.0) }'; then
                fail "$name: exposure level $exposure is above 3.0"
            fi
        fi
    fi

    # Maintainer scripts: valid sh, create the user and the owner-only
    # directories, never enable or start the service on install.
    local postinst="$out/control/postinst" postrm="$out/control/postrm"
    for script in "$postinst" "$postrm"; do
        if [ ! -f "$script" ]; then
            fail "$name: no $(basename "$script")"
            continue
        fi
        [ "$(stat -c %a "$script")" = "755" ] || fail "$name: $(basename "$script") is not mode 755"
        sh -n "$script" || fail "$name: $(basename "$script") is not valid sh"
        expect "$name: $(basename "$script") stops at the first error" "$script" '^set -e$'
    done
    if [ -f "$postinst" ]; then
        expect "$name: postinst creates the system user $user" "$postinst" "adduser --system .*${user}|--shell /usr/sbin/nologin ${user}$"
        expect "$name: postinst creates $state owner-only for $user" "$postinst" "install -d -m 0700 -o ${user} -g ${user} ${state}$"
        expect "$name: postinst keeps the configuration directory $conf closed" "$postinst" "install -d -m 07[05]0 -o [a-z-]+ -g ${user} ${conf}$"
        expect "$name: postinst reloads systemd for the new unit" "$postinst" 'daemon-reload'
        refuse "$name: postinst does not start the service before it is configured" "$postinst" 'deb-systemd-invoke (start|restart)'
        # An upgrade may re-enable what the operator had enabled (guarded by
        # was-enabled); a first install enables nothing.
        local enables guards
        enables=$(grep -c 'deb-systemd-helper enable' "$postinst" || true)
        guards=$(grep -c 'deb-systemd-helper --quiet was-enabled' "$postinst" || true)
        [ "$enables" -le "$guards" ] || fail "$name: postinst enables the service on a first install"
    fi
    if [ -f "$postrm" ]; then
        expect "$name: purge removes the state directory" "$postrm" "rm -rf .*${state}"
    fi
}

check_package oneprotect-server oneprotect-server /var/lib/oneprotect-server /etc/oneprotect-server
check_package oneprotect-agent oneprotect-agent /var/lib/oneprotect /etc/oneprotect

# Server specifics: its environment file is a conffile readable by root and
# the service's group only, and holds no secret.
server="$work/oneprotect-server"
if [ -d "$server/root" ]; then
    expect "oneprotect-server: server.env is a conffile" "$server/control/conffiles" '^/etc/oneprotect-server/server.env$'
    [ "$(mode_of "$server/contents" etc/oneprotect-server/server.env)" = "-rw-r-----" ] || fail "oneprotect-server: server.env is not -rw-r-----"
    expect "oneprotect-server: postinst gives server.env to the service's group" "$server/control/postinst" 'chown root:oneprotect-server /etc/oneprotect-server/server.env'
    refuse "oneprotect-server: server.env names secrets by file, never inline" "$server/root/etc/oneprotect-server/server.env" '^ONEPROTECT_(ADMIN_JWT_SECRET|AGENT_RUNTIME_TOKEN_SECRET|TOKEN_HASH_KEY|DATABASE_URL)='
fi

# Agent specifics: the shipped binary carries no fault injection, and the
# example configuration is copied into place owner-only.
agent="$work/oneprotect-agent"
if [ -d "$agent/root" ]; then
    if grep -q OPAGENT_FAULT_INJECTION "$agent/root/usr/bin/oneprotect-agent"; then
        fail "oneprotect-agent: the packaged binary was built with fault injection"
    fi
    expect "oneprotect-agent: postinst installs agent.yaml owner-only" "$agent/control/postinst" 'install -m 0600 -o oneprotect-agent -g oneprotect-agent'
    echo "oneprotect-agent: binary $(stat -c %s "$agent/root/usr/bin/oneprotect-agent") bytes"
fi

if [ "$failures" -gt 0 ]; then
    echo "$failures package expectation(s) failed" >&2
    exit 1
fi
echo "packages: every expectation holds"
