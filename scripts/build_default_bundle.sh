#!/usr/bin/env bash
# Rebuild the shipped model bundle (model_store/default) from the research data.
#
#   scripts/build_default_bundle.sh [DATA_DIR] [OUT]
#
# DATA_DIR (default ../shared/data) must hold pku-sketch-dev/; OUT defaults to
# model_store/default. Every member starts from the committed pre-trained backbones in
# PRETRAINED (default model_store/pretrained; rebuild them with scripts/build_pretrained.sh)
# and is fine-tuned with the `ship` preset on all 150 development identities. MEMBERS (default
# resnet56) lists the members, space-separated, each ARCH or ARCH:FIELD=VALUE,... with its own
# overrides, e.g. MEMBERS="resnet110:model.spp=true,model.fc_dim=256 resnet56" (ARCHS=a,b, the
# older spelling, means MEMBERS="a b"); SET holds `--set SECTION.FIELD=VALUE` overrides for every
# member. Each member is trained in its own run (JOBS of them at once, default 1) and several are
# combined into one bundle with `sketchreid model combine`. TRANSLATOR=1 also trains the ship preset's CycleGAN
# translator on every identity, with TRANSLATOR_SET's `translator.FIELD=VALUE` overrides (the
# ship preset's own 32-filter, 6-block, 200-epoch generator is hours on a CPU; the shipped one is
# TRANSLATOR_SET="translator.ngf=16 translator.ndf=16 translator.n_blocks=3
# translator.epochs_constant=20 translator.epochs_decay=20", ~15 min). TRANSLATOR_FROM=BUNDLE
# instead carries that bundle's translator over (`model combine --translator-from`: it must have
# been trained on the same identities; the translator does not depend on the members, so
# retrained members can keep the shipped one). QUERY_VIEW (sketch,
# translated or fused) records how the service embeds a query sketch by default, and
# TRANSLATION_WEIGHT (0 < W < 1, default 0.5) the translation's weight in a fused query.
# MEMBER_WEIGHTS (e.g. 0.6,0.4, in MEMBERS' order) sets each member's share of the ensemble's
# cosine, and CENTER=1 stores the modality means of the training identities (`sketchreid model
# center`); the shipped bundle has both (docs/results.md, "Modality centering").
# Fine-tuning checkpoints and decoded images are kept
# in WORKDIR (default runs/default): delete it to start from nothing.
# Afterwards the bundle gets its fit check (`sketchreid evaluate --test-ids all` in the bundle's
# query view, written to WORKDIR/fit.json) and `sketchreid model annotate`: NAME and VERSION (if set), and CROSSVAL,
# space-separated LABEL=JSON crossval reports that chose the recipe (recorded in the manifest's
# evaluation block). See docs/reproduce.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DATA_DIR="${1:-${DATA_DIR:-../shared/data}}"
OUT="${2:-${OUT:-model_store/default}}"
WORKDIR="${WORKDIR:-runs/default}"
PRETRAINED="${PRETRAINED:-model_store/pretrained}"
MEMBERS="${MEMBERS:-${ARCHS:+${ARCHS//,/ }}}"
MEMBERS="${MEMBERS:-resnet56}"
JOBS="${JOBS:-1}"
SET="${SET:-}"
TRANSLATOR="${TRANSLATOR:-0}"
TRANSLATOR_SET="${TRANSLATOR_SET:-}"
TRANSLATOR_FROM="${TRANSLATOR_FROM:-}"
QUERY_VIEW="${QUERY_VIEW:-}"
TRANSLATION_WEIGHT="${TRANSLATION_WEIGHT:-}"
MEMBER_WEIGHTS="${MEMBER_WEIGHTS:-}"
CENTER="${CENTER:-0}"
SKETCHREID="${SKETCHREID:-.venv/bin/sketchreid}"
NAME="${NAME:-}"
VERSION="${VERSION:-}"
CROSSVAL="${CROSSVAL:-}"

die() {
    echo "build_default_bundle: $*" >&2
    exit 2
}

[[ -x "$SKETCHREID" ]] || die "$SKETCHREID not found: run \`make install\` first"
[[ -d "$DATA_DIR" ]] || die "data folder $DATA_DIR not found (pass DATA_DIR; see docs/reproduce.md)"
[[ -d "$DATA_DIR/pku-sketch-dev" ]] || die "$DATA_DIR/pku-sketch-dev not found: DATA_DIR must hold pku-sketch-dev/"
[[ -f "$PRETRAINED/manifest.json" ]] ||
    die "$PRETRAINED/manifest.json not found: build the backbones with scripts/build_pretrained.sh"

