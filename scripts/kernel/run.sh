#!/usr/bin/env bash
# Boot Debian's 6.12 kernel under qemu and run one command inside it, against the built project.
#
#   scripts/kernel/run.sh [--] COMMAND [ARG...]     (run from anywhere; the command runs in the guest's /project)
#   scripts/kernel/run.sh                           (no command: runs scripts/kernel/smoke.mjs)
#
# Why: this host's kernel has neither udmabuf nor DMA heaps; Debian's 6.12 image has both (CONFIG_UDMABUF=y,
# CONFIG_DMABUF_HEAPS_SYSTEM=y, vgem as a module). The guest is an initramfs (busybox, node and its shared
# libraries, the needed kernel modules, the project) plus a fresh ext4 disk on virtio-blk for data files, because
# RAM-backed file systems refuse O_DIRECT. Exit status: the guest command's own; 124 on timeout; 125 when the guest
# stopped without reporting one; 2 for a host-side setup problem. See scripts/kernel/README.md for the env vars.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SELF="$REPO/scripts/kernel/run.sh"
CACHE=${DMALOAD_KERNEL_CACHE:-$REPO/.cache/kernel}
TIMEOUT=${DMALOAD_KERNEL_TIMEOUT:-1800}          # seconds, whole qemu run
MEM=${DMALOAD_KERNEL_MEM:-4G}
SMP=${DMALOAD_KERNEL_SMP:-2}
NUMA_NODES=${DMALOAD_KERNEL_NUMA_NODES:-2}       # guest NUMA nodes sharing MEM and the CPUs evenly (1: no -numa)
DISK_SIZE=${DMALOAD_KERNEL_DISK_SIZE:-2G}
FAULT_DISK_SIZE=${DMALOAD_KERNEL_FAULT_DISK_SIZE:-1G}   # second disk, under device-mapper (0: none)
ACCEL=${DMALOAD_KERNEL_ACCEL:-auto}               # auto | kvm | tcg
PKG_RE=${DMALOAD_KERNEL_PACKAGE_RE:-'^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$'}
# Modules to load at boot; their dependencies come from each module's own modinfo (depends=, softdep pre:).
MODULES=${DMALOAD_KERNEL_MODULES:-"virtio_blk crc32c_generic ext4 vgem"}
# Device-mapper for the fault tests (test/kernel/faults.test.ts): the linear and error targets are in dm_mod.
# Optional: a module the kernel package lacks is left out with a note, and the tests that need it skip.
FAULT_MODULES=${DMALOAD_KERNEL_FAULT_MODULES:-"dm_mod dm_delay dm_flakey"}
# Project paths copied into the guest (repo-relative; missing ones are skipped). node_modules is added separately:
# only the packages reachable from package.json "dependencies".
INCLUDE=${DMALOAD_KERNEL_INCLUDE:-"package.json bin dist test scripts/kernel"}
NODE_BIN=$(readlink -f "${DMALOAD_KERNEL_NODE:-$(command -v node || echo /usr/bin/node)}")

