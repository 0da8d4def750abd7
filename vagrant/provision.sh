#!/usr/bin/env bash
# Provision the netagent e2e VM (Debian 12, run as root by `vagrant up` /
# `vagrant provision`).  Idempotent: every step is skipped when already done.
#
#   1. apt packages: the Makefile's APT_PACKAGES plus lz4, curl, make
#   2. /dev/kvm must be usable (nested virtualization on the host)
#   3. a pinned Firecracker release into /usr/local/bin/firecracker
#   4. the venv and the guest image: make venv guest-image
set -euo pipefail

REPO=${NETAGENT_REPO:-/opt/netagent}

# Pinned Firecracker release.  It must be >= v1.8: Debian's cloud kernel can
# only find Firecracker's virtio-mmio NIC through ACPI (see README.md).
FIRECRACKER_VERSION=${FIRECRACKER_VERSION:-v1.10.1}
# SHA-256 of firecracker-${FIRECRACKER_VERSION}-x86_64.tgz.  Fill it in (and
# re-verify it) whenever FIRECRACKER_VERSION is bumped.  While it is empty the
# tarball is only checked against the .sha256.txt file published next to it in
# the same GitHub release: that catches a corrupt download, not a tampered
# release.
FIRECRACKER_SHA256=${FIRECRACKER_SHA256:-}
FIRECRACKER_BIN=/usr/local/bin/firecracker
RELEASES_URL=https://github.com/firecracker-microvm/firecracker/releases/download

EXTRA_PACKAGES="lz4 curl ca-certificates make python3"

FC_TMP=""
trap 'rm -rf "$FC_TMP"' EXIT

