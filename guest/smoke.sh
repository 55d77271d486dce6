#!/usr/bin/env bash
# Boot the demo guest built by guest/build.sh under QEMU (TCG only) and check its serial console.
#
#   guest/smoke.sh OUTDIR            functional checks (7 boots, about 1-2 minutes)
#   guest/smoke.sh OUTDIR --bench [N]  exec-to-banner timing, median of N (default 3) per config
#
# Needs qemu-system-x86_64, genisoimage, mkfs.vfat + mcopy, python3. Never uses KVM.
set -euo pipefail
die() { echo "smoke: error: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: $0 OUTDIR [--bench [N]]"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
G=$(cd "$1" && pwd)
MODE=${2:-check}
RUNS=${3:-3}
for t in qemu-system-x86_64 genisoimage mkfs.vfat mcopy python3; do
	command -v $t >/dev/null || die "$t missing (apt-get install qemu-system-x86 genisoimage dosfstools mtools)"
done
for f in vmlinuz vmlinux initrd.img disk.raw disk.qcow2 cmdline; do [ -s "$G/$f" ] || die "$G/$f missing: run guest/build.sh $G"; done
W=$(mktemp -d /tmp/kvrs-smoke.XXXXXX)
trap 'rm -rf "$W"' EXIT
export MTOOLS_SKIP_CHECK=1

# NoCloud seed, ISO9660, shell-script user-data
mkdir -p "$W/nocloud"
printf 'instance-id: iid-smoke-1\nlocal-hostname: smokevm\n' >"$W/nocloud/meta-data"
printf '#!/bin/sh\necho hello-from-user-data\n' >"$W/nocloud/user-data"
genisoimage -quiet -o "$W/cidata.iso" -V cidata -J -r "$W/nocloud"
# NoCloud seed, ISO9660, #cloud-config user-data
mkdir -p "$W/cc"
printf 'instance-id: iid-smoke-2\nlocal-hostname: ignored\n' >"$W/cc/meta-data"
printf '#cloud-config\nhostname: cchost\nruncmd:\n  - echo hello-from-runcmd $(hostname)\n  - [ echo, second-runcmd ]\n' >"$W/cc/user-data"
genisoimage -quiet -o "$W/cc.iso" -V cidata -J -r "$W/cc"
# ConfigDrive seed, vfat labelled config-2
truncate -s 4M "$W/config2.img"
mkfs.vfat -n config-2 "$W/config2.img" >/dev/null 2>&1
printf '{"uuid": "cd-uuid-1", "hostname": "cdhost"}\n' >"$W/meta_data.json"
printf '#!/bin/sh\necho hello-from-configdrive $(hostname)\n' >"$W/user_data"
mmd -i "$W/config2.img" ::/openstack ::/openstack/latest
mcopy -i "$W/config2.img" "$W/meta_data.json" "$W/user_data" ::/openstack/latest/

Q35_CMDLINE=$(sed -n 's/^q35=//p' "$G/cmdline")
MICROVM_CMDLINE=$(sed -n 's/^microvm=//p' "$G/cmdline")

exec python3 - "$MODE" "$RUNS" "$G" "$W" "$Q35_CMDLINE" "$MICROVM_CMDLINE" <<'PY'
import json, os, select, socket, statistics, subprocess, sys, time
mode, runs, G, W, Q35, MICRO = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
BANNER = 'kubevirt-rs demo guest: booted'

def qemu_base(machine):
    if machine == 'q35':
        return ['qemu-system-x86_64', '-machine', 'q35,accel=tcg', '-m', '256']
    return ['qemu-system-x86_64', '-machine',
            'microvm,accel=tcg,rtc=on,pit=on,pic=on,isa-serial=on,acpi=on', '-cpu', 'max', '-m', '256']

COMMON = ['-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-serial', 'stdio']

def cfg(name):
    """QEMU argv for each configuration."""
    nic_pci = ['-netdev', 'user,id=n0', '-device', 'virtio-net-pci,netdev=n0']
    nic_mmio = ['-netdev', 'user,id=n0', '-device', 'virtio-net-device,netdev=n0']
    def blk(file, dev, fmt='raw', ro=True, extra=''):
        return ['-drive', 'if=none,id=d%s,file=%s,format=%s%s' % (dev.split(',')[0].replace('-', ''), file, fmt, ',readonly=on' if ro else ''),
                '-device', '%s,drive=d%s%s' % (dev, dev.split(',')[0].replace('-', ''), extra)]
    if name == 'q35-vmlinuz':        # firmware.kernelBoot with the bzImage
        return qemu_base('q35') + COMMON + ['-kernel', G + '/vmlinuz', '-initrd', G + '/initrd.img', '-append', Q35] \
            + blk(W + '/cidata.iso', 'virtio-blk-pci') + nic_pci
    if name == 'q35-vmlinux':        # PVH entry of the uncompressed ELF; #cloud-config on a SATA cdrom
        return qemu_base('q35') + COMMON + ['-kernel', G + '/vmlinux', '-initrd', G + '/initrd.img', '-append', Q35] \
            + ['-drive', 'if=none,id=cd0,file=%s/cc.iso,format=raw,readonly=on,media=cdrom' % W,
               '-device', 'ide-cd,drive=cd0,bus=ide.1'] + nic_pci
    if name == 'q35-configdrive':    # ConfigDrive (vfat, label config-2) on virtio-blk
        return qemu_base('q35') + COMMON + ['-kernel', G + '/vmlinux', '-initrd', G + '/initrd.img', '-append', Q35] \
            + blk(W + '/config2.img', 'virtio-blk-pci')
    if name == 'q35-disk-virtio':    # SeaBIOS -> syslinux on disk.raw (virtio-blk)
        return qemu_base('q35') + COMMON + ['-drive', 'if=none,id=d0,file=%s/disk.raw,format=raw,snapshot=on' % G,
                                            '-device', 'virtio-blk-pci,drive=d0,bootindex=1']
    if name == 'q35-disk-sata':      # SeaBIOS -> syslinux on disk.qcow2 (q35 built-in AHCI)
        return qemu_base('q35') + COMMON + ['-drive', 'if=none,id=d0,file=%s/disk.qcow2,format=qcow2,snapshot=on' % G,
                                            '-device', 'ide-hd,drive=d0,bus=ide.0,bootindex=1']
    if name == 'microvm-vmlinux':    # microvm + PVH, virtio-mmio devices
        return qemu_base('microvm') + COMMON + ['-kernel', G + '/vmlinux', '-initrd', G + '/initrd.img', '-append', MICRO] \
            + blk(W + '/cidata.iso', 'virtio-blk-device') + nic_mmio
    if name == 'microvm-vmlinuz':
        return qemu_base('microvm') + COMMON + ['-kernel', G + '/vmlinuz', '-initrd', G + '/initrd.img', '-append', MICRO] \
            + blk(W + '/cidata.iso', 'virtio-blk-device') + nic_mmio
    raise KeyError(name)

class VM:
    def __init__(self, name, qmp=False):
        self.name, self.t0, self.log, self.buf = name, time.monotonic(), [], b''
        argv = cfg(name)
        self.qmp_path = None
        if qmp:
            self.qmp_path = '%s/%s.qmp' % (W, name)
            argv += ['-qmp', 'unix:%s,server=on,wait=off' % self.qmp_path]
        self.argv = argv
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        os.set_blocking(self.p.stdout.fileno(), False)
    def pump(self, timeout):
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if r:
            data = self.p.stdout.read() or b''
            if not data:
                return False
            self.buf += data
            while b'\n' in self.buf:
                line, self.buf = self.buf.split(b'\n', 1)
                self.log.append((time.monotonic() - self.t0, line.decode(errors='replace').rstrip('\r')))
        return True
    def text(self):
        return '\n'.join(l for _, l in self.log) + '\n' + self.buf.decode(errors='replace')
    def wait_for(self, s, timeout=90):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for t, l in self.log:
                if s in l:
                    return t
            if s in self.buf.decode(errors='replace'):
                return time.monotonic() - self.t0
            if not self.pump(0.05) and self.p.poll() is not None:
                break
        raise AssertionError('%s: %r not seen within %ss' % (self.name, s, timeout))
    def send(self, s):
        self.p.stdin.write(s.encode()); self.p.stdin.flush()
    def powerdown(self, timeout=30):
        sock = socket.socket(socket.AF_UNIX); sock.connect(self.qmp_path); f = sock.makefile('rw')
        f.readline()
        for cmd in ('qmp_capabilities', 'system_powerdown'):
            f.write(json.dumps({'execute': cmd}) + '\n'); f.flush()
        end = time.monotonic() + timeout
        while self.p.poll() is None and time.monotonic() < end:
            self.pump(0.1)
        if self.p.poll() is None:
            raise AssertionError('%s: still running %ss after system_powerdown' % (self.name, timeout))
        self.pump(0)
    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()

def check(name, expect, powerdown=False, typed=False, timeout=120):
    vm = VM(name, qmp=powerdown)
    try:
        times = {}
        for s in expect:
            times[s] = vm.wait_for(s, timeout)
        if typed:
            vm.wait_for('# ', 30)
            vm.send('echo typed-$((6*7))\n')
            times['typed'] = vm.wait_for('typed-42', 30)
        if powerdown:
            vm.powerdown()
            if 'power button, powering off' not in vm.text():
                raise AssertionError('%s: no power button message' % name)
            times['exit'] = time.monotonic() - vm.t0
        print('smoke: PASS %-18s %s' % (name, '  '.join('%s@%.1fs' % (k.split(':')[0][:24], v) for k, v in times.items())))
        return True
    except AssertionError as e:
        print('smoke: FAIL %s\n  cmd: %s\n--- console ---\n%s\n---------------' % (e, ' '.join(vm.argv), vm.text()))
        return False
    finally:
        vm.kill()

if mode == 'check':
    ok = True
    ok &= check('q35-vmlinuz', [BANNER, 'hello-from-user-data', 'eth0: 10.0.2.15/24', 'cloud-init: done'],
                powerdown=True, typed=True)
    ok &= check('q35-vmlinux', [BANNER, 'hello-from-runcmd cchost', 'second-runcmd', 'cloud-init: done',
                                'eth0: 10.0.2.15/24'], powerdown=True)
    ok &= check('q35-configdrive', [BANNER, 'configdrive datasource', 'hello-from-configdrive cdhost',
                                    'cloud-init: done'])
    ok &= check('q35-disk-virtio', [BANNER, 'cloud-init: no datasource'], typed=True)
    ok &= check('q35-disk-sata', [BANNER, 'cloud-init: no datasource'])
    ok &= check('microvm-vmlinux', [BANNER, 'hello-from-user-data', 'eth0: 10.0.2.15/24', 'cloud-init: done'],
                powerdown=True, typed=True)
    print('smoke: %s' % ('all passed' if ok else 'FAILED'))
    sys.exit(0 if ok else 1)

# --bench: seconds from QEMU exec to the banner line
print('%-18s %8s   %s' % ('config', 'median', 'runs (s, exec -> "%s")' % BANNER))
for name in ('q35-vmlinuz', 'q35-vmlinux', 'microvm-vmlinux', 'q35-disk-virtio'):
    ts = []
    for _ in range(runs):
        vm = VM(name)
        try:
            ts.append(vm.wait_for(BANNER, 120))
        finally:
            vm.kill()
    print('%-18s %8.2f   %s' % (name, statistics.median(ts), ' '.join('%.2f' % t for t in ts)))
PY
