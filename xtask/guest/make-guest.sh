#!/bin/bash
# make-guest.sh OUTDIR: builds the workload guest's initramfs (OUTDIR/initramfs.cpio.gz) for
# `cargo xtask bench-qemu`: busybox, python3.11 with the stdlib files its workload imports, and
# the workload (a seeded Python app server with sqlite and a zlib/json cache, and a busybox
# batch job of CSV, gzip and sort). Ported from the project's corpus tool
# (make-vm-snapshots.sh), whose guest is the one HDE's snapshot figures were measured on; the
# guest prints WL-READY once its workload is set up and WL-HB heartbeats while it runs.
# Boot it with the host's kernel: -append "console=ttyS0 rdinit=/init panic=-1 wl.seed=N".

OUT=${1:?usage: $0 OUTDIR}
PY=/usr/bin/python3.11     # Debian's python: copied into the guest
T_START=$(date +%s)

log() { echo "[$(date +%T)] $*" >&2; }

# ---------------------------------------------------------------- 1. packages
if [ "${SKIP_APT:-0}" != 1 ]; then
  need=()
  for p in qemu-system-x86 linux-image-amd64 busybox-static cpio python3.11; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
KERNEL=${KERNEL:-$(ls -1v /boot/vmlinuz-* | tail -1)}
[ -r "$KERNEL" ] || { echo "no kernel found in /boot" >&2; exit 1; }
for c in qemu-system-x86_64 cpio gzip "$PY" /bin/busybox; do command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }; done

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
cleanup() { [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- 2. guest files
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp,etc,root,usr/bin,usr/lib/x86_64-linux-gnu,usr/lib64}
ln -s usr/lib "$ROOT/lib"; ln -s usr/lib64 "$ROOT/lib64"
cp /bin/busybox "$ROOT/bin/busybox"

cat > "$ROOT/init" <<'EOF_INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs -o size=45%,mode=1777 tmp /tmp
seed=$(sed -n 's/.*wl\.seed=\([0-9]*\).*/\1/p' /proc/cmdline); seed=${seed:-1}
hostname vmcorpus
echo "GUEST-UP kernel=$(uname -r) seed=$seed $(grep MemTotal /proc/meminfo)"
/bin/sh /wl-shell.sh "$seed" > /dev/console 2>&1 &
env -i PATH=/bin:/usr/bin HOME=/root PYTHONHASHSEED="$seed" /usr/bin/python3.11 -S -u /wl.py "$seed" /tmp/app > /dev/console 2>&1 &
while :; do sleep 30; echo "GUEST-MEM $(grep -E 'MemFree|^Cached|Shmem:' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"; done
EOF_INIT
chmod +x "$ROOT/init"

# busybox batch job: seeded CSV generation, gzip, sort/uniq, sha256, rotation (page-cache churn)
cat > "$ROOT/wl-shell.sh" <<'EOF_SH'
seed=$1; keep=8; lines=20000
mkdir -p /tmp/batch; cd /tmp/batch || exit 1
i=0
while :; do
  awk -v s=$((seed * 100003 + i)) -v n=$lines 'BEGIN { srand(s);
    split("GET PUT POST DELETE HEAD", m, " ");
    for (k = 0; k < n; k++)
      printf "%07d,%s,/api/v%d/item/%d,%d,%.4f,%x\n", k, m[1 + int(rand() * 5)], 1 + int(rand() * 3),
             int(rand() * 65536), int(rand() * 600) * 1 + 200, rand() * 1000, int(rand() * 2147483647) }' > b$i.csv
  gzip -6 -c b$i.csv > b$i.csv.gz
  cut -d, -f3 b$i.csv | sort | uniq -c | sort -rn | head -20 > b$i.top
  sha256sum b$i.csv.gz >> sums.txt
  rm -f b$((i - keep)).csv b$((i - keep)).csv.gz b$((i - keep)).top
  i=$((i + 1))
  sleep 1
done
EOF_SH

# python "application server": heap records, sqlite3 WAL db on tmpfs, zlib+json LRU cache, hot counters, log
cat > "$ROOT/wl.py" <<'EOF_PY'
import sys, os, time, random, zlib, json, sqlite3, struct, collections, hashlib

def meminfo_bytes():
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemTotal:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 256 << 20

