#!/usr/bin/env bash
# Mutation testing of the numerical and inference core with cosmic-ray (issue 18); not part of CI.
#
#   scripts/mutation.sh                 # every module below (hours on 2 cores; resumable)
#   scripts/mutation.sh grid kernels    # some of them
#   scripts/mutation.sh --report        # the score so far, per module, and the survivors
#   SAMPLE=0.3 scripts/mutation.sh kernels   # a seeded uniform 30 % sample of its mutants
#   scripts/mutation.sh --again edm     # run edm's survivors again against the tests of HEAD
#                                       # (the report before is kept in NAME.before.json)
#
# Each module is mutated in a clone of the committed HEAD (data/mutation/repo, its own virtual
# environment), never in this working tree, and its mutants run against the tests that exercise
# it (the map below), stopping at the first failure. Sessions live in data/mutation/NAME.sqlite:
# running the same command again continues where it stopped. The report counts a mutant as
# killed when a test failed or it timed out; survivors are listed with their diffs in
# data/mutation/NAME.survivors.txt. Mutants inside type annotations (equivalent: never evaluated)
# and bitwise/shift replacements of float arithmetic (a TypeError at the first call) are marked
# skipped without a test run (scripts/mutation_session.py) and are not counted. JAX's persistent
# compilation cache is shared by the mutants' test runs, so that a function the mutant does not
# touch is compiled once (a mutant that changes a function changes its key, so nothing stale is
# reused).
# The body is one compound command, so that bash has read all of it before it starts: editing
# this file while a run goes on (hours) cannot change what the run does.
{
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/data/mutation
# A second run at the same time (other modules, the other core) needs its own clone, since each
# run writes its mutants into the clone's files: MUTATION_CLONE=data/mutation/repo2.
REPO=${MUTATION_CLONE:-$OUT/repo}
REPO=$(realpath -m "$REPO")
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
  [rollout]="tests/model/test_inference_reference.py tests/model/test_rollout.py tests/model/test_devices.py"
)
ORDER=(grid kernels edm sampler noise task denoiser rollout)

report() {
  for name in "${ORDER[@]}"; do
    session=$OUT/$name.sqlite
    [ -f "$session" ] || continue
    "$REPO/.venv/bin/python" "$ROOT/scripts/mutation_session.py" report "$name=$session"
    "$REPO/.venv/bin/cr-report" --surviving-only --show-diff "$session" > "$OUT/$name.survivors.txt"
  done
}

if [ "${1:-}" = --report ]; then
  report
  exit 0
fi
again=0
if [ "${1:-}" = --again ]; then
  again=1
  shift
fi

mkdir -p "$OUT"
if [ ! -d "$REPO/.git" ]; then
  git clone -q "$ROOT" "$REPO"
fi
# MUTATION_COMMIT=C mutates and tests commit C instead of HEAD (e.g. a second clone continuing
# the "before" run of sessions begun at C).
git -C "$REPO" fetch -q "$ROOT" HEAD
git -C "$REPO" checkout -q --detach "${MUTATION_COMMIT:-FETCH_HEAD}"
# A run stopped mid-mutant (a kill, the end of a sitting) leaves that mutant in the clone's file.
git -C "$REPO" reset -q --hard
if [ ! -x "$REPO/.venv/bin/cosmic-ray" ]; then
  python3 -m venv "$REPO/.venv"
  "$REPO/.venv/bin/pip" install -q -e "$REPO[test,mutation]"
fi

export JAX_COMPILATION_CACHE_DIR=$OUT/jax-cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
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
    if [ ! -f "$session" ]; then
      .venv/bin/cosmic-ray init "$config" "$session"
      .venv/bin/python "$ROOT/scripts/mutation_session.py" filter "$session" "${MODULE[$name]}" \
        --sample "${SAMPLE:-1}"
      git rev-parse HEAD > "$OUT/$name.commit"
    fi
    if [ $again = 1 ]; then
      # The mutants are positions in the module as it was: only the tests may have changed.
      if ! git diff --quiet "$(cat "$OUT/$name.commit")" HEAD -- "${MODULE[$name]}"; then
        echo "${MODULE[$name]} changed since its session began: start a new one" >&2
        exit 2
      fi
      .venv/bin/python "$ROOT/scripts/mutation_session.py" report "$name=$session" \
        > "$OUT/$name.before.json"
      .venv/bin/python "$ROOT/scripts/mutation_session.py" reset-survivors "$session"
    fi
    .venv/bin/cosmic-ray baseline "$config"
    .venv/bin/cosmic-ray exec "$config" "$session"
  )
done
report
exit
}
