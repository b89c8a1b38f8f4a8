#!/usr/bin/env bash
# Gather a finished workflow run's small outputs into one folder, as committed under docs/results/:
# the report (claims, summary, scores, predictions, figures), the generated data's recipe reports
# and cards with the tables' sha256, Snakemake's log, and the run metadata (commit, command, GPU,
# versions, wall time per rule: `seemrl run-metadata`), and each training run's small tables under
# runs/ (run.json, metrics, evaluations, SEEM per checkpoint: what the report was computed from, so
# a new analysis can be run on them later). Checkpoints and data stay behind.
#   usage: tools/collect_run.sh OUT_DIR COMMIT CONFIG 'COMMAND' [WALL_SECONDS]
# COMMIT is given, not read from git: a copied tree's .git can be another commit's.
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 OUT_DIR COMMIT CONFIG 'COMMAND' [WALL_SECONDS]" >&2; exit 2; }
out=$1 commit=$2 config=$3 command=$4 wall=${5:-}
mkdir -p "$out"
r=results/report
for f in claims.md claims.csv summary.md summary.csv scores.csv seeds.csv predictions.md predictions.csv growth.png; do
    [ -f "$r/$f" ] && cp "$r/$f" "$out/"
done
for d in totals curves seem_q tables; do
    [ -d "$r/$d" ] && cp -r "$r/$d" "$out/"
done
if [ -d results/runs ]; then
    (cd results/runs && find . -type f \( -name run.json -o -name metrics.parquet -o -name evaluations.parquet \
        -o -name seem.parquet \) -not -path '*/checkpoints/*' -print0) |
    while IFS= read -r -d '' f; do
        mkdir -p "$out/runs/$(dirname "$f")" && cp "results/runs/$f" "$out/runs/$f"
    done
fi
mkdir -p "$out/recipe"
for f in resources/generated/*/*/training/recipe.json; do
    [ -f "$f" ] && cp "$f" "$out/recipe/$(basename "$(dirname "$(dirname "$f")")").recipe.json"
done
for f in resources/datasets/*/card.json; do
    cp "$f" "$out/recipe/$(basename "$(dirname "$f")").card.json"
done
(sha256sum resources/datasets/*/transitions.parquet || true) > "$out/sha256.txt"
log=$(ls -t .snakemake/log/*.snakemake.log 2>/dev/null | head -1 || true)
[ -n "$log" ] && cp "$log" "$out/snakemake.log"
python -m seemrl run-metadata --print-environment > "$out/environment.json"
python -m seemrl run-metadata --commit "$commit" --run-command "$command" --config "$config" \
    --json "$out/run.json" --markdown "$out/run.md" --jobs-csv "$out/jobs.csv" \
    ${wall:+--wall-seconds "$wall"}
echo "collected into $out: $(find "$out" -type f | wc -l) files"
