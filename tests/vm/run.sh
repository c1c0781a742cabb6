#!/usr/bin/env bash
# The VM lane: runs integration tests inside a Debian 12 guest with systemd
# as pid 1 and pure cgroup v2 (qemu, software emulation), and turns their
# results into a pass/fail here, with the guest's output in the log.
#
#   tests/vm/run.sh [-t SECONDS] [-e NAME=VALUE]... '[NAME=VALUE ...] TEST[:ARGS...]' ...
#
# TEST is an integration test target (tests/TEST.rs); ARGS (comma-separated)
# go to the test binary, e.g. `cri_pod_lifecycle:--exact,some_test` or
# `runtime_containers:filter`. NAME=VALUE words before it (in the same
# argument) set environment variables for that test only, e.g.
# 'BERTH_TEST_CGROUP_DRIVER=systemd cri_pod_lifecycle' (reported as
# `cri_pod_lifecycle+systemd`). The host builds the binaries; the guest gets
# this worktree read-only over virtio-9p at the same path, and a writable
# results share. -e sets an environment variable for the guest's tests
# (e.g. the cgroup driver to run them with). Exit: 0 all passed, 1 a test failed, 2 the lane failed
# (boot, timeout), 77 skipped (qemu cannot run here; says why).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
timeout_s=${BERTH_VM_TIMEOUT:-900}
guest_env=()
while getopts t:e: o; do
  case $o in
    t) timeout_s=$OPTARG ;;
    e) guest_env+=("$OPTARG") ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
(($#)) || { echo "usage: $0 [-t SECONDS] TEST[:ARGS] ..." >&2; exit 2; }

qemu=$(command -v qemu-system-x86_64 || true)
if [[ -z $qemu ]]; then
  echo "skipped: qemu-system-x86_64 is not installed (tests/vm/setup.sh installs it)"
  exit 77
fi
if ! "$qemu" -accel help 2>/dev/null | grep -qx tcg; then
  echo "skipped: this qemu has no TCG accelerator"
  exit 77
fi

t0=$(date +%s)
image=$("$here/image.sh")
t_image=$(($(date +%s) - t0))

# The test binaries, exactly (cargo's JSON names each executable).
# The test spec of an argument (its last word), its NAME=VALUE words, and
# the name its result is reported under.
spec_of() { local w=($1); echo "${w[-1]}"; }
envs_of() { local w=($1); local IFS=,; echo "${w[*]:0:${#w[@]}-1}"; }
targets=()
for arg in "$@"; do
  t=$(spec_of "$arg"); t=${t%%:*}
  [[ " ${targets[*]} " == *" --test $t "* ]] || targets+=(--test "$t")
done
cargo build -q --workspace --bins
json=$(cargo test -q --no-run --message-format=json "${targets[@]}")
run=$(mktemp -d "$repo/target/vm/run.XXXXXX")
{
  echo "REPO=$repo"
  for kv in "${guest_env[@]}"; do printf 'export %q\n' "$kv"; done
} >"$run/env"
cp "$here/guest.sh" "$run/guest.sh"
: >"$run/tests.list"
for arg in "$@"; do
  spec=$(spec_of "$arg")
  envs=$(envs_of "$arg")
  name=${spec%%:*}
  label=$name
  [[ -n $envs ]] && label+="+$(sed -e 's/[^,]*=//g' -e 's/,/+/g' <<<"$envs")"
  args=
  [[ $spec == *:* ]] && args=${spec#*:} && args=${args//,/ }
  bin=$(python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name and "test" in m["target"]["kind"]:
        print(m["executable"]); break
' "$name" <<<"$json")
  [[ -n $bin ]] || { echo "no test binary for $name" >&2; exit 2; }
  echo "$label $bin ${envs:--} $args" >>"$run/tests.list"
done

kernel=$image/vmlinuz
[[ -f $image/vmlinux ]] && kernel=$image/vmlinux
log="$run/console.log"
cmdline="console=ttyS0 root=/dev/vda rw quiet loglevel=4 panic=-1 systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all systemd.show_status=0 mitigations=off"
echo "== vm lane: $(wc -l <"$run/tests.list") test binaries, timeout ${timeout_s}s, console log $log"
t1=$(date +%s)
set +e
timeout -k 10 "$timeout_s" "$qemu" \
  -accel tcg,thread=multi -smp 2 -cpu max -m 2048 \
  -nodefaults -no-reboot -display none -monitor none -serial "file:$log" \
  -kernel "$kernel" -initrd "$image/initramfs.gz" -append "$cmdline" \
  -drive "file=$image/rootfs.img,format=raw,if=virtio,snapshot=on" \
  -fsdev "local,id=repo,path=$repo,security_model=none,readonly=on" \
  -device virtio-9p-pci,fsdev=repo,mount_tag=repo \
  -fsdev "local,id=results,path=$run,security_model=none" \
  -device virtio-9p-pci,fsdev=results,mount_tag=results \
  -nic none </dev/null
qrc=$?
set -e
t_vm=$(($(date +%s) - t1))

# The guest's output, then the verdict.
sed -e 's/\r$//' "$log"
status=0
if [[ $qrc -eq 124 || $qrc -eq 137 ]]; then
  echo "vm lane: FAILED: the guest did not power off within ${timeout_s}s"
  status=2
elif [[ ! -f $run/finished ]]; then
  echo "vm lane: FAILED: the guest stopped before its runner finished (qemu exit $qrc)"
  status=2
fi
passed=0 failed=0
while read -r name rc secs; do
  if [[ $rc -eq 0 ]]; then
    echo "vm lane: $name: ok (${secs}s in the guest)"
    passed=$((passed + 1))
  else
    echo "vm lane: $name: FAILED (exit $rc, ${secs}s in the guest)"
    failed=$((failed + 1))
  fi
done < <(cat "$run/results" 2>/dev/null)
listed=$(wc -l <"$run/tests.list")
if ((passed + failed < listed)); then
  echo "vm lane: $((listed - passed - failed)) test binaries did not report"
  status=2
fi
((failed)) && ((status == 0)) && status=1
echo "vm lane: image ${t_image}s, vm ${t_vm}s, total $(($(date +%s) - t0))s"
echo "vm lane: $passed passed, $failed failed"
exit $status
