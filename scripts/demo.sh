#!/usr/bin/env bash
# The main job: checkpoint a process tree (forked children sharing COW pages, a
# zombie) with real CRIU, restore it lazily with `criu restore --lazy-pages` served
# by lazy-pages, then have every restored process verify every byte of its memory.
#   LAZY_PAGES_DEMO_MIB  memory of the main process (default 256)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
criu=$root/.criu/bin/criu
lpw=$root/build/workloads/lpw
lazy_pages=(node "$root/bin/lazy-pages.js")
mib=${LAZY_PAGES_DEMO_MIB:-256}
dir=$root/.work/demo
rm -rf "$dir" && mkdir -p "$dir/state" "$dir/images"
say() { printf '\n== demo: %s\n' "$*"; }

say "starting a workload: $mib MiB, 2 forked children with COW pages, 1 zombie"
setsid "$lpw" tree --mib "$mib" --children 2 --zombie --state "$dir/state" </dev/null >/dev/null 2>&1 &
for _ in $(seq 600); do [ -e "$dir/state/ready-main.json" ] && break; sleep 0.05; done
[ -e "$dir/state/ready-main.json" ] || { echo "demo: workload did not start" >&2; exit 1; }
pid=$(sed -n 's/.*"role":"main","pid":\([0-9]*\).*/\1/p' "$dir/state/ready-main.json")

say "checksums before the dump"
kill -USR1 -- "-$pid"
roles=$(ls "$dir/state" | sed -n 's/^ready-\(.*\)\.json$/\1/p')
declare -A fnv_before
for role in $roles; do
    for _ in $(seq 600); do [ -e "$dir/state/result-$role.txt" ] && break; sleep 0.05; done
    fnv_before[$role]=$(sed -n 's/.* fnv=\([0-9a-f]*\).*/\1/p' "$dir/state/result-$role.txt")
    echo "  $role fnv=${fnv_before[$role]}"
    rm -f "$dir/state/result-$role.txt"
done

say "criu dump -t $pid"
"$criu" dump -t "$pid" -D "$dir/images" -o dump.log
"${lazy_pages[@]}" images -D "$dir/images"
# CRIU restores the same pids: wait until the dumped ones are reaped.
pids=$("${lazy_pages[@]}" images -D "$dir/images" --json |
    node -e 'const r = JSON.parse(require("fs").readFileSync(0, "utf8")); console.log([...r.tasks.map((t) => t.pid), ...r.zombies].join(" "))')
for p in $pids; do
    for _ in $(seq 200); do [ -e "/proc/$p" ] || break; sleep 0.05; done
done

say "lazy-pages -D images & criu restore --lazy-pages"
mkfifo "$dir/ready"
"${lazy_pages[@]}" -D "$dir/images" --status-fd 3 --stats-json stats.json 3>"$dir/ready" &
daemon=$!
head -c1 "$dir/ready" >/dev/null
start=$(date +%s.%N)
"$criu" restore -D "$dir/images" --lazy-pages -d -o restore.log
rc=0
wait "$daemon" || rc=$?
end=$(date +%s.%N)
echo "lazy-pages exited with $rc; $(awk "BEGIN { printf \"%.2f\", $end - $start }") s from restore start to every page in"

say "every restored process verifies every byte"
kill -USR1 -- "-$pid"
status=0
for role in $roles; do
    for _ in $(seq 600); do [ -e "$dir/state/result-$role.txt" ] && break; sleep 0.05; done
    line=$(cat "$dir/state/result-$role.txt" 2>/dev/null || echo "FAIL role=$role no result")
    echo "  $line"
    case "$line" in ok*) ;; *) status=1 ;; esac
    case "$line" in *" fnv=${fnv_before[$role]}"*) ;; *) echo "  $role: checksum differs from before the dump" >&2; status=1 ;; esac
done
kill -TERM -- "-$pid" 2>/dev/null || true
[ "$rc" -eq 0 ] && [ "$status" -eq 0 ] || { echo "demo: FAILED (daemon exit $rc, verification $status)" >&2; exit 1; }
echo
echo "demo: OK — restored lazily, every byte verified; stats in $dir/images/stats.json"
