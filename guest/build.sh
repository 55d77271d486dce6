#!/usr/bin/env bash
# Build the kubevirt-rs demo guest from Debian packages only.
#
#   guest/build.sh [--arch amd64|arm64|s390x] OUTDIR
#
# --arch arm64 builds the same guest from Debian's arm64 packages (needs `dpkg
# --add-architecture arm64` and an apt-get update; scripts/deps.sh does both): vmlinuz (an
# arm64 Image), initrd.img and oci/ (boot/ only, ref name `arm64`), no vmlinux, no disk, no
# qemu-ga (guest/README.md). --arch s390x does the same from Debian's s390x packages (vmlinuz
# is an s390x "Linux S390" image QEMU's -kernel loads; ref name `s390x`).
#
# Outputs for amd64 (see guest/README.md):
#   OUTDIR/vmlinuz      Debian linux-image-amd64 bzImage (firmware.kernelBoot, SeaBIOS disk boot)
#   OUTDIR/vmlinux      uncompressed kernel ELF with the Xen PVH note (qemu -kernel, fast under TCG)
#   OUTDIR/initrd.img   uncompressed newc cpio: busybox-static + virtio/sata/fs modules + /init
#   OUTDIR/disk.raw     64 MiB MBR disk, FAT partition with syslinux, vmlinuz, initrd.img
#   OUTDIR/disk.qcow2   the same disk as qcow2
#   OUTDIR/oci/         OCI image layout of a KubeVirt containerDisk (disk/disk.qcow2, 107:107)
#                       that also carries boot/{vmlinuz,vmlinux,initrd.img} for kernelBoot
#   OUTDIR/cmdline.*    recommended kernel command lines
#   OUTDIR/versions.txt exact package versions used
#
# Environment: GUEST_CACHE (default OUTDIR/.cache) holds downloaded .debs and extracted trees.
set -euo pipefail

say() { echo "guest: $*" >&2; }
die() { echo "guest: error: $*" >&2; exit 1; }

ARCH=amd64
if [ "${1:-}" = --arch ]; then
	[ $# -ge 2 ] || die "usage: $0 [--arch amd64|arm64|s390x] OUTDIR"
	ARCH=$2
	shift 2
fi
[ $# -eq 1 ] || die "usage: $0 [--arch amd64|arm64|s390x] OUTDIR"
# Per architecture: Q is the apt architecture qualifier of the guest's packages (empty: the
# host's own), REF the OCI ref name, CMDLINE_KEY the line of guest/cmdline.
case $ARCH in
amd64) Q= REF=latest CMDLINE_KEY=q35 ;;
arm64) Q=:arm64 REF=arm64 CMDLINE_KEY=arm64 ;;
s390x) Q=:s390x REF=s390x CMDLINE_KEY=s390x ;;
*) die "--arch $ARCH: this builder makes amd64, arm64 and s390x guests" ;;
esac
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
CACHE=${GUEST_CACHE:-$OUT/.cache}
mkdir -p "$CACHE"
export LC_ALL=C SOURCE_DATE_EPOCH=0

