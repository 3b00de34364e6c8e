#!/usr/bin/env bash
# Train the bpartis network on a GPU machine lent to a session (the `device`
# tool's `run`), from the repository root there.  Prepare here, once:
#
#   python tools/pack_emps.py                    # .emps-pack/, ~25 MB, git-ignored
#
# then run there (the working tree travels with at most 64 MiB in all):
#
#   bash tools/device_train.sh --init models/bpartis-emps/weights.pt [trainer options]
#       with carry [".emps-pack"] (and ".bpartis-run" to continue a run)
#
# The options go to `python -m imageextract.segment.bpartis.train`.  A carried
# .bpartis-run/ (an earlier run's folder) is continued with --resume.  Back in
# $OUT: best.pt, train.log and checkpoint.pt in 15 MB parts (files come back
# at most 16 MiB each); rebuild the run folder here with
#
#   mkdir -p .bpartis-run && cp FILES_AT/best.pt FILES_AT/train.log .bpartis-run/ &&
#   cat FILES_AT/checkpoint.pt.part* > .bpartis-run/checkpoint.pt
#
# and finish it on the CPU (size model, tuning, rescorer, outline refiner):
#   python -m imageextract.segment.bpartis.train --data ../shared/data/emps \
#       --out .bpartis-run --finish
#
# Environment: MINUTES (training time, default 8), DEVICE (default cuda),
# WORKERS (batch-building processes, default 12).
set -uo pipefail
cd "$(dirname "$0")/.."
RUN=/tmp/bpartis-run
rm -rf "$RUN"
args=()
if [ -d .bpartis-run ]; then
  cp -r .bpartis-run "$RUN"
  args+=(--resume)
fi
python3 -m imageextract.segment.bpartis.train --data .emps-pack --out "$RUN" \
  --device "${DEVICE:-cuda}" --workers "${WORKERS:-12}" --max-minutes "${MINUTES:-8}" \
  --no-finish --no-progress "${args[@]}" "$@"
rc=$?
if [ -n "${OUT:-}" ] && [ -d "$RUN" ]; then
  for f in best.pt train.log; do
    if [ -f "$RUN/$f" ]; then cp "$RUN/$f" "$OUT/"; fi
  done
  if [ -f "$RUN/checkpoint.pt" ]; then
    split -b 15M -d "$RUN/checkpoint.pt" "$OUT/checkpoint.pt.part"
  fi
fi
exit $rc
