# Sourced by the study scripts (experiments/<study>.sh): `run NAME OVERRIDES...` runs
# `fedbench OVERRIDES... hydra.run.dir=$OUT/NAME`, timed as a "NAME wall S s" line that the
# collect scripts read (fedbench.study_readme.wall_times), and skips NAME when its summary.json
# says completed, so a study script can be run again after an interruption. fedbench's own
# output goes to /dev/null unless STUDY_VERBOSE=1.
run() {  # run NAME OVERRIDES...
  local name=$1; shift
  if [ -f "$OUT/$name/summary.json" ] && grep -q '"status": "completed"' "$OUT/$name/summary.json"; then
    echo "skip $name (done)"; return
  fi
  echo "== $name"
  if [ "${STUDY_VERBOSE:-0}" = 1 ]; then
    /usr/bin/time -f "$name wall %e s" fedbench "$@" hydra.run.dir="$OUT/$name"
  else
    /usr/bin/time -f "$name wall %e s" fedbench "$@" hydra.run.dir="$OUT/$name" > /dev/null
  fi
}
