#!/usr/bin/env bash
# Run the microVM end-to-end suite (make test-microvm) inside the e2e VM with
# each VM backend under KVM, then print a summary.
#
#   vagrant ssh -c /opt/netagent/vagrant/run-e2e.sh              # firecracker, then qemu
#   vagrant ssh -c '/opt/netagent/vagrant/run-e2e.sh firecracker'
#
# NETAGENT_VM_KEEP_LOGS=1 keeps each guest's /tmp/netagent-vm-*/console.log.
# Exit status: 0 only if every backend run passed.
set -uo pipefail

if [ "$(id -u)" -ne 0 ]; then
    exec sudo --preserve-env=NETAGENT_VM_KEEP_LOGS,NETAGENT_VM_BOOT_BUDGET,E2E_LOG_DIR -- "$0" "$@"
fi

REPO=${NETAGENT_REPO:-/opt/netagent}
LOG_DIR=${E2E_LOG_DIR:-/var/tmp/netagent-e2e}
BACKENDS=("$@")
[ ${#BACKENDS[@]} -gt 0 ] || BACKENDS=(firecracker qemu)

die() { printf 'run-e2e.sh: error: %s\n' "$*" >&2; exit 2; }

[ -f "$REPO/Makefile" ] || die "$REPO/Makefile not found (vagrant rsync?)"
[ -r /dev/kvm ] && [ -w /dev/kvm ] || die "/dev/kvm is not usable: see vagrant/README.md (nested virtualization)"
for backend in "${BACKENDS[@]}"; do
    case "$backend" in
        firecracker)
            command -v firecracker >/dev/null || die "firecracker not installed: vagrant provision"
            command -v lz4 >/dev/null || die "lz4 not installed (needed to extract vmlinux): vagrant provision" ;;
        qemu) ;;
        *) die "unknown backend '$backend' (firecracker|qemu)" ;;
    esac
done
mkdir -p "$LOG_DIR"

declare -A STATUS SUMMARY BOOT
for backend in "${BACKENDS[@]}"; do
    log="$LOG_DIR/$backend.log"
    printf '\n===== %s (KVM): make test-microvm =====\n' "$backend"
    {
        echo "# $(date -u +%FT%TZ) backend=$backend accel=kvm kernel=$(uname -r)"
        [ "$backend" = firecracker ] && firecracker --version 2>&1 | head -n1
        [ "$backend" = qemu ] && qemu-system-x86_64 --version | head -n1
    } >"$log"
    NETAGENT_VM_BACKEND=$backend NETAGENT_VM_ACCEL=kvm make -C "$REPO" test-microvm 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    STATUS[$backend]=$([ "$rc" -eq 0 ] && echo PASS || echo "FAIL(rc=$rc)")
    # pytest -q's last line ("7 passed in 9.12s") and the harness's boot report.
    SUMMARY[$backend]=$(grep -E ' in [0-9.]+s' "$log" | tail -n1)
    BOOT[$backend]=$(grep -o 'microVM boot: .*' "$log" | tail -n1)
done

overall=0
printf '\n===== summary (logs in %s) =====\n' "$LOG_DIR"
for backend in "${BACKENDS[@]}"; do
    printf '%-12s %-14s %s\n' "$backend" "${STATUS[$backend]}" "${SUMMARY[$backend]:-no pytest summary line}"
    printf '%-12s %-14s %s\n' "" "" "${BOOT[$backend]:-no boot report (guest did not boot?)}"
    [ "${STATUS[$backend]}" = PASS ] || overall=1
done
exit "$overall"