log() { printf '==> %s\n' "$*"; }
die() { printf 'provision.sh: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
[ -f "$REPO/Makefile" ] || die "$REPO/Makefile not found: is the repository synced to $REPO?"

# --------------------------------------------------------------------------
# 1. apt packages

# APT_PACKAGES := a b \
#     c d            (the Makefile's list, continuation lines included)
makefile_apt_packages() {
    awk '/^APT_PACKAGES[[:space:]]*:=/ { grab = 1; sub(/^APT_PACKAGES[[:space:]]*:=/, "") }
         grab { line = $0; more = sub(/\\[[:space:]]*$/, "", line); printf "%s ", line; if (!more) exit }' \
        "$REPO/Makefile"
}

install_packages() {
    local wanted missing="" p
    wanted="$(makefile_apt_packages)"
    [ -n "${wanted// /}" ] || die "could not read APT_PACKAGES from $REPO/Makefile"
    for p in $wanted $EXTRA_PACKAGES; do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    if [ -z "$missing" ]; then
        log "apt packages: all installed"
        return
    fi
    log "apt packages: installing$missing"
    apt-get update -qq
    # shellcheck disable=SC2086  # word splitting of the package list is wanted
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
}

# --------------------------------------------------------------------------
# 2. KVM

check_kvm() {
    if [ ! -e /dev/kvm ]; then
        modprobe kvm_intel 2>/dev/null || modprobe kvm_amd 2>/dev/null || true
    fi
    if [ ! -c /dev/kvm ]; then
        local flags="no vmx/svm CPU flag in this VM"
        grep -qE '\b(vmx|svm)\b' /proc/cpuinfo && flags="the CPU flag is there but the kvm module did not load"
        die "/dev/kvm is missing ($flags).
  Nested virtualization must be enabled on the host:
    libvirt:    the host's kvm_intel/kvm_amd needs nested=1
                (cat /sys/module/kvm_intel/parameters/nested or .../kvm_amd/...);
                the Vagrantfile sets nested=true and cpu_mode=host-passthrough
    VirtualBox: 6.1+ with --nested-hw-virt on (set by the Vagrantfile)"
    fi
    # Usable = opens read/write and answers KVM_GET_API_VERSION (always 12).
    if ! python3 - <<'PY'
import fcntl, os, sys
fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
version = fcntl.ioctl(fd, 0xAE00)  # KVM_GET_API_VERSION
os.close(fd)
sys.exit(0 if version == 12 else f"unexpected KVM API version {version}")
PY
    then
        die "/dev/kvm exists but is not usable (open/ioctl failed)"
    fi
    [ -c /dev/net/tun ] || die "/dev/net/tun is missing"
    log "KVM: /dev/kvm usable"
}

# --------------------------------------------------------------------------
# 3. Firecracker

installed_firecracker_version() {
    [ -x "$FIRECRACKER_BIN" ] || return 0
    "$FIRECRACKER_BIN" --version 2>/dev/null | head -n1 | awk '{print $2}'
}

check_pinned_version() {
    local major minor
    IFS=. read -r major minor _ <<<"${FIRECRACKER_VERSION#v}"
    [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] \
        || die "FIRECRACKER_VERSION=$FIRECRACKER_VERSION is not vMAJOR.MINOR.PATCH"
    if (( major < 1 || (major == 1 && minor < 8) )); then
        die "FIRECRACKER_VERSION=$FIRECRACKER_VERSION: need >= v1.8 (ACPI device discovery)"
    fi
}

install_firecracker() {
    check_pinned_version
    if [ "$(installed_firecracker_version)" = "$FIRECRACKER_VERSION" ]; then
        log "firecracker: $FIRECRACKER_VERSION already installed"
        return
    fi
    local arch=x86_64 tgz url tmp expected actual release_dir
    [ "$(uname -m)" = "$arch" ] || die "only x86_64 is supported (uname -m: $(uname -m))"
    tgz="firecracker-${FIRECRACKER_VERSION}-${arch}.tgz"
    url="$RELEASES_URL/$FIRECRACKER_VERSION/$tgz"
    tmp="$(mktemp -d)"
    FC_TMP="$tmp"

    log "firecracker: downloading $url"
    curl -fsSL --retry 3 -o "$tmp/$tgz" "$url"
    if [ -n "$FIRECRACKER_SHA256" ]; then
        expected="$FIRECRACKER_SHA256"
    else
        log "firecracker: FIRECRACKER_SHA256 not pinned; using the release's $tgz.sha256.txt"
        curl -fsSL --retry 3 -o "$tmp/$tgz.sha256.txt" "$url.sha256.txt"
        expected="$(awk '{print $1; exit}' "$tmp/$tgz.sha256.txt")"
    fi
    actual="$(sha256sum "$tmp/$tgz" | awk '{print $1}')"
    [[ "$expected" =~ ^[0-9a-f]{64}$ ]] || die "bad expected SHA-256 for $tgz: '$expected'"
    [ "$actual" = "$expected" ] || die "SHA-256 mismatch for $tgz: got $actual, expected $expected"
    log "firecracker: $tgz sha256 $actual OK"

    tar -xzf "$tmp/$tgz" -C "$tmp"
    release_dir="$tmp/release-${FIRECRACKER_VERSION}-${arch}"
    [ -f "$release_dir/firecracker-${FIRECRACKER_VERSION}-${arch}" ] \
        || die "unexpected tarball layout: no release-${FIRECRACKER_VERSION}-${arch}/firecracker-${FIRECRACKER_VERSION}-${arch}"
    # The tarball carries checksums of its binaries; check ours if it is listed.
    if [ -f "$release_dir/SHA256SUMS" ] \
            && grep -q " firecracker-${FIRECRACKER_VERSION}-${arch}\$" "$release_dir/SHA256SUMS"; then
        (cd "$release_dir" && grep " firecracker-${FIRECRACKER_VERSION}-${arch}\$" SHA256SUMS | sha256sum -c --quiet -) \
            || die "firecracker binary does not match the tarball's SHA256SUMS"
    fi
    install -m 0755 "$release_dir/firecracker-${FIRECRACKER_VERSION}-${arch}" "$FIRECRACKER_BIN"
    [ "$(installed_firecracker_version)" = "$FIRECRACKER_VERSION" ] \
        || die "installed $FIRECRACKER_BIN does not report $FIRECRACKER_VERSION"
    log "firecracker: installed $FIRECRACKER_VERSION as $FIRECRACKER_BIN"
}

# --------------------------------------------------------------------------
# 4. venv + guest image (both targets are no-ops when up to date)

build_venv_and_image() {
    log "make venv guest-image"
    make -C "$REPO" venv guest-image
}

install_packages
check_kvm
install_firecracker
build_venv_and_image
log "provisioned; run: vagrant ssh -c $REPO/vagrant/run-e2e.sh"
