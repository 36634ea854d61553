#!/usr/bin/env bash
# Rebuild the committed pre-trained backbones (model_store/pretrained) from the research data.
#
#   scripts/build_pretrained.sh [DATA_DIR] [OUT]
#
# DATA_DIR (default ../shared/data) must hold cuhk03-market/ and cuhk01-market/ (Market-1501
# layout); OUT defaults to model_store/pretrained. ARCHS (default resnet56) and EPOCHS (default
# 9, what a 2-core CPU finishes in about an hour for ResNet-56) choose what is trained; members
# already in OUT of other architectures are kept. The run is resumable: every epoch is
# checkpointed in WORKDIR (default runs/pretrain); run the same command again after an
# interruption. The last 100 CUHK03 identities are held out and their photo->photo
# cross-camera Rank-1/mAP is logged every HEALTH_EVERY (default 3) epochs. See docs/reproduce.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DATA_DIR="${1:-${DATA_DIR:-../shared/data}}"
OUT="${2:-${OUT:-model_store/pretrained}}"
ARCHS="${ARCHS:-resnet56}"
EPOCHS="${EPOCHS:-9}"
HEALTH_EVERY="${HEALTH_EVERY:-3}"
WORKDIR="${WORKDIR:-runs/pretrain}"
SKETCHREID="${SKETCHREID:-.venv/bin/sketchreid}"

die() {
    echo "build_pretrained: $*" >&2
    exit 2
}

[[ -x "$SKETCHREID" ]] || die "$SKETCHREID not found: run \`make install\` first"
for sub in cuhk03-market cuhk01-market; do
    [[ -d "$DATA_DIR/$sub/bounding_box_train" ]] ||
        die "$DATA_DIR/$sub/bounding_box_train not found (DATA_DIR must hold cuhk03-market/ and cuhk01-market/)"
done

set -x
"$SKETCHREID" train pretrain --pretrain-root "$DATA_DIR/cuhk03-market" \
    --pretrain-root "$DATA_DIR/cuhk01-market" --arch "$ARCHS" --preset ship \
    --epochs "$EPOCHS" --health-every "$HEALTH_EVERY" --workdir "$WORKDIR" --out "$OUT"