overrides=()
for item in $SET; do overrides+=(--set "$item"); done
translator_overrides=()
for item in $TRANSLATOR_SET; do translator_overrides+=(--set "$item"); done
[[ -z "$QUERY_VIEW" || "$QUERY_VIEW" =~ ^(sketch|translated|fused)$ ]] ||
    die "QUERY_VIEW must be sketch, translated or fused, got '$QUERY_VIEW'"
[[ -z "$TRANSLATOR_FROM" || "$TRANSLATOR" != 1 ]] ||
    die "TRANSLATOR=1 trains a translator, TRANSLATOR_FROM carries one over: choose one"
[[ -z "$TRANSLATOR_FROM" || -f "$TRANSLATOR_FROM/manifest.json" ]] ||
    die "TRANSLATOR_FROM=$TRANSLATOR_FROM is not a model bundle (no manifest.json)"
[[ "$QUERY_VIEW" != translated && "$QUERY_VIEW" != fused || "$TRANSLATOR" == 1 || -n "$TRANSLATOR_FROM" ]] ||
    die "QUERY_VIEW=$QUERY_VIEW needs TRANSLATOR=1 or TRANSLATOR_FROM"
carry=()
[[ -n "$TRANSLATOR_FROM" ]] && carry+=(--translator-from "$TRANSLATOR_FROM")
annotations=()
[[ -n "$NAME" ]] && annotations+=(--name "$NAME")
[[ -n "$VERSION" ]] && annotations+=(--version "$VERSION")
for item in $CROSSVAL; do
    [[ -f "${item#*=}" ]] || die "crossval report ${item#*=} not found (CROSSVAL holds LABEL=JSON items)"
    annotations+=(--crossval "$item")
done

read -r -a members <<<"$MEMBERS"
[[ -z "$TRANSLATOR_FROM" || ${#members[@]} -ge 2 ]] ||
    die "TRANSLATOR_FROM needs two members or more (\`model combine\` carries it over)"
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "JOBS must be a positive whole number, got '$JOBS'"

# train_member I SPEC DEST: one `train reid` run of member SPEC (ARCH[:FIELD=VALUE,...]).
train_member() {
    local arch="${2%%:*}" extra=() item
    if [[ "$2" == *:* ]]; then
        IFS=, read -r -a items <<<"${2#*:}"
        for item in "${items[@]}"; do extra+=(--set "$item"); done
    fi
    "$SKETCHREID" train reid --data-root "$DATA_DIR/pku-sketch-dev" --pretrained "$PRETRAINED" \
        --arch "$arch" --preset ship "${overrides[@]}" "${extra[@]}" \
        --workdir "$WORKDIR/member$1-$arch" --out "$3"
}

set -x
if [[ ${#members[@]} == 1 ]]; then
    train_member 0 "${members[0]}" "$OUT"
else
    parts=()
    for i in "${!members[@]}"; do
        parts+=("$WORKDIR/member$i-bundle")
        train_member "$i" "${members[$i]}" "$WORKDIR/member$i-bundle" &
        while (($(jobs -rp | wc -l) >= JOBS)); do wait -n; done
    done
    for job in $(jobs -p); do wait "$job"; done
    "$SKETCHREID" model combine "$OUT" "${parts[@]}" --overwrite "${carry[@]}"
fi
if [[ "$TRANSLATOR" == 1 ]]; then
    "$SKETCHREID" train translator --data-root "$DATA_DIR/pku-sketch-dev" --preset ship \
        "${translator_overrides[@]}" --workdir "$WORKDIR" --out "$OUT"
fi
# The query view first, so that the fit check embeds the queries as the service will.
view=()
[[ -n "$QUERY_VIEW" ]] && view+=(--query-view "$QUERY_VIEW")
[[ -n "$TRANSLATION_WEIGHT" ]] && view+=(--translation-weight "$TRANSLATION_WEIGHT")
[[ -n "$MEMBER_WEIGHTS" ]] && view+=(--member-weights "$MEMBER_WEIGHTS")
((${#view[@]} == 0)) || "$SKETCHREID" model annotate "$OUT" "${view[@]}"
if [[ "$CENTER" == 1 ]]; then
    "$SKETCHREID" model center "$OUT" --data-root "$DATA_DIR/pku-sketch-dev"
fi
rm -f "$WORKDIR/fit.json"
# (it warns that the bundle was trained on these identities: a fit check, not generalisation)
"$SKETCHREID" evaluate --data-root "$DATA_DIR/pku-sketch-dev" --model "$OUT" --test-ids all \
    --json "$WORKDIR/fit.json"
"$SKETCHREID" model annotate "$OUT" --fit "$WORKDIR/fit.json" "${annotations[@]}"
"$SKETCHREID" model verify "$OUT"
