#!/bin/bash
# Start the built image against the host PostgreSQL (127.0.0.1:5432, trust auth) with
# --network host, create keys, ingest the photos of 3 synthetic people and search one sketch.
# Usage: IMAGE=sketch-reid:local [DOCKER=/usr/bin/docker] [PORT=8765] scripts/container_check.sh
set -u
D=${DOCKER:-docker}; PORT=${PORT:-8765}; B=http://127.0.0.1:$PORT; IMAGE=${IMAGE:-sketch-reid:local}
SKR=${SKR:-$(dirname "$0")/../.venv/bin/sketchreid}; W=$(mktemp -d)
psql -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS sketchreid_docker" postgres >/dev/null
psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE sketchreid_docker" postgres >/dev/null
rm -rf /srv/skr; mkdir -p /srv/skr && chown 10001:10001 /srv/skr
$D rm -f skr >/dev/null 2>&1
t0=$(date +%s)
$D run -d --name skr --network host -v /srv/skr:/data \
  -e SKETCHREID_ENV=production -e SKETCHREID_HOST=127.0.0.1 -e SKETCHREID_PORT=$PORT \
  -e SKETCHREID_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/sketchreid_docker \
  "$IMAGE"
until curl -sf $B/readyz >/dev/null; do sleep 2; [ $(( $(date +%s) - t0 )) -gt 600 ] && { echo "not ready after 600 s"; $D logs skr | tail; exit 1; }; done
echo "ready after $(( $(date +%s) - t0 )) s"
ADMIN=$($D logs skr 2>/dev/null | grep '^skr_' | tail -1)
OP=$(curl -s -X POST $B/api/v1/apikeys -H "X-API-Key: $ADMIN" -H 'content-type: application/json' -d '{"name":"ops","role":"operator"}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["key"])')
INV=$(curl -s -X POST $B/api/v1/apikeys -H "X-API-Key: $ADMIN" -H 'content-type: application/json' -d '{"name":"inv","role":"investigator"}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["key"])')
rm -rf $W/synth; "$SKR" data synth --out $W/synth --identities 3 >/dev/null
for f in $W/synth/photo/*.jpg; do
  curl -s -o /dev/null -w "upload %{http_code}\n" -X POST $B/api/v1/gallery -H "X-API-Key: $OP" -F "image=@$f" -F camera_id=c1
done
S=$(ls $W/synth/sketch/* | head -1)
curl -s -X POST $B/api/v1/search -H "X-API-Key: $INV" -F "sketch=@$S" -F top_k=3 | tee $W/search.json | python3 -c "import sys,json;r=json.load(sys.stdin);print(\"search\", r.get(\"search_id\") or r.get(\"id\"), [(x.get(\"rank\"), x.get(\"gallery_id\"), round(x.get(\"score\",0),3)) for x in r[\"results\"]])"
$D inspect -f '{{.State.Health.Status}}' skr
$D images "$IMAGE" --format '{{.Repository}}:{{.Tag}} {{.Size}}'
$D rm -f skr >/dev/null
