#!/usr/bin/env bash
# Rebuild the shipped model bundle (model_store/default) from the research data.
#
#   scripts/build_default_bundle.sh [DATA_DIR] [OUT]
#
# DATA_DIR (default ../shared/data) must hold pku-sketch-dev/ and cuhk03-market/;
# OUT defaults to model_store/default. Both may also be given as environment variables;
# relative paths are relative to the project root. Pre-trained members, the translator and
# decoded images are cached in WORKDIR (default runs/default): delete it to start from nothing.
# See docs/reproduce.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DATA_DIR="${1:-${DATA_DIR:-../shared/data}}"
OUT="${2:-${OUT:-model_store/default}}"
WORKDIR="${WORKDIR:-runs/default}"
SKETCHREID="${SKETCHREID:-.venv/bin/sketchreid}"

die() {
    echo "build_default_bundle: $*" >&2
    exit 2
}

[[ -x "$SKETCHREID" ]] || die "$SKETCHREID not found: run \`make install\` first"
[[ -d "$DATA_DIR" ]] || die "data folder $DATA_DIR not found (pass DATA_DIR; see docs/reproduce.md)"
for sub in pku-sketch-dev cuhk03-market; do
    [[ -d "$DATA_DIR/$sub" ]] || die "$DATA_DIR/$sub not found: DATA_DIR must hold pku-sketch-dev/ and cuhk03-market/"
done
[[ -d "$DATA_DIR/cuhk03-market/bounding_box_train" ]] ||
    die "$DATA_DIR/cuhk03-market/bounding_box_train not found (Market-1501 layout expected)"

set -x
"$SKETCHREID" train reid --data-root "$DATA_DIR/pku-sketch-dev" \
    --pretrain-root "$DATA_DIR/cuhk03-market" --arch resnet56,resnet110 --preset cpu \
    --workdir "$WORKDIR" --out "$OUT"
"$SKETCHREID" train translator --data-root "$DATA_DIR/pku-sketch-dev" --preset cpu \
    --workdir "$WORKDIR" --out "$OUT"
"$SKETCHREID" model verify "$OUT"
