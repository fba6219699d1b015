#!/usr/bin/env bash
# Mutation testing of the numerical and inference core with cosmic-ray (issue 18); not part of CI.
#
#   scripts/mutation.sh                 # every module below (hours on 2 cores; resumable)
#   scripts/mutation.sh grid kernels    # some of them
#   scripts/mutation.sh --report        # the score so far, per module, and the survivors
#
# Each module is mutated in a clone of the committed HEAD (data/mutation/repo, its own virtual
# environment), never in this working tree, and its mutants run against the tests that exercise
# it (the map below), stopping at the first failure. Sessions live in data/mutation/NAME.sqlite:
# running the same command again continues where it stopped. The report counts a mutant as
# killed when a test failed or it timed out; survivors are listed with their diffs in
# data/mutation/NAME.survivors.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/data/mutation
REPO=$OUT/repo
declare -A MODULE=(
  [grid]=weather/data/grid.py
  [kernels]=weather/scoring/kernels.py
  [edm]=weather/model/edm.py
  [sampler]=weather/model/sampler.py
  [noise]=weather/model/noise.py
  [task]=weather/model/task.py
  [denoiser]=weather/model/denoiser.py
  [rollout]=weather/model/rollout.py
)
declare -A TESTS=(
  [grid]="tests/data/test_grid.py tests/scoring/test_scoring_climate.py"
  [kernels]="tests/scoring/test_scoring_kernels.py tests/scoring/test_scoring_metrics.py"
  [edm]="tests/model/test_edm.py"
  [sampler]="tests/model/test_sampler.py"
  [noise]="tests/model/test_noise.py tests/data/test_legendre.py"
  [task]="tests/model/test_task.py tests/data/test_forcings.py"
  [denoiser]="tests/model/test_inference_reference.py tests/model/test_edm.py tests/model/test_rollout.py"
  [rollout]="tests/model/test_inference_reference.py tests/model/test_rollout.py"
)
ORDER=(grid kernels edm sampler noise task denoiser rollout)

report() {
  for name in "${ORDER[@]}"; do
    session=$OUT/$name.sqlite
    [ -f "$session" ] || continue
    "$REPO/.venv/bin/cr-report" "$session" | tail -3 | tr '\n' ' ' | sed "s|^|$name: |"
    echo
    "$REPO/.venv/bin/cr-report" --surviving-only --show-diff "$session" > "$OUT/$name.survivors.txt"
  done
}

if [ "${1:-}" = --report ]; then
  report
  exit 0
fi

mkdir -p "$OUT"
if [ ! -d "$REPO/.git" ]; then
  git clone -q "$ROOT" "$REPO"
fi
git -C "$REPO" fetch -q "$ROOT" HEAD && git -C "$REPO" checkout -q --detach FETCH_HEAD
if [ ! -x "$REPO/.venv/bin/cosmic-ray" ]; then
  python3 -m venv "$REPO/.venv"
  "$REPO/.venv/bin/pip" install -q -e "$REPO[test,mutation]"
fi

names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ORDER[@]}")
for name in "${names[@]}"; do
  [ -n "${MODULE[$name]:-}" ] || { echo "unknown module $name (one of ${ORDER[*]})" >&2; exit 2; }
  config=$OUT/$name.toml
  session=$OUT/$name.sqlite
  cat > "$config" <<EOF
[cosmic-ray]
module-path = "${MODULE[$name]}"
timeout = 600.0
excluded-modules = []
test-command = "$REPO/.venv/bin/python -m pytest -x -q -p no:cacheprovider ${TESTS[$name]}"

[cosmic-ray.distributor]
name = "local"
EOF
  (
    cd "$REPO"
    [ -f "$session" ] || .venv/bin/cosmic-ray init "$config" "$session"
    .venv/bin/cosmic-ray baseline "$config"
    .venv/bin/cosmic-ray exec "$config" "$session"
  )
done
report