def main():
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    workdir = sys.argv[2] if len(sys.argv) > 2 else '/tmp/app'
    max_ticks = int(sys.argv[3]) if len(sys.argv) > 3 else -1
    scale = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    os.makedirs(workdir, exist_ok=True)
    rng = random.Random(seed)
    M = meminfo_bytes() * scale
    n_rec_target = max(200, int(M * 0.13 / 1100))
    hot_bytes = max(1 << 16, int(M * 0.05)) & ~4095
    cache_cap = max(1 << 16, int(M * 0.05))
    log_cap = max(1 << 16, int(M * 0.02))
    db_rows_cap = max(500, int(M * 0.05 / 300))

    syll = ['ka', 'lo', 'mi', 'ne', 'ru', 'to', 'va', 'xi', 'zen', 'qua', 'por', 'den', 'sil', 'mar', 'eth', 'on']
    words = [''.join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(4000)]
    domains = ['example.com', 'mail.test', 'corp.local', 'uni.edu', 'shop.io']

    def mkrec(i):
        name = ' '.join(rng.choice(words).capitalize() for _ in range(2))
        return {
            'id': i, 'name': name,
            'email': name.lower().replace(' ', '.') + '@' + rng.choice(domains),
            'tags': [rng.choice(words) for _ in range(rng.randint(0, 6))],
            'score': rng.random() * 100.0,
            'counters': [rng.randint(0, 1 << 20) for _ in range(8)],
            'created': 1700000000 + i * 7,
            'bio': ' '.join(rng.choice(words) for _ in range(rng.randint(5, 60))),
            'blob': bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 16, 32, 64)))),
        }

    t0 = time.time()
    recs = {}; next_id = 0
    for _ in range(n_rec_target):
        recs[next_id] = mkrec(next_id); next_id += 1
    hot = bytearray(hot_bytes)
    for off in range(0, hot_bytes, 4096):
        struct.pack_into('<QQ', hot, off, off // 4096, seed)
    hot_pages = hot_bytes // 4096
    perm = list(range(hot_pages)); rng.shuffle(perm)
    cache = collections.OrderedDict(); cache_size = 0
    db = sqlite3.connect(os.path.join(workdir, 'app.db'))
    db.execute('PRAGMA journal_mode=WAL'); db.execute('PRAGMA cache_size=-4000')
    db.execute('CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, uid INT, kind TEXT, amount REAL, note TEXT)')
    db.execute('CREATE INDEX IF NOT EXISTS ev_uid ON events(uid)')
    db_next = 0
    with db:
        for _ in range(db_rows_cap // 2):
            db.execute('INSERT INTO events VALUES(?,?,?,?,?)', (db_next, rng.randrange(next_id), rng.choice(words),
                       rng.random() * 1000, ' '.join(rng.choice(words) for _ in range(rng.randint(3, 30)))))
            db_next += 1
    db_oldest = 0
    logpath = os.path.join(workdir, 'app.log')
    log = open(logpath, 'a', buffering=1 << 16)
    print('WL-READY seed=%d recs=%d hot=%dKiB cache_cap=%dKiB db_rows=%d init_s=%.1f'
          % (seed, len(recs), hot_bytes >> 10, cache_cap >> 10, db_next, time.time() - t0), flush=True)

    tick = 0; oldest_id = 0; last_hb = time.time()
    while max_ticks < 0 or tick < max_ticks:
        tick += 1
        for _ in range(200):                      # counter updates (small in-place heap writes)
            r = recs.get(rng.randrange(oldest_id, next_id))
            if r is not None:
                r['counters'][rng.randrange(8)] += rng.randint(1, 1000)
                r['score'] = r['score'] * 0.99 + rng.random()
        for _ in range(20):                       # replace records (free + alloc churn)
            i = rng.randrange(oldest_id, next_id)
            if i in recs: recs[i] = mkrec(i)
        for _ in range(15):                       # growth + expiry
            recs[next_id] = mkrec(next_id); next_id += 1
        while len(recs) > n_rec_target * 1.15:
            recs.pop(oldest_id, None); oldest_id += 1
        for _ in range(600):                      # hot buffer: skewed 8-byte counter bumps
            p = perm[min(hot_pages - 1, int(rng.paretovariate(1.2)) - 1)] if rng.random() < 0.8 else rng.randrange(hot_pages)
            off = p * 4096 + 16 + 8 * rng.randrange(500)
            struct.pack_into('<Q', hot, off, struct.unpack_from('<Q', hot, off)[0] + rng.randint(1, 50))
        for _ in range(10):                       # compressed LRU cache of rendered JSON
            r = recs.get(rng.randrange(oldest_id, next_id))
            if r is None: continue
            doc = json.dumps({k: v for k, v in r.items() if k != 'blob'}, sort_keys=True).encode()
            key = hashlib.sha256(doc).hexdigest()
            if key in cache: cache.move_to_end(key); continue
            z = zlib.compress(doc, 6); cache[key] = z; cache_size += len(z) + 120
            while cache_size > cache_cap:
                _, old = cache.popitem(last=False); cache_size -= len(old) + 120
        with db:                                  # sqlite transaction
            for _ in range(25):
                db.execute('INSERT INTO events VALUES(?,?,?,?,?)', (db_next, rng.randrange(oldest_id, next_id), rng.choice(words),
                           rng.random() * 1000, ' '.join(rng.choice(words) for _ in range(rng.randint(3, 30)))))
                db_next += 1
            for _ in range(10):
                db.execute('UPDATE events SET amount = amount + ? WHERE id = ?', (rng.random(), rng.randrange(db_oldest, db_next)))
            if db_next - db_oldest > db_rows_cap:
                db.execute('DELETE FROM events WHERE id < ?', (db_oldest + 200,)); db_oldest += 200
        db.execute('SELECT kind, count(*), sum(amount) FROM events WHERE uid BETWEEN ? AND ? GROUP BY kind',
                   (next_id - 500, next_id)).fetchall()
        log.write('%d tick=%d recs=%d cache=%d db=%d %s\n' % (int(time.time() * 1000), tick, len(recs), len(cache),
                  db_next - db_oldest, ' '.join(rng.choice(words) for _ in range(8))))
        if log.tell() > log_cap:                  # log rotation
            log.close()
            if os.path.exists(logpath + '.1'): os.unlink(logpath + '.1')
            os.rename(logpath, logpath + '.1'); log = open(logpath, 'a', buffering=1 << 16)
        if time.time() - last_hb > 5:
            last_hb = time.time()
            print('WL-HB tick=%d recs=%d cache=%d db=%d' % (tick, len(recs), len(cache), db_next - db_oldest), flush=True)
    log.close(); db.close()

if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--list-modules':   # host-side: which stdlib files are needed
        import tempfile
        d = tempfile.mkdtemp(); sys.argv = [sys.argv[0], '1', d, '20', '0.002']
        main()
        for m in list(sys.modules.values()):
            f = getattr(m, '__file__', None)
            if f: print('MOD', os.path.realpath(f))
    else:
        main()
EOF_PY

# ---- python3.11 + only the stdlib files the workload imports (+ .pyc), + shared libs
log "collecting python stdlib subset"
STD=/usr/lib/python3.11
mods=$(cd "$WORK" && "$PY" -S "$ROOT/wl.py" --list-modules | awk '/^MOD /{print $2}' | grep "^$STD/" | sort -u)
copy_in() { mkdir -p "$ROOT$(dirname "$1")"; cp -L -p "$1" "$ROOT$1"; }
cp -L -p "$PY" "$ROOT/usr/bin/python3.11"
for f in $mods $(find $STD/encodings -maxdepth 1 -name '*.py'); do
  copy_in "$f"
  pyc="$(dirname "$f")/__pycache__/$(basename "${f%.py}").cpython-311.pyc"
  [ "${f%.py}" != "$f" ] && [ -f "$pyc" ] && copy_in "$pyc"
done
mkdir -p "$ROOT$STD/lib-dynload"
elfs="$PY $(printf '%s\n' $mods | grep '\.so$' || true)"
for lib in $(ldd $elfs 2>/dev/null | awk '/=> \//{print $3} /^\t\/lib64/{print $1}' | sort -u); do copy_in "$lib"; done
log "initramfs: $(du -sh "$ROOT" | cut -f1) unpacked"
# fixed mtimes for reproducible archive (stdlib .py keep package mtimes so their .pyc stay valid)
find "$ROOT" ! -name '*.py' ! -name '*.pyc' -exec touch -h -d @1700000000 {} +
touch -d @1700000000 "$ROOT/wl.py"
(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --reproducible) | gzip -9 -n > "$WORK/initramfs.cpio.gz"

cp "$WORK/initramfs.cpio.gz" "$OUT/"