say() { printf '[kernel] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }

if [[ ${1-} == -- ]]; then shift; fi
if [[ $# -eq 0 ]]; then set -- node scripts/kernel/smoke.mjs; fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dmaload-kernel.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ms() { date +%s%3N; }
T0=$(now_ms)

# ---------------------------------------------------------------------------------------------------------------
# 1. Host tools. CI installs them; locally, say exactly what to install.
check_tools() {
  local missing=() cmd pkg
  for pair in qemu-system-x86_64:qemu-system-x86 cpio:cpio mkfs.ext4:e2fsprogs xz:xz-utils \
              apt-get:apt dpkg-deb:dpkg ldd:libc-bin dmsetup:dmsetup filefrag:e2fsprogs; do
    cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/sbin:/usr/sbin" command -v "$cmd" >/dev/null 2>&1 \
      || missing+=("$pkg")
  done
  # The guest has no libc of its own besides node's: busybox must be the static build (Debian: busybox-static).
  BUSYBOX=$(command -v busybox || true)
  if [[ -z $BUSYBOX ]] || ldd "$BUSYBOX" >/dev/null 2>&1; then missing+=(busybox-static); fi
  [[ -x $NODE_BIN ]] || die "node not found at '$NODE_BIN' (set DMALOAD_KERNEL_NODE)"
  if ((${#missing[@]})); then
    say "missing host tools. Install them with:"
    say "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    exit 2
  fi
}
export PATH="$PATH:/sbin:/usr/sbin"   # mkfs.ext4, dmsetup and filefrag live in /sbin for non-root users
check_tools
# Guest tools for the fault tests, copied with their libraries as node is: dmsetup builds device-mapper tables,
# filefrag (FIEMAP) finds where a file's bytes are on the device.
GUEST_TOOLS=("$(readlink -f "$(command -v dmsetup)")" "$(readlink -f "$(command -v filefrag)")")
# Every library the loader would map for these programs (one ldd per file: with several, ldd prints headers).
libs_of() { local f; for f; do ldd "$f"; done | grep -o '/[^ ]*' | sort -u; }

# ---------------------------------------------------------------------------------------------------------------
# 2. Kernel: newest matching package from apt's lists, downloaded once and extracted into the cache.
mkdir -p "$CACHE"
# Concurrent runs share the cache: one at a time through download, extraction and the base build.
exec 9>"$CACHE/.lock"
flock 9
fetch_kernel() {
  local pkg dir
  pkg=$(apt-cache search --names-only "$PKG_RE" 2>/dev/null | awk '{print $1}' | sort -V | tail -n 1 || true)
  if [[ -z $pkg ]]; then
    # Offline or no apt lists: fall back to the newest kernel already in the cache.
    dir=$(find "$CACHE" -maxdepth 1 -type d -name 'linux-image-*' 2>/dev/null | sort -V | tail -n 1)
    [[ -n $dir && -e $dir/.complete ]] \
      || die "no package matches $PKG_RE in apt's lists and none is cached: run 'apt-get update' first"
    say "apt knows no kernel package; using cached $(basename "$dir")"
    KDIR=$dir; return
  fi
  KDIR=$CACHE/$pkg
  if [[ ! -e $KDIR/.complete ]]; then
    say "downloading $pkg"
    rm -rf "$KDIR" "$KDIR.tmp"; mkdir -p "$WORK/deb" "$KDIR.tmp"
    # apt-get download drops privileges to _apt when it can; a world-writable dir avoids its sandbox warning.
    chmod 777 "$WORK/deb"
    (cd "$WORK/deb" && apt-get download -q "$pkg" >&2) || die "apt-get download $pkg failed"
    dpkg-deb -x "$WORK"/deb/*.deb "$KDIR.tmp"
    touch "$KDIR.tmp/.complete"; mv "$KDIR.tmp" "$KDIR"
    # Keep only the kernel in use: older extracted trees are ~115 MB each.
    find "$CACHE" -maxdepth 1 -type d -name 'linux-image-*' ! -path "$KDIR" -exec rm -rf {} +
  fi
}
fetch_kernel
VMLINUZ=$(ls "$KDIR"/boot/vmlinuz-* | head -n 1)
KVER=${VMLINUZ##*/vmlinuz-}
MODDIR=$KDIR/lib/modules/$KVER
[[ -f $VMLINUZ && -d $MODDIR ]] || die "bad kernel tree in $KDIR (delete it and rerun)"

# ---------------------------------------------------------------------------------------------------------------
# 3. Base initramfs: busybox, node + libraries, modules, /init. Cached by everything that goes into it.
base_key() {
  {
    sha256sum "$SELF"
    echo "$KVER $MODULES / $FAULT_MODULES"
    # Files by path, size and mtime: cheap, and changes whenever apt upgrades them.
    stat -L -c '%n %s %Y' "$BUSYBOX" "$NODE_BIN" "${GUEST_TOOLS[@]}" $(libs_of "$NODE_BIN" "${GUEST_TOOLS[@]}")
  } | sha256sum | cut -c1-16
}
BASE=$CACHE/base-$(base_key).cpio

# Module name -> path (relative to $MODDIR), built once. Names normalise '-' to '_', as the kernel does.
declare -A MODPATH=()
index_modules() {
  local f rel name
  while IFS= read -r f; do
    rel=${f#"$MODDIR"/}; name=${rel##*/}; name=${name%%.ko*}; name=${name//-/_}
    MODPATH[$name]=$rel
  done < <(find "$MODDIR/kernel" -name '*.ko*')
}

# Softdeps name aliases ("crypto-crc32c"); only the few this module set meets are mapped, others are ignored.
declare -A ALIAS=([crypto_crc32c]=crc32c_generic [crypto_crc32]=crc32_generic)

# Depth-first over depends= and softdep pre:, appending to ORDER after the dependencies (= load order).
declare -A SEEN=() DEPS=()
ORDER=()
resolve() {
  local name=${1//-/_} rel ko info deps soft d list=()
  [[ -n ${ALIAS[$name]-} ]] && name=${ALIAS[$name]}
  [[ -n ${SEEN[$name]-} ]] && return 0
  SEEN[$name]=1
  if [[ -z ${MODPATH[$name]-} ]]; then
    if grep -q "/$name.ko" "$MODDIR/modules.builtin"; then return 0; fi   # built in: nothing to load
    die "kernel module '$name' is neither in $KVER's package nor built in"
  fi
  rel=${MODPATH[$name]}; ko=$STAGE/lib/modules/$KVER/${rel%.xz}
  mkdir -p "${ko%/*}"
  case $rel in
    *.xz) xz -dc "$MODDIR/$rel" >"$ko" ;;
    *.zst) zstd -qdc "$MODDIR/$rel" >"$ko" ;;
    *) cp "$MODDIR/$rel" "$ko" ;;
  esac
  # .modinfo strings are NUL-separated "key=value"; grep -a reads them straight from the ELF file.
  info=$(grep -a -o -E '(depends|softdep)=[^[:cntrl:]]*' "$ko" || true)
  deps=$(sed -n 's/^depends=//p' <<<"$info" | tr ',' ' ')
  soft=$(sed -n 's/^softdep=.*pre: *\([^:]*\).*/\1/p' <<<"$info" | sed 's/ post$//')
  for d in $soft $deps; do
    d=${d//-/_}; [[ -n ${ALIAS[$d]-} ]] && d=${ALIAS[$d]}
    if [[ -z ${MODPATH[$d]-} && $d == crypto_* ]]; then say "note: softdep $d of $name not mapped, skipped"; continue; fi
    resolve "$d"
    [[ -n ${MODPATH[$d]-} ]] && list+=("$d")
  done
  DEPS[$name]="${list[*]}"
  ORDER+=("$name")
}

# All dependencies of $1, transitively, in the order busybox/kmod modprobe expect in modules.dep (loaded last first).
dep_closure() {
  local -A got=(); local out=() n d
  _walk() { local x; for x in ${DEPS[$1]}; do [[ -n ${got[$x]-} ]] && continue; got[$x]=1; _walk "$x"; out+=("$x"); done; }
  _walk "$1"
  for ((n = ${#out[@]} - 1; n >= 0; n--)); do d=${out[n]}; printf ' %s' "${MODPATH[$d]%.xz}"; done
}

build_base() {
  local t a lib
  t=$(now_ms)
  STAGE=$WORK/base; mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,data,fault,root,run,etc/dmaload,project}
  cp "$BUSYBOX" "$STAGE/bin/busybox"
  for a in $("$BUSYBOX" --list-full); do
    [[ $a == bin/busybox ]] && continue
    mkdir -p "$STAGE/${a%/*}"; ln -sf /bin/busybox "$STAGE/$a"
  done
  # node and every library the loader would map, at the same absolute paths (loader included).
  cp "$NODE_BIN" "$STAGE/usr/bin/node"
  for a in "${GUEST_TOOLS[@]}"; do cp "$a" "$STAGE/usr/sbin/${a##*/}"; done
  for lib in $(libs_of "$NODE_BIN" "${GUEST_TOOLS[@]}"); do
    mkdir -p "$STAGE$(dirname "$lib")"; cp -L "$lib" "$STAGE$lib"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$STAGE/etc/passwd"
  printf 'root:x:0:\n' >"$STAGE/etc/group"

  index_modules
  for a in $MODULES; do resolve "$a"; done
  local faults=()
  for a in $FAULT_MODULES; do
    a=${a//-/_}
    if [[ -n ${MODPATH[$a]-} ]]; then resolve "$a"; faults+=("$a")
    elif grep -q "/$a.ko" "$MODDIR/modules.builtin"; then :          # built in
    else say "note: fault-test module $a is not in $KVER's package; the tests that need it will skip"; fi
  done
  printf '%s\n' "${faults[@]}" >"$STAGE/etc/dmaload/fault-modules"
  local md=$STAGE/lib/modules/$KVER
  cp "$MODDIR/modules.builtin" "$MODDIR/modules.order" "$md/" 2>/dev/null || true
  : >"$md/modules.dep"; : >"$md/modules.alias"
  for a in "${ORDER[@]}"; do
    printf '%s:%s\n' "${MODPATH[$a]%.xz}" "$(dep_closure "$a")" >>"$md/modules.dep"
    grep -a -o -E 'alias=[^[:cntrl:]]*' "$STAGE/lib/modules/$KVER/${MODPATH[$a]%.xz}" \
      | sed "s/^alias=\(.*\)/alias \1 $a/" >>"$md/modules.alias" || true
  done
  # Load order for the insmod fallback, one path per line.
  for a in "${ORDER[@]}"; do echo "/lib/modules/$KVER/${MODPATH[$a]%.xz}"; done >"$STAGE/etc/dmaload/modules"

  write_init >"$STAGE/init"; chmod 755 "$STAGE/init"
  (cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$BASE.tmp"
  mv "$BASE.tmp" "$BASE"
  find "$CACHE" -maxdepth 1 -name 'base-*.cpio' ! -path "$BASE" -delete
  say "built base initramfs ($(du -m "$BASE" | cut -f1) MiB, modules: ${ORDER[*]}) in $(( $(now_ms) - t )) ms"
}

# The guest's PID 1. Prints facts, loads modules, mounts the disk, runs /etc/dmaload/cmd, reports its status.
write_init() {
  cat <<'EOF'
#!/bin/sh
export PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
# Kernel messages (module loads, warnings) stay out of the test output unless they are errors.
echo 3 >/proc/sys/kernel/printk
g() { echo "[guest] $*"; }
g "init at $(cut -d' ' -f1 /proc/uptime) s uptime, kernel $(uname -r)"

# modprobe with our generated modules.dep; insmod in dependency order when that fails.
for m in $(cat /etc/dmaload/boot-modules /etc/dmaload/fault-modules); do
  modprobe "$m" 2>/dev/null || fallback=1
done
if [ -n "${fallback-}" ]; then
  g "modprobe failed; loading with insmod in dependency order"
  for ko in $(cat /etc/dmaload/modules); do
    n=$(basename "$ko" .ko | tr - _)
    grep -q "^$n " /proc/modules || insmod "$ko" || g "insmod $ko failed"
  done
fi

if mount -t ext4 /dev/vda /data; then
  mkdir -p /data/tmp && chmod 1777 /data/tmp
else
  g "could not mount /dev/vda on /data"
fi

# Fault device (test/kernel/faults.test.ts): ext4 (made by run.sh) on the second disk, seen through a device-mapper
# device whose table starts as linear over the whole disk; the tests swap in error, delay and flakey tables.
# Without udev, libdevmapper makes the /dev/mapper nodes itself (DM_DISABLE_UDEV); devtmpfs makes the control node.
export DM_DISABLE_UDEV=1
FAULT_DEV=/dev/mapper/dmaload-fault
fault_setup() {
  [ -b /dev/vdb ] || { echo "no second disk /dev/vdb (DMALOAD_KERNEL_FAULT_DISK_SIZE=0?)"; return; }
  [ -e /sys/module/dm_mod ] || { echo "device-mapper (dm_mod) is not in this kernel"; return; }
  [ -c /dev/mapper/control ] || { mkdir -p /dev/mapper; mknod /dev/mapper/control c 10 "$(awk '$2 == "device-mapper" { print $1 }' /proc/misc)"; }
  dmsetup create dmaload-fault --table "0 $(cat /sys/block/vdb/size) linear /dev/vdb 0" >/dev/null 2>/tmp/dm.err \
    || { echo "dmsetup create failed: $(cat /tmp/dm.err)"; return; }
  mount -t ext4 -o noatime $FAULT_DEV /fault 2>/tmp/dm.err || { echo "mount $FAULT_DEV failed: $(cat /tmp/dm.err)"; return; }
  mkdir -p /fault/tmp && chmod 1777 /fault/tmp
}
fault_reason=$(fault_setup)
if [ -z "$fault_reason" ]; then
  export DMALOAD_KERNEL_FAULT_DEV=$FAULT_DEV DMALOAD_KERNEL_FAULT_DISK=/dev/vdb DMALOAD_KERNEL_FAULT_DIR=/fault/tmp
  g "fault device: $FAULT_DEV (linear over /dev/vdb, $(( $(cat /sys/block/vdb/size) / 2048 )) MiB) on /fault;" \
    "dm targets: $(dmsetup targets | cut -d' ' -f1 | tr '\n' ' ')"
else
  export DMALOAD_KERNEL_FAULT_SKIP="$fault_reason"
  g "no fault device: $fault_reason"
fi

g "/dev/udmabuf: $( [ -c /dev/udmabuf ] && echo present || echo MISSING )," \
  "size_limit_mb=$(cat /sys/module/udmabuf/parameters/size_limit_mb 2>/dev/null || echo '?')," \
  "dma heaps: $(ls /dev/dma_heap 2>/dev/null | tr '\n' ' ')," \
  "dri: $(ls /dev/dri 2>/dev/null | tr '\n' ' ')," \
  "modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
g "NUMA nodes with memory: $(cat /sys/devices/system/node/has_memory 2>/dev/null || echo 'none (no CONFIG_NUMA)')"
g "/data: $(df -m /data | tail -n 1 | awk '{print $2 " MiB ext4, " $4 " MiB free"}'), TMPDIR=/data/tmp"

export TMPDIR=/data/tmp DMALOAD_KERNEL_GUEST=1
[ -f /etc/dmaload/env ] && . /etc/dmaload/env
cd /project
g "running at $(cut -d' ' -f1 /proc/uptime) s uptime: $(cat /etc/dmaload/cmd-text)"
/bin/sh /etc/dmaload/cmd </dev/null
status=$?
cd /
sync
umount /fault 2>/dev/null
umount /data 2>/dev/null
echo "DMALOAD_EXIT=$status"
poweroff -f
EOF
}

if [[ ! -f $BASE ]]; then build_base; else say "base initramfs cached: ${BASE#"$REPO"/}"; fi

# ---------------------------------------------------------------------------------------------------------------
# 4. Accelerator: KVM when it really runs a guest (here nested KVM stops with an internal error), else TCG.
#    The probe boots the kernel without a root file system and waits for its "no root" panic; the answer is
#    cached per host kernel, qemu build and guest kernel, since a failing probe costs ~2.5 s.
kvm_works() {
  [[ -r /dev/kvm && -w /dev/kvm ]] || return 1
  local key log=$WORK/kvm-probe.log pid i
  key=$CACHE/kvm-probe-$( { uname -r; qemu-system-x86_64 --version | head -n 1; echo "$KVER"; } | sha256sum | cut -c1-12)
  if [[ -f $key ]]; then [[ $(cat "$key") == yes ]]; return; fi
  qemu-system-x86_64 -accel kvm -cpu host -m 256 -nographic -no-reboot -nic none -kernel "$VMLINUZ" \
    -append 'console=ttyS0 panic=-1' </dev/null >"$log" 2>&1 &
  pid=$!
  for ((i = 0; i < 150; i++)); do        # ≤ 30 s: a working KVM reaches that panic in ~1-2 s
    kill -0 "$pid" 2>/dev/null || break
    grep -q -e 'KVM internal error' -e 'emulation failure' -e 'Kernel panic' "$log" && break
    sleep 0.2
  done
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  if grep -q 'Kernel panic' "$log"; then echo yes >"$key"; return 0; fi
  echo no >"$key"; say "KVM does not run guests here ($(grep -o -m1 -e 'KVM internal error.*' -e 'emulation failure' "$log" || echo 'no panic seen')); using TCG"
  return 1
}
case $ACCEL in
  tcg) ACCEL_ARGS=(-accel tcg -cpu max) ;;
  kvm) ACCEL_ARGS=(-accel kvm -cpu host) ;;
  auto) if kvm_works; then ACCEL_ARGS=(-accel kvm -cpu host); else ACCEL_ARGS=(-accel tcg -cpu max); fi ;;
  *) die "DMALOAD_KERNEL_ACCEL must be auto, kvm or tcg" ;;
esac

# NUMA (test/kernel/numa.test.ts): NUMA_NODES nodes, each a RAM backend of an equal share of MEM with a share of the
# CPUs (a node may get none when there are more nodes than CPUs), so mbind and move_pages meet real nodes.
NUMA_ARGS=()
if [[ ! $NUMA_NODES =~ ^[1-9][0-9]*$ ]]; then die "DMALOAD_KERNEL_NUMA_NODES must be a whole number >= 1"; fi
if ((NUMA_NODES > 1)); then
  case $MEM in
    *[Gg]) MEM_MB=$(( ${MEM%[Gg]} * 1024 )) ;;
    *[Mm]) MEM_MB=${MEM%[Mm]} ;;
    *[0-9]) MEM_MB=$MEM ;;
    *) die "DMALOAD_KERNEL_MEM must be a number of MiB, or end in M or G, with DMALOAD_KERNEL_NUMA_NODES > 1" ;;
  esac
  [[ $MEM_MB =~ ^[0-9]+$ ]] || die "DMALOAD_KERNEL_MEM must be whole MiB or GiB"
  for ((i = 0; i < NUMA_NODES; i++)); do
    size=$(( MEM_MB / NUMA_NODES )); ((i == NUMA_NODES - 1)) && size=$(( MEM_MB - size * (NUMA_NODES - 1) ))
    lo=$(( i * SMP / NUMA_NODES )); hi=$(( (i + 1) * SMP / NUMA_NODES - 1 )); cpus=
    ((hi >= lo)) && cpus=",cpus=$lo-$hi"
    NUMA_ARGS+=(-object "memory-backend-ram,id=numa$i,size=${size}M" -numa "node,nodeid=$i,memdev=numa$i$cpus")
  done
  MEM=${MEM_MB}M
fi

# ---------------------------------------------------------------------------------------------------------------
# 5. Per-run layer: the project, the command and its env. Appended to the base archive (the kernel unpacks
#    concatenated cpio archives in order).
T1=$(now_ms)
RUN=$WORK/run; mkdir -p "$RUN/project" "$RUN/etc/dmaload"
copy_into_project() {   # repo-relative path -> $RUN/project, hard links when possible (same file system)
  local p=$1
  [[ -e $REPO/$p ]] || return 0
  mkdir -p "$RUN/project/$(dirname "$p")"
  cp -al "$REPO/$p" "$RUN/project/$p" 2>/dev/null || cp -a "$REPO/$p" "$RUN/project/$p"
}
for p in $INCLUDE; do copy_into_project "$p"; done
# The addon: only the built .node files, not the object files next to them.
if compgen -G "$REPO/build/Release/*.node" >/dev/null; then
  mkdir -p "$RUN/project/build/Release"; cp "$REPO"/build/Release/*.node "$RUN/project/build/Release/"
  # Libraries the addon needs beyond node's own (none today; liburing would be one) go in at the same paths.
  for lib in $(for f in "$REPO"/build/Release/*.node; do ldd "$f"; done | grep -o '/[^ ]*' | sort -u); do
    ldd "$NODE_BIN" | grep -q -F " $lib " && continue
    [[ $lib == /lib64/ld-linux* ]] && continue
    mkdir -p "$RUN$(dirname "$lib")"; cp -L "$lib" "$RUN$lib"; say "addon library added: $lib"
  done
else
  say "warning: no build/Release/*.node — the addon is not built"
fi
# Runtime node_modules: packages reachable from package.json "dependencies" (hoisted or nested), nothing else.
(cd "$REPO" && "$NODE_BIN" -e '
  const fs = require("fs"), path = require("path"), seen = new Set();
  const walk = (dir) => {
    let pkg; try { pkg = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")); } catch { return; }
    for (const name of Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies })) {
      for (let d = dir; ; d = path.dirname(d)) {           // Node resolution: nearest node_modules upward
        const cand = path.join(d, "node_modules", name);
        if (fs.existsSync(cand)) { if (!seen.has(cand)) { seen.add(cand); walk(cand); } break; }
        if (d === path.dirname(d) || d === process.cwd()) break;
      }
    }
  };
  walk(process.cwd());
  for (const p of seen) console.log(path.relative(process.cwd(), p));
') | while IFS= read -r p; do copy_into_project "$p"; done

# The command, quoted for the guest's ash, plus forwarded env: NODE_OPTIONS, CI, OPENSSL_ia32cap and DMALOAD_*
# except our own knobs.
{ printf 'exec'; printf ' %q' "$@"; printf '\n'; } >"$RUN/etc/dmaload/cmd"
printf '%s\n' "$*" >"$RUN/etc/dmaload/cmd-text"
while IFS='=' read -r name _; do
  case $name in DMALOAD_KERNEL_*) continue ;; NODE_OPTIONS | CI | OPENSSL_ia32cap | DMALOAD_*) ;; *) continue ;; esac
  printf 'export %s=%q\n' "$name" "${!name}"
done < <(env) >"$RUN/etc/dmaload/env"
# Under TCG, OpenSSL's AVX/AVX2 code paths are emulated slowly: sha256 of 64 MiB takes ~2.3 s with them and
# ~0.9 s without (same digests). Mask them in the guest unless the caller set OPENSSL_ia32cap itself.
if [[ ${ACCEL_ARGS[1]} == tcg && -z ${OPENSSL_ia32cap+x} ]]; then
  echo "export OPENSSL_ia32cap='~0x1000000000000000:~0x20'" >>"$RUN/etc/dmaload/env"
fi
printf '%s\n' $MODULES >"$RUN/etc/dmaload/boot-modules"

INITRD=$WORK/initrd.cpio
cp "$BASE" "$INITRD"
(cd "$RUN" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >>"$INITRD"
flock -u 9

# Fresh sparse ext4 disk per run; inode tables initialised now so the guest's lazy-init thread stays idle.
DISK=$WORK/disk.img
truncate -s "$DISK_SIZE" "$DISK"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0,nodiscard -L dmaload-data "$DISK"
# The fault tests' disk: its own ext4, so that a failing table never touches /data. errors=continue: a metadata
# read that meets an error range must not turn the file system read-only for the tests after it.
FAULT_DRIVE=()
if [[ $FAULT_DISK_SIZE != 0 ]]; then
  FAULT_DISK=$WORK/fault.img
  truncate -s "$FAULT_DISK_SIZE" "$FAULT_DISK"
  mkfs.ext4 -q -F -e continue -E lazy_itable_init=0,lazy_journal_init=0,nodiscard -L dmaload-fault "$FAULT_DISK"
  FAULT_DRIVE=(-drive "file=$FAULT_DISK,format=raw,if=virtio,cache=unsafe")
fi
T2=$(now_ms)
say "kernel $KVER, ${ACCEL_ARGS[1]}, $MEM in $NUMA_NODES NUMA node(s); initramfs $(( $(du -k "$INITRD" | cut -f1) / 1024 )) MiB; project layer and disk in $((T2 - T1)) ms; host setup $((T2 - T0)) ms"

# ---------------------------------------------------------------------------------------------------------------
# 6. Boot. Serial console → our stdout, live; \r and the firmware's terminal escapes (reset, no-autowrap, clear)
#    stripped; a copy is kept in the cache for post-mortems.
LOG=$WORK/guest.log
BOOT_RETRIES=${DMALOAD_KERNEL_BOOT_RETRIES:-1}
boot() {
  set +e
  timeout -k 10 "$TIMEOUT" qemu-system-x86_64 "${ACCEL_ARGS[@]}" -m "$MEM" -smp "$SMP" "${NUMA_ARGS[@]}" \
    -nographic -no-reboot -nic none \
    -kernel "$VMLINUZ" -initrd "$INITRD" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" \
    -drive "file=$DISK,format=raw,if=virtio,cache=unsafe" "${FAULT_DRIVE[@]}" \
    </dev/null 2>&1 | sed -u -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' -e 's/\r$//' | tee "$LOG"
  QEMU_STATUS=${PIPESTATUS[0]}
  set -e
  cp "$LOG" "$CACHE/last-run.log"
}
say "booting; timeout ${TIMEOUT}s; log: ${CACHE#"$REPO"/}/last-run.log"
T3=$(now_ms)
for ((attempt = 0; ; attempt++)); do
  boot
  [[ $QEMU_STATUS -eq 124 || $QEMU_STATUS -eq 137 ]] && break
  grep -q '^DMALOAD_EXIT=' "$LOG" && break
  # A guest that died before the command started (seen once in ~60 TCG boots: a panic at 1.8 s) is a boot
  # failure, not a test result: boot again, once by default. After the command started, never retry.
  if grep -q '^\[guest\] running at' "$LOG" || ((attempt >= BOOT_RETRIES)); then break; fi
  cp "$LOG" "$CACHE/failed-boot.log"
  say "guest died before the command started (qemu status $QEMU_STATUS); log kept in ${CACHE#"$REPO"/}/failed-boot.log; booting again"
done
T4=$(now_ms)

STATUS=$(sed -n 's/^DMALOAD_EXIT=\([0-9][0-9]*\)$/\1/p' "$LOG" | tail -n 1)
if [[ $QEMU_STATUS -eq 124 || $QEMU_STATUS -eq 137 ]]; then
  say "error: guest still running after ${TIMEOUT}s (DMALOAD_KERNEL_TIMEOUT); killed"
  exit 124
fi
if [[ -z $STATUS ]]; then
  say "error: guest stopped without reporting an exit status (qemu status $QEMU_STATUS); see ${CACHE#"$REPO"/}/last-run.log"
  exit 125
fi
say "guest exit status $STATUS; qemu ran $(( (T4 - T3) / 1000 )).$(( (T4 - T3) % 1000 / 100 )) s, total $(( (T4 - T0) / 1000 )) s"
exit "$STATUS"
