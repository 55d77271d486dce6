#!/usr/bin/env bash
# Installs the Debian packages kubevirt-rs needs to build, test and run VMs, when missing.
# Safe to run repeatedly: it only calls apt-get for what is absent.
set -euo pipefail

# command -> Debian package
declare -A need=(
  [qemu-system-x86_64]=qemu-system-x86
  # arm64 guests (docs/architectures.md): the emulator; AAVMF (UEFI) is checked below.
  [qemu-system-aarch64]=qemu-system-arm
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

# The arm64 demo guest (guest/build.sh --arch arm64) downloads Debian's arm64 kernel and
# busybox: apt must know the arm64 archive (its package lists; nothing arm64 is installed).
add_arch=
command -v dpkg >/dev/null 2>&1 && ! dpkg --print-foreign-architectures | grep -qx arm64 && add_arch=arm64

if [ ${#missing[@]} -eq 0 ] && [ -z "$add_arch" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  [ ${#missing[@]} -eq 0 ] ||
    echo "deps: missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  [ -z "$add_arch" ] ||
    echo "deps: no arm64 apt architecture (run as root, or: sudo dpkg --add-architecture arm64; sudo apt-get update)" >&2
  exit 0
fi
if [ -n "$add_arch" ]; then
  echo "deps: dpkg --add-architecture $add_arch" >&2
  dpkg --add-architecture "$add_arch"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}" >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
