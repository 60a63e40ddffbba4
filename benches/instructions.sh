#!/usr/bin/env bash
# benches/instructions.sh: user-space instructions of a fan-out, counted by
# callgrind (repeatable on a noisy machine, unlike times). For each wshub
# binary given: runs it under `valgrind --tool=callgrind` on 127.0.0.1:18931,
# upgrades N chat sessions (from 127.0.0.2-9), sends M REST broadcasts, waits
# until every session has all M, stops the server (SIGINT) and prints the
# instruction total. Compare two builds in one go:
#
#   bash benches/instructions.sh target/release/wshub /tmp/wshub-main   # N=1000 M=30
#   N=2000 M=10 bash benches/instructions.sh target/release/wshub
#   HISTORY=100 bash benches/instructions.sh target/release/wshub  # history.size 100
#   KEEP=/tmp/cg bash benches/instructions.sh ...   # keep callgrind.out.<k> there
#
# The cost of one broadcast is the difference of two runs with different M
# over their difference in M (connects and start-up cancel out).
#
# Loopback only; bounded (the client gives up after 600 s); stops only the
# server it started, by PID.
set -euo pipefail
N=${N:-1000}
M=${M:-30}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
HISTORY=${HISTORY:-0}
KEEP=${KEEP:-}
printf 'app:\n  host: "127.0.0.1"\n  port: "18931"\nlog:\n  level: warn\n' >"$dir/config.yaml"
if [ "$HISTORY" -gt 0 ]; then
  printf 'history:\n  size: %d\n' "$HISTORY" >>"$dir/config.yaml"
fi
cat >"$dir/drive.py" <<'PY'
import base64, os, selectors, socket, sys, time
N, M, PORT = int(sys.argv[1]), int(sys.argv[2]), 18931
deadline = time.time() + 600
while True:
    try:
        socket.create_connection(("127.0.0.1", PORT)).close()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("server did not start")
        time.sleep(0.1)
sel, state = selectors.DefaultSelector(), {}
for i in range(N):
    s = socket.create_connection(("127.0.0.1", PORT), source_address=(f"127.0.0.{2 + i % 8}", 0))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /api/ws/connect?user_id=u{i} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    state[s] = [head.split(b"\r\n\r\n", 1)[1], 0]
body = b'{"type":"notification","content":"' + b"x" * 60 + b'"}'
for _ in range(M):
    p = socket.create_connection(("127.0.0.1", PORT))
    p.sendall(b"POST /api/ws/broadcast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    while p.recv(4096):
        pass
    p.close()
done = 0
while done < N and time.time() < deadline:
    for k, _ in sel.select(1):
        s, st = k.fileobj, state[k.fileobj]
        b = st[0] + s.recv(65536)
        while len(b) >= 2:
            n, at = b[1] & 0x7F, 2
            if n == 126:
                if len(b) < 4:
                    break
                n, at = int.from_bytes(b[2:4], "big"), 4
            if len(b) < at + n:
                break
            st[1] += (b[0] & 0x0F) == 1
            b = b[at + n:]
        st[0] = b
        if st[1] >= M:
            sel.unregister(s)
            done += 1
if done < N:
    sys.exit(f"only {done} of {N} sessions got all {M} broadcasts")
PY
for bin in "$@"; do
  valgrind --tool=callgrind --callgrind-out-file="$dir/out" "$bin" --config "$dir/config.yaml" \
    >"$dir/log" 2>&1 &
  pid=$!
  python3 "$dir/drive.py" "$N" "$M" || { kill -INT "$pid"; wait "$pid" || true; exit 1; }
  kill -INT "$pid"
  wait "$pid" || true
  total=$(sed -n 's/.*Collected : //p' "$dir/log")
  echo "$bin: $total instructions ($N sessions, $M broadcasts, history.size $HISTORY)"
  if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP"
    k=$(ls "$KEEP" | wc -l)
    cp "$dir/out" "$KEEP/callgrind.out.$k"
    echo "  kept as $KEEP/callgrind.out.$k"
  fi
done
