#!/bin/bash
# Start the serving image against the host's PostgreSQL with --network host, wait until Docker
# reports it `healthy`, create a key with `docker exec ... sketchreid apikey create`, upload the
# photos of 3 synthetic people (made inside the container) and search with one of their
# sketches. Uses a database and a data folder of its own and removes them, and the container,
# however it ends. Needs on the host: docker, curl and python3 (no project checkout built).
#
# Usage: [IMAGE=sketch-reid:serve] [DOCKER=docker] [PORT=8765] \
#        [PG_URL=postgresql+psycopg://postgres@127.0.0.1:5432] scripts/container_check.sh
set -euo pipefail
D=${DOCKER:-docker}
IMAGE=${IMAGE:-sketch-reid:serve}
PORT=${PORT:-8765}
PG_URL=${PG_URL:-postgresql+psycopg://postgres@127.0.0.1:5432}
B=http://127.0.0.1:$PORT
RUN_ID=$(date +%s)-$$
NAME=skr-check-$RUN_ID
DB=skr_check_${RUN_ID//-/_}
W=$(mktemp -d)

# SQL on the admin database, run by the image's own Python (psycopg is in it).
admin_sql() {
  "$D" run --rm --network host --entrypoint python3 "$IMAGE" -c "
import psycopg
url = '${PG_URL}/postgres'.replace('postgresql+psycopg://', 'postgresql://')
with psycopg.connect(url, autocommit=True) as conn:
    conn.execute('''$1''')"
}

cleanup() {
  "$D" rm -f "$NAME" >/dev/null 2>&1 || true
  admin_sql "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  # The data folder belongs to the container's user (uid 10001): remove it from inside.
  "$D" run --rm -v "$W:/w" --user 0 --entrypoint sh "$IMAGE" -c 'rm -rf /w/*' >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

admin_sql "CREATE DATABASE \"$DB\""
mkdir -p "$W/data" && chmod 777 "$W/data"
t0=$(date +%s.%N)
"$D" run -d --name "$NAME" --network host -v "$W/data:/data" \
  -e SKETCHREID_ENV=production -e SKETCHREID_HOST=127.0.0.1 -e SKETCHREID_PORT="$PORT" \
  -e SKETCHREID_DATABASE_URL="$PG_URL/$DB" "$IMAGE" >/dev/null

elapsed() { python3 -c "import time; print(f'{time.time() - $t0:.1f}')"; }
ready=""
while true; do
  if [ -z "$ready" ] && curl -sf "$B/readyz" >/dev/null 2>&1; then ready=$(elapsed); fi
  health=$("$D" inspect -f '{{.State.Health.Status}}' "$NAME")
  [ "$health" = healthy ] && break
  if [ "$("$D" inspect -f '{{.State.Running}}' "$NAME")" != true ] || \
     python3 -c "import sys, time; sys.exit(time.time() - $t0 < 300)"; then
    echo "not healthy (state: $health)"; "$D" logs "$NAME" 2>&1 | tail -20; exit 1
  fi
  sleep 0.2
done
echo "ready (/readyz 200) ${ready:-?} s, healthy $(elapsed) s after docker run"

KEY() { "$D" exec "$NAME" sketchreid apikey create --role "$1" --name "check-$1" | tail -1; }
OP=$(KEY operator)
INV=$(KEY investigator)
"$D" exec "$NAME" sketchreid data synth --out /data/synth --identities 3 >/dev/null
for f in "$W"/data/synth/photo/*.jpg; do
  curl -s -o /dev/null -w "upload %{http_code}\n" -X POST "$B/api/v1/gallery" \
    -H "X-API-Key: $OP" -F "image=@$f" -F camera_id=c1
done
S=$(ls "$W"/data/synth/sketch/* | head -1)
curl -sf -X POST "$B/api/v1/search" -H "X-API-Key: $INV" -F "sketch=@$S" -F top_k=3 \
  | python3 -c 'import sys, json
r = json.load(sys.stdin)
print("search", [(x["rank"], x["gallery_id"], round(x["score"], 3)) for x in r["results"]])
assert r["results"], "no results"'
"$D" exec "$NAME" python3 -c 'import importlib.util as u; print("torch in image:", u.find_spec("torch") is not None)'
"$D" image inspect -f '{{.Size}}' "$IMAGE" | python3 -c "import sys; print(f'image $IMAGE: {int(sys.stdin.read()) / 1e6:.0f} MB')"
