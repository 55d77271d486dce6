#!/usr/bin/env bash
# Installs the Debian packages kubevirt-rs needs to build, test and run VMs, when missing.
# Safe to run repeatedly: it only calls apt-get for what is absent.
set -euo pipefail

# command -> Debian package
declare -A need=(
  [qemu-system-x86_64]=qemu-system-x86
  # arm64 guests (docs/architectures.md): the emulator; AAVMF (UEFI) is checked below.
  [qemu-system-aarch64]=qemu-system-arm
  # s390x guests: the emulator and its s390-ccw firmware (checked below).
  [qemu-system-s390x]=qemu-system-misc
  [qemu-img]=qemu-utils
  [busybox]=busybox-static
  [syslinux]=syslinux
  [mcopy]=mtools
  [mkfs.vfat]=dosfstools
  [genisoimage]=genisoimage
  [cpio]=cpio
  [xz]=xz-utils
  [zstd]=zstd
  [docker-registry]=docker-registry
  [isoinfo]=genisoimage
  # Prometheus and promtool: the metrics e2e test scrapes the server with a real Prometheus.
  [prometheus]=prometheus
  [promtool]=prometheus
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
# syslinux's MBR and modules come from syslinux-common; OVMF for UEFI guests.
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || missing+=(syslinux-common)
[ -f /usr/share/OVMF/OVMF_CODE.fd ] || [ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || missing+=(ovmf)
[ -f /usr/share/AAVMF/AAVMF_CODE.fd ] || missing+=(qemu-efi-aarch64)
[ -f /usr/share/qemu/s390-ccw.img ] || missing+=(qemu-system-misc)
# The standard CNI plugins (bridge, host-local, portmap...) for VMI networks; iproute2 for
# network namespaces and links.
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# nftables: the masquerade binding's NAT inside each VMI's network namespace.
command -v nft >/dev/null 2>&1 || missing+=(nftables)
# passt: the passtBinding's user-mode network stack in the VMI's namespace.
command -v passt >/dev/null 2>&1 || missing+=(passt)
# qemu-ga: the guest agent client's tests run a real agent on the host. It lives in /usr/sbin,
# which is not on every user's PATH, so the check uses the file.
[ -x /usr/sbin/qemu-ga ] || missing+=(qemu-guest-agent)

# The arm64 and s390x demo guests (guest/build.sh --arch arm64|s390x) download Debian's
# kernel and busybox of that architecture: apt must know its archive (its package lists;
# nothing of that architecture is installed).
add_arch=()
if command -v dpkg >/dev/null 2>&1; then
  for a in arm64 s390x; do
    dpkg --print-foreign-architectures | grep -qx "$a" || add_arch+=("$a")
  done
fi

if [ ${#missing[@]} -eq 0 ] && [ ${#add_arch[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  [ ${#missing[@]} -eq 0 ] ||
    echo "deps: missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  for a in "${add_arch[@]}"; do
    echo "deps: no $a apt architecture (run as root, or: sudo dpkg --add-architecture $a; sudo apt-get update)" >&2
  done
  exit 0
fi
for a in "${add_arch[@]}"; do
  echo "deps: dpkg --add-architecture $a" >&2
  dpkg --add-architecture "$a"
done
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "deps: installing ${missing[*]}" >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