DISK_MIB=64
# Kernel command lines (kept in sync with guest/cmdline and README.md).
CMDLINE_Q35=$(sed -n 's/^q35=//p' "$HERE/cmdline")
[ -n "$(sed -n "s/^$CMDLINE_KEY=//p" "$HERE/cmdline")" ] || die "guest/cmdline has no $CMDLINE_KEY= line"

# ---------------------------------------------------------------- host tools
# command -> Debian package providing it
declare -A TOOL_PKG=(
	[apt-get]=apt [dpkg-deb]=dpkg [python3]=python3 [cpio]=cpio [tar]=tar
	[sha256sum]=coreutils [syslinux]=syslinux [mcopy]=mtools [mkfs.vfat]=dosfstools
	[qemu-img]=qemu-utils
)
missing=()
for t in "${!TOOL_PKG[@]}"; do
	command -v "$t" >/dev/null 2>&1 || missing+=("${TOOL_PKG[$t]}")
done
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || missing+=(syslinux-common)
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing host packages (${missing[*]}); install them or run as root"
	command -v apt-get >/dev/null || die "missing host packages (${missing[*]}) and no apt-get"
	say "installing host tools: ${missing[*]}"
	apt-get update -q >&2 || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
		die "apt-get install ${missing[*]} failed"
fi
for t in "${!TOOL_PKG[@]}"; do command -v "$t" >/dev/null || die "tool $t still missing"; done

# ---------------------------------------------------------------- quick up-to-date check
# Without apt: each apt-cache call parses every package list (seconds, more with a foreign
# architecture's lists), and every test that boots the guest asks. QUICK covers what the last
# build's stamp was computed from: this script, the guest sources, and the apt state the
# package versions were resolved from (lists, sources, preferences: names, sizes, mtimes).
OUTPUTS=(vmlinuz initrd.img oci/index.json versions.txt)
[ "$ARCH" = amd64 ] && OUTPUTS+=(vmlinux disk.raw disk.qcow2)
outputs_present() { local f; for f in "${OUTPUTS[@]}"; do [ -s "$OUT/$f" ] || return 1; done; }
QUICK=$( {
	echo "$ARCH"
	cat "$HERE/build.sh" "$HERE/cmdline"
	(cd "$HERE/rootfs" && find . -type f | sort | xargs sha256sum && find . -type f -perm -u+x | sort)
	find /var/lib/apt/lists /etc/apt -maxdepth 2 -type f ! -name lock -printf '%p %s %T@\n' 2>/dev/null | sort
	dpkg --print-foreign-architectures 2>/dev/null
} | sha256sum | cut -d' ' -f1)
if outputs_present && [ -s "$OUT/.stamp" ] && [ "$(cat "$OUT/.quick" 2>/dev/null)" = "$QUICK" ]; then
	say "up to date ($ARCH; nothing changed since the last check)"
	exit 0
fi

# ---------------------------------------------------------------- resolve packages
policy() { # print "PKG VERSION" candidates of the given packages (:arch dropped), one apt-cache call
	apt-cache policy "$@" 2>/dev/null | awk '/^[^ ]/{sub(/:$/,"");sub(/:[a-z0-9]+$/,"");p=$0} /^ *Candidate:/{print p, $2}'
}
# the given package names with the guest architecture's qualifier
q() { local p; for p in "$@"; do printf '%s%s\n' "$p" "$Q"; done; }
# QEMU guest agent (/usr/sbin/qemu-ga) and the packages holding the shared objects it links
# (DT_NEEDED, recursively: libudev.so.1 libnuma.so.1 liburing.so.2 libglib-2.0.so.0
# libgmodule-2.0.so.0 libm.so.6 libc.so.6, and glib's libpcre2-8.so.0). glib's other Depends
# (libffi8, libmount1, libselinux1, zlib1g) are for gio/gobject, which qemu-ga does not link.
# Only the shared objects really needed go into the initramfs; the build fails if one is missing.
QGA_PKGS="qemu-guest-agent libc6 libglib2.0-0 libnuma1 libudev1 liburing2 libpcre2-8-0"
# The arm64 and s390x guests have no guest agent (yet): only the kernel and busybox.
[ "$ARCH" = amd64 ] || QGA_PKGS=
KMETA=linux-image-$ARCH
cand=$(policy $(q "$KMETA" busybox-static $QGA_PKGS))
if ! echo "$cand" | grep -q "^$KMETA [0-9]"; then
	say "apt lists missing: apt-get update"
	apt-get update -q >&2 || die "apt-get update failed"
	cand=$(policy $(q "$KMETA" busybox-static $QGA_PKGS))
fi
if [ -n "$Q" ] && ! echo "$cand" | grep -q "^$KMETA [0-9]" &&
	! dpkg --print-foreign-architectures | grep -qx "${Q#:}"; then
	die "no ${Q#:} packages in the apt lists: run scripts/deps.sh (dpkg --add-architecture ${Q#:}; apt-get update)"
fi
QGA_VERSIONS=
for p in $QGA_PKGS; do
	v=$(echo "$cand" | awk -v p="$p" '$1==p{print $2}')
	[ -n "$v" ] && [ "$v" != "(none)" ] || die "$p not found in apt sources (needed for qemu-ga)"
	QGA_VERSIONS+="${QGA_VERSIONS:+$'\n'}$p $v"
done
kver_meta=$(echo "$cand" | awk -v p="$KMETA" '$1==p{print $2}')
BB_VER=$(echo "$cand" | awk '$1=="busybox-static"{print $2}')
[ -n "$kver_meta" ] && [ "$kver_meta" != "(none)" ] || die "$KMETA$Q not found in apt sources"
[ -n "$BB_VER" ] && [ "$BB_VER" != "(none)" ] || die "busybox-static$Q not found in apt sources"
# Depends: linux-image-6.1.0-NN-ARCH (= VERSION)
kdep=$(apt-cache show "$KMETA$Q=$kver_meta" | sed -n 's/^Depends: *//p' | head -n 1 |
	tr ',' '\n' | grep -E "^ *linux-image-[0-9][^ ]*-$ARCH" | head -n 1)
KPKG=$(echo "$kdep" | awk '{print $1}')
KPKG_VER=$(echo "$kdep" | sed -n 's/.*(= *\([^)]*\)).*/\1/p')
[ -n "$KPKG" ] || die "cannot resolve the kernel package behind $KMETA$Q $kver_meta"
[ -n "$KPKG_VER" ] || KPKG_VER=$(policy "$KPKG$Q" | awk '{print $2}')
KVER=${KPKG#linux-image-}
SYSLINUX_VER=$(dpkg-query -W -f '${Version}' syslinux 2>/dev/null || echo unknown)
SYSLINUX_COMMON_VER=$(dpkg-query -W -f '${Version}' syslinux-common 2>/dev/null || echo unknown)

VERSIONS="architecture $ARCH
$KMETA $kver_meta
$KPKG $KPKG_VER
busybox-static $BB_VER
syslinux $SYSLINUX_VER (host, disk bootloader)
syslinux-common $SYSLINUX_COMMON_VER (host, mbr.bin)
kernel-release $KVER
$QGA_VERSIONS"

# Stamp: package versions + this script + the guest rootfs overlay + cmdline file.
STAMP=$( {
	echo "$VERSIONS"
	cat "$HERE/build.sh" "$HERE/cmdline"
	(cd "$HERE/rootfs" && find . -type f | sort | xargs sha256sum && find . -type f -perm -u+x | sort)
} | sha256sum | cut -d' ' -f1)
if outputs_present && [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$STAMP" ]; then
	echo "$QUICK" >"$OUT/.quick"
	say "up to date ($KPKG $KPKG_VER, busybox-static $BB_VER)"
	exit 0
fi
rm -f "$OUT/.stamp" "$OUT/.quick"

# ---------------------------------------------------------------- download + extract
fetch() { # fetch PKG VERSION -> extracted tree path on stdout (PKG of the guest's architecture)
	local pkg=$1$Q ver=$2 dir="$CACHE/$1${Q/:/_}_$2"
	if [ ! -e "$dir/.done" ]; then
		rm -rf "$dir" && mkdir -p "$dir/deb" "$dir/root"
		say "downloading $pkg $ver"
		(cd "$dir/deb" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2) ||
			die "apt-get download $pkg=$ver failed"
		dpkg-deb -x "$dir"/deb/*.deb "$dir/root" || die "dpkg-deb -x $pkg failed"
		rm -f "$dir"/deb/*.deb
		touch "$dir/.done"
	fi
	echo "$dir/root"
}
KROOT=$(fetch "$KPKG" "$KPKG_VER")
BBROOT=$(fetch busybox-static "$BB_VER")
BUSYBOX=$BBROOT/bin/busybox
[ -x "$BUSYBOX" ] || die "busybox binary not found in busybox-static"
[ -f "$KROOT/boot/vmlinuz-$KVER" ] || die "vmlinuz-$KVER not found in $KPKG"
QGA_ROOTS=()
[ -z "$QGA_VERSIONS" ] || while read -r p v; do
	[ -n "$p" ] || continue
	QGA_ROOTS+=("$(fetch "$p" "$v")")
done <<<"$QGA_VERSIONS"

# ---------------------------------------------------------------- kernel
cp "$KROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
if [ "$ARCH" = arm64 ]; then
	# Debian's arm64 vmlinuz is the kernel's uncompressed Image: QEMU's -kernel loads it as it
	# is (arm64 boot protocol: magic "ARM\x64" at offset 56).
	say "kernel $KVER: vmlinuz (arm64 Image)"
	[ "$(dd if="$OUT/vmlinuz" bs=1 skip=56 count=4 status=none | od -An -tx1 | tr -d ' ')" = 41524d64 ] ||
		die "vmlinuz-$KVER is not an arm64 Image"
elif [ "$ARCH" = s390x ]; then
	# Debian's s390x vmlinuz is the kernel's compressed bzImage for s390 (its own
	# decompressor, loaded at 0x10000 by QEMU's -kernel).
	say "kernel $KVER: vmlinuz (s390x image)"
	[ "$(stat -c %s "$OUT/vmlinuz")" -gt 1000000 ] || die "vmlinuz-$KVER is too small for a kernel"
else
say "kernel $KVER: vmlinuz + vmlinux"
python3 - "$OUT/vmlinuz" "$OUT/vmlinux.tmp" <<'PY'
# extract-vmlinux: find the xz payload in the bzImage and decompress it to the ELF
import lzma, sys
data = open(sys.argv[1], 'rb').read()
magic = b'\xfd7zXZ\x00'
pos = data.find(magic)
while pos >= 0:
    try:
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        elf = d.decompress(data[pos:])
        if elf[:4] == b'\x7fELF':
            open(sys.argv[2], 'wb').write(elf)
            sys.exit(0)
    except lzma.LZMAError:
        pass
    pos = data.find(magic, pos + 1)
sys.exit("no xz-compressed ELF payload found in " + sys.argv[1])
PY
grep -qa 'Xen' "$OUT/vmlinux.tmp" || die "vmlinux has no Xen (PVH) note"
mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
fi

# ---------------------------------------------------------------- initramfs
say "initrd.img: busybox + modules"
# Loaded before the boot banner (cheap, needed by everything else) and after it.
BOOT_MODS="virtio_pci virtio_mmio virtio_blk virtio_net virtio_console button evdev"
LATE_MODS="ahci sd_mod sr_mod virtio_scsi isofs vfat nls_cp437 nls_ascii nls_iso8859_1 nls_utf8
	ext4 crc32c_generic i6300esb virtio_balloon virtio_rng virtio_mem"
if [ "$ARCH" = arm64 ]; then
	# arm64 `virt`: PCIe virtio devices, no ACPI power button or i6300esb (KubeVirt refuses a
	# watchdog on arm64), no SATA; the PL011 console and virtio-pci are built in.
	BOOT_MODS="virtio_pci virtio_mmio virtio_blk virtio_net virtio_console evdev"
	LATE_MODS="sd_mod sr_mod virtio_scsi isofs vfat nls_cp437 nls_ascii nls_iso8859_1 nls_utf8
	ext4 crc32c_generic virtio_balloon virtio_rng"
elif [ "$ARCH" = s390x ]; then
	# s390x `s390-ccw-virtio`: virtio on the channel subsystem, the diag288 watchdog, no PCI,
	# SATA or ACPI; the SCLP console and the virtio-ccw transport (CONFIG_S390_GUEST) are
	# built in.
	BOOT_MODS="virtio_blk virtio_net virtio_console"
	LATE_MODS="sd_mod sr_mod virtio_scsi isofs vfat nls_cp437 nls_ascii nls_iso8859_1 nls_utf8
	ext4 crc32c_generic diag288_wdt virtio_balloon virtio_rng"
fi
STAGE=$CACHE/initramfs
rm -rf "$STAGE" && mkdir -p "$STAGE"
(cd "$STAGE" && mkdir -p bin sbin usr/bin usr/sbin etc root home/demo proc sys dev run tmp mnt var/log "lib/modules/$KVER")
cp "$BUSYBOX" "$STAGE/bin/busybox"
# The guest's busybox lists its applets and runs depmod below; one of another architecture
# cannot run here, so the host's busybox (busybox-static, scripts/deps.sh) does it.
HOSTBB=$BUSYBOX
"$HOSTBB" true 2>/dev/null || HOSTBB=$(command -v busybox) ||
	die "the $ARCH busybox cannot run here and the host has no busybox (apt-get install busybox-static)"
for a in $("$HOSTBB" --list-full); do
	[ -e "$STAGE/$a" ] || ln -s /bin/busybox "$STAGE/$a"
done
cp -a "$HERE/rootfs/." "$STAGE/"
# QEMU guest agent: /usr/sbin/qemu-ga, the shared objects it needs (ELF DT_NEEDED, resolved
# recursively across the extracted packages) in /lib/x86_64-linux-gnu, and its ELF interpreter.
[ "$ARCH" != amd64 ] || python3 - "$STAGE" usr/sbin/qemu-ga "${QGA_ROOTS[@]}" <<'PY'
import os, shutil, struct, sys
stage, prog, roots = sys.argv[1], sys.argv[2], sys.argv[3:]
LIBDIRS = ('lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu', 'lib64', 'usr/lib64', 'lib', 'usr/lib')
DEST = 'lib/x86_64-linux-gnu'
def die(msg):
    sys.exit('guest: error: ' + msg)
def resolve(root, rel):
    """Path of root/rel with symlinks followed inside root (absolute targets are root-relative)."""
    path = os.path.join(root, rel.lstrip('/'))
    for _ in range(40):
        if not os.path.islink(path):
            return path if os.path.isfile(path) else None
        t = os.readlink(path)
        path = os.path.join(root, t.lstrip('/')) if t.startswith('/') else os.path.join(os.path.dirname(path), t)
    return None
def elf(path):
    """(PT_INTERP or None, [DT_NEEDED]) of a 64-bit little-endian x86-64 ELF file."""
    d = open(path, 'rb').read()
    if d[:4] != b'\x7fELF' or d[4] != 2 or d[5] != 1 or struct.unpack_from('<H', d, 18)[0] != 62:
        die('%s is not an x86-64 ELF file' % path)
    phoff, = struct.unpack_from('<Q', d, 32)
    phentsize, phnum = struct.unpack_from('<HH', d, 54)
    loads, dyn, interp = [], None, None
    for i in range(phnum):
        typ, _, off, vaddr, _, filesz, _, _ = struct.unpack_from('<IIQQQQQQ', d, phoff + i * phentsize)
        if typ == 1:
            loads.append((vaddr, off, filesz))
        elif typ == 2:
            dyn = (off, filesz)
        elif typ == 3:
            interp = d[off:off + filesz].split(b'\0')[0].decode()
    if dyn is None:
        return interp, []
    ents = [struct.unpack_from('<qQ', d, dyn[0] + 16 * i) for i in range(dyn[1] // 16)]
    strtab = next((v for t, v in ents if t == 5), None)
    for vaddr, off, filesz in loads:
        if strtab is not None and vaddr <= strtab < vaddr + filesz:
            strtab = strtab - vaddr + off
            break
    else:
        die('%s: DT_STRTAB outside the loadable segments' % path)
    name = lambda o: d[strtab + o:d.index(b'\0', strtab + o)].decode()
    needed = []
    for t, v in ents:
        if t == 0:
            break
        if t == 1:
            needed.append(name(v))
    return interp, needed
src = next((p for p in (resolve(r, prog) for r in roots) if p), None) or die('%s not found in the qemu-ga packages' % prog)
os.makedirs(os.path.join(stage, os.path.dirname(prog)), exist_ok=True)
shutil.copyfile(src, os.path.join(stage, prog)); os.chmod(os.path.join(stage, prog), 0o755)
interp, needed = elf(src)
os.makedirs(os.path.join(stage, DEST), exist_ok=True)
done, todo, size = {}, [(n, prog) for n in needed], os.path.getsize(src)
while todo:
    n, by = todo.pop(0)
    if n in done:
        continue
    lib = next((p for p in (resolve(r, os.path.join(l, n)) for r in roots for l in LIBDIRS) if p), None)
    if lib is None:
        die('%s (needed by %s) not found in the extracted packages: add its package to QGA_PKGS' % (n, by))
    done[n] = lib
    dst = os.path.join(stage, DEST, n)
    shutil.copyfile(lib, dst); os.chmod(dst, 0o755 if os.access(lib, os.X_OK) else 0o644)
    size += os.path.getsize(lib)
    todo += [(m, n) for m in elf(lib)[1]]
if interp:   # e.g. /lib64/ld-linux-x86-64.so.2: a link to the copy in DEST
    base = os.path.basename(interp)
    if base not in done:
        die('ELF interpreter %s of %s is not among its DT_NEEDED libraries' % (interp, prog))
    if os.path.dirname(interp).strip('/') != DEST:
        os.makedirs(os.path.join(stage, os.path.dirname(interp).lstrip('/')), exist_ok=True)
        os.symlink('/' + DEST + '/' + base, os.path.join(stage, interp.lstrip('/')))
print('guest:   %s + %d libraries, %d KiB: %s' % (prog, len(done), size // 1024, ' '.join(sorted(done))), file=sys.stderr)
PY
# normalise modes (a git checkout applies the umask): dirs 0755, files 0755 if executable else 0644
find "$STAGE" -type d -exec chmod 0755 {} +
find "$STAGE" -type f \( -perm -u+x -exec chmod 0755 {} + -o -exec chmod 0644 {} + \)
chmod 1777 "$STAGE/tmp"
python3 - "$KROOT/lib/modules/$KVER" "$STAGE/lib/modules/$KVER" "$BOOT_MODS" "$LATE_MODS" <<'PY'
# Resolve module dependencies from .modinfo "depends=", decompress the .ko.xz into the
# initramfs and write boot.order / late.order (paths relative to lib/modules/KVER, load order).
import lzma, os, re, sys
src, dst, boot, late = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
builtin = set()
for line in open(os.path.join(src, 'modules.builtin')):
    builtin.add(os.path.basename(line.strip()).split('.ko')[0].replace('-', '_'))
paths = {}
for dp, _, fn in os.walk(os.path.join(src, 'kernel')):
    for f in fn:
        if '.ko' in f:
            paths[f.split('.ko')[0].replace('-', '_')] = os.path.join(dp, f)
done, cache = set(), {}
def ko(n):
    if n not in cache:
        data = open(paths[n], 'rb').read()
        cache[n] = lzma.decompress(data) if paths[n].endswith('.xz') else data
    return cache[n]
def visit(n, order):
    n = n.replace('-', '_')
    if n in done:
        return
    done.add(n)
    if n in builtin:
        print('guest:   module %s is built in' % n, file=sys.stderr); return
    if n not in paths:
        sys.exit('guest: module %s not found in the kernel package' % n)
    m = re.search(rb'\0depends=([^\0]*)\0', ko(n))
    for d in (m.group(1).decode().split(',') if m else []):
        if d:
            visit(d, order)
    order.append(n)
allmods = []
for name, mods in (('boot.order', boot), ('late.order', late)):
    order = []
    for n in mods:
        visit(n, order)
    with open(os.path.join(dst, name), 'w') as f:
        for n in order:
            rel = os.path.relpath(paths[n], src)
            rel = rel[:-3] if rel.endswith('.xz') else rel
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
            open(os.path.join(dst, rel), 'wb').write(ko(n))
            f.write(rel + '\n')
    print('guest:   %s: %s' % (name, ' '.join(order)), file=sys.stderr)
PY
# modules.dep for busybox modprobe inside the guest (optional convenience)
(cd "$STAGE" && "$HOSTBB" depmod -b . "$KVER" 2>/dev/null) || true
find "$STAGE" -exec touch -h -d @0 {} +
(cd "$STAGE" && find . -mindepth 1 | sort | cpio -o -H newc -R 0:0 --reproducible --quiet) >"$OUT/initrd.img.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"

# ---------------------------------------------------------------- disk.raw (SeaBIOS + syslinux)
if [ "$ARCH" = amd64 ]; then
say "disk.raw: ${DISK_MIB} MiB MBR disk, FAT partition, syslinux"
PART_START=2048
PART_SECTORS=$((DISK_MIB * 2048 - PART_START))
FAT=$CACHE/fat.img
rm -f "$FAT"
truncate -s $((PART_SECTORS * 512)) "$FAT"
mkfs.vfat -F 16 -n KVRSBOOT -h "$PART_START" -i 6b767273 "$FAT" >/dev/null
syslinux --install "$FAT"
cat >"$CACHE/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.img
  APPEND $CMDLINE_Q35
EOF
export MTOOLS_SKIP_CHECK=1
mcopy -m -i "$FAT" "$OUT/vmlinuz" "$OUT/initrd.img" "$CACHE/syslinux.cfg" ::/
python3 - "$FAT" <<'PY'
# Deterministic image: pin the timestamps of all root-directory entries (FAT16, no subdirs).
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    bs = f.read(512)
    bps, spc, rsvd, nfats, nroot = struct.unpack_from('<HBHBH', bs, 11)
    fatsz = struct.unpack_from('<H', bs, 22)[0]
    base = (rsvd + nfats * fatsz) * bps
    date = ((2000 - 1980) << 9) | (1 << 5) | 1
    for i in range(nroot):
        f.seek(base + 32 * i); e = f.read(32)
        if e[0] == 0:
            break
        if e[0] == 0xE5 or e[11] == 0x0F:
            continue
        e = bytearray(e)
        struct.pack_into('<BHHH', e, 13, 0, 0, date, date)   # ctime(10ms), ctime, cdate, adate
        struct.pack_into('<HH', e, 22, 0, date)              # mtime, mdate
        f.seek(base + 32 * i); f.write(e)
PY
rm -f "$OUT/disk.raw.tmp"
truncate -s $((DISK_MIB * 1024 * 1024)) "$OUT/disk.raw.tmp"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$OUT/disk.raw.tmp" bs=440 count=1 conv=notrunc status=none
python3 - "$OUT/disk.raw.tmp" "$PART_START" "$PART_SECTORS" <<'PY'
import struct, sys
path, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, 'r+b') as f:
    f.seek(440); f.write(struct.pack('<IH', 0x6b767273, 0))          # disk signature
    # partition 1: active, type 0x0e (FAT16 LBA), CHS fields saturated (LBA only)
    f.write(struct.pack('<B3sB3sII', 0x80, b'\xfe\xff\xff', 0x0e, b'\xfe\xff\xff', start, count))
    f.write(b'\0' * 48)
    f.write(b'\x55\xaa')
PY
dd if="$FAT" of="$OUT/disk.raw.tmp" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$FAT"
mv "$OUT/disk.raw.tmp" "$OUT/disk.raw"

say "disk.qcow2"
qemu-img convert -q -f raw -O qcow2 "$OUT/disk.raw" "$OUT/disk.qcow2.tmp"
mv "$OUT/disk.qcow2.tmp" "$OUT/disk.qcow2"
fi

# ---------------------------------------------------------------- OCI containerDisk
say "oci/: containerDisk image layout"
LAYER_DIR=$CACHE/layer
rm -rf "$LAYER_DIR" "$OUT/oci"
mkdir -p "$LAYER_DIR/boot" "$OUT/oci/blobs/sha256"
# /boot: firmware.kernelBoot.container (kernelPath/initrdPath); amd64's image is also a
# containerDisk (/disk/disk.qcow2).
cp "$OUT/vmlinuz" "$OUT/initrd.img" "$LAYER_DIR/boot/"
LAYER_TOP=boot
if [ "$ARCH" = amd64 ]; then
	mkdir -p "$LAYER_DIR/disk"
	cp "$OUT/disk.qcow2" "$LAYER_DIR/disk/disk.qcow2"
	cp "$OUT/vmlinux" "$LAYER_DIR/boot/"
	LAYER_TOP="boot disk"
fi
find "$LAYER_DIR" -mindepth 1 -type d -exec chmod 0555 {} +
find "$LAYER_DIR" -type f -exec chmod 0444 {} +
# shellcheck disable=SC2086 # LAYER_TOP: the layer's top directories
tar -C "$LAYER_DIR" --format=ustar --sort=name --mtime=@0 --owner=107 --group=107 --numeric-owner \
	-cf "$CACHE/layer.tar" $LAYER_TOP
chmod -R u+w "$LAYER_DIR" && rm -rf "$LAYER_DIR"
python3 - "$CACHE/layer.tar" "$OUT/oci" "$KPKG $KPKG_VER" "$ARCH" "$REF" <<'PY'
import hashlib, json, os, shutil, sys
layer, oci, kernel, arch, ref = sys.argv[1:6]
def blob(data=None, path=None):
    h = hashlib.sha256()
    if path:
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                h.update(chunk)
        size = os.path.getsize(path)
    else:
        h.update(data); size = len(data)
    d = h.hexdigest()
    dst = os.path.join(oci, 'blobs', 'sha256', d)
    if path:
        shutil.move(path, dst)
    else:
        open(dst, 'wb').write(data)
    return 'sha256:' + d, size
def enc(o):
    return json.dumps(o, sort_keys=True, separators=(',', ':')).encode()
ldig, lsize = blob(path=layer)
config = {
    'architecture': arch, 'os': 'linux',
    'config': {'Labels': {'org.kubevirt-rs.guest.kernel': kernel}},
    'rootfs': {'type': 'layers', 'diff_ids': [ldig]},
    'history': [{'created_by': 'guest/build.sh --arch %s: %s (107:107)' % (arch,
        'disk/disk.qcow2, boot/{vmlinuz,vmlinux,initrd.img}' if arch == 'amd64' else 'boot/{vmlinuz,initrd.img}')}],
}
cdig, csize = blob(enc(config))
manifest = {
    'schemaVersion': 2,
    'mediaType': 'application/vnd.oci.image.manifest.v1+json',
    'config': {'mediaType': 'application/vnd.oci.image.config.v1+json', 'digest': cdig, 'size': csize},
    'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar', 'digest': ldig, 'size': lsize}],
}
mdig, msize = blob(enc(manifest))
index = {
    'schemaVersion': 2,
    'mediaType': 'application/vnd.oci.image.index.v1+json',
    'manifests': [{
        'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': mdig, 'size': msize,
        'platform': {'architecture': arch, 'os': 'linux'},
        'annotations': {'org.opencontainers.image.ref.name': ref},
    }],
}
open(os.path.join(oci, 'index.json'), 'wb').write(enc(index))
open(os.path.join(oci, 'oci-layout'), 'wb').write(enc({'imageLayoutVersion': '1.0.0'}))
print('guest:   manifest %s' % mdig, file=sys.stderr)
PY

# ---------------------------------------------------------------- metadata
cp "$HERE/cmdline" "$OUT/cmdline"
echo "$VERSIONS" >"$OUT/versions.txt"
echo "$STAMP" >"$OUT/.stamp"
echo "$QUICK" >"$OUT/.quick"
say "done ($ARCH): $OUT ($(du -sh "$OUT/initrd.img" | cut -f1) initrd, $KPKG $KPKG_VER)"
