#!/usr/bin/env bash
# The embedded synthetic-corpus recipe, end to end on CPU: data, a non-streaming teacher, a
# streaming student baseline, the teacher's codebook indexes and the MVQ-KD streaming
# student, decoding of test-clean and test-other, and the rows of egs/synth/results.csv
# (RESULTS.md is generated from them).
#
#   egs/synth/run.sh                                  # all of the above (group main)
#   egs/synth/run.sh --groups all                     # the whole table
#   egs/synth/run.sh --groups all --seeds "42 43 44"  # with three seeds
#   egs/synth/run.sh --groups layerwise --stage 3     # one group, teacher already trained
#   egs/synth/run.sh --stage 3 --teacher-epochs 20 --exp-suffix -teacher-epoch20
#                                                     # students again from another teacher
#                                                     # checkpoint, in folders of their own
#
# The experiments (options, groups, seeds, folders) are data: egs/synth/experiments.yaml,
# run by local/run_experiments.py (see its --help; --dry-run prints the commands). Groups:
# main (teacher, student-baseline, student-mvq-kd), kd-baselines (L2 of stored or on-the-fly
# teacher embeddings, non-streaming students), layerwise, seq-kd (three student sizes),
# combined. Seed 42 trains in exp/<name>, seed N in exp/<name>-seed<N>.
#
# Stages:
#   0  data: ./prepare.sh --corpus synth (BPE vocabulary 64, training noise)
#   1  train the teacher: non-streaming Conformer 4 x 192 on train and train-teacher
#   2  train the student baseline: streaming Conformer 4 x 128 (chunk 160 ms, left 640 ms);
#      with --train-jobs 2 (the default) and stage 4 to come, in stage 4 beside the students
#   3  what the selected students need from the teacher: ./prepare.sh stages 5-7 (layer-4
#      embeddings -> 8-byte quantizer -> codebook indexes and fp16 embeddings of the
#      train cuts, data/synth/mvq: no experiment reads train-unlabeled's) and stage 8 (the
#      teacher's 4-best lists of train and train-unlabeled, data/synth/nbest, and of the
#      MVQ cuts, data/synth/mvq-nbest) when a selected group needs it
#   4  train the students of the selected groups (finished ones are skipped, interrupted
#      ones resumed; --train-jobs N trains N at once with one thread each)
#   5  decode the teacher, the baseline (both not with --exp-suffix) and the students of
#      stage 4 (streaming students: simulated and chunk by chunk), write their rows of
#      egs/synth/results.csv and regenerate egs/synth/RESULTS.md
set -euo pipefail

stage=0                 # first stage to run
stop_stage=100          # last stage to run
nj=2                    # data preparation jobs
groups=main             # groups of students of stages 3-5 (all: every group)
only=                   # stages 3-5: only these experiments (e.g. "student-l2-stored")
seeds=42                # seeds of every training (e.g. "42 43 44")
train_jobs=2            # trainings at once, one thread each (1: one at a time, all threads)
exp_suffix=             # appended to every student's folder (and results row) name
teacher_epochs=9        # epochs of the teacher; the students learn from this checkpoint
student_epochs=10       # epochs of every student
avg=3                   # epoch checkpoints averaged (decoding, the teacher of the students)
exp=egs/synth/exp       # experiment folders

options="stage stop_stage nj groups only seeds train_jobs exp_suffix teacher_epochs
 student_epochs avg exp"
. "$(dirname "${BASH_SOURCE[0]}")/../../local/parse_options.sh" "$@"

cd "$(dirname "${BASH_SOURCE[0]}")/../.."   # the repository root
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (run.sh:${BASH_LINENO[0]}) $*"; }

vocab=64
settings="--exp-dir $exp --teacher-epochs $teacher_epochs --student-epochs $student_epochs
  --avg $avg --seeds $seeds"
main_models="teacher student-baseline"  # stages 1-2; the other students: stages 3-5
# With several trainings at once, the baseline waits for stage 4 and trains there beside
# the students of group main instead of alone (the teacher gets the cores before).
defer_baseline=false
if [ "$train_jobs" -ge 2 ] && [ $stage -le 2 ] && [ $stop_stage -ge 4 ] && [ -z "$only" ] \
  && [ -z "$exp_suffix" ] && echo " $groups " | grep -qE " (main|all) "; then
  defer_baseline=true
fi
excluded=$main_models; [ $defer_baseline = true ] && excluded=teacher  # stages 4-5
students="--groups $groups${only:+ --only $only} --exclude $excluded --exp-suffix=$exp_suffix"
drive() { $python local/run_experiments.py $settings "$@"; }

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: data preparation"
  ./prepare.sh --corpus synth --vocab-size $vocab --nj $nj
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: teacher"
  drive --only teacher --steps train
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  if [ $defer_baseline = true ]; then
    log "Stage 2: the student baseline trains in stage 4, beside the other students"
  else
    log "Stage 2: student baseline"
    drive --only student-baseline --steps train --train-jobs $train_jobs
  fi
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  needs=$(drive $students --print-needs)
  teacher_layer=$(drive --print-setting teacher_layer)  # the layer MVQ-KD and L2 distil
  teacher="--teacher-model $exp/teacher --teacher-epoch $teacher_epochs --teacher-avg $avg"
  if echo "$needs" | grep -qx mvq; then
    log "Stage 3: teacher codebook indexes and embeddings -> data/synth/mvq"
    ./prepare.sh --corpus synth --vocab-size $vocab --stage 5 --stop-stage 7 $teacher \
      --teacher-layer $teacher_layer --num-codebooks 8 --mvq-num-cuts 1500 \
      --quantizer-ridge 0.01 --store-embeddings true --parts train
  fi
  for pair in "nbest|data/synth/fbank" "mvq-nbest|data/synth/mvq"; do
    if echo "$needs" | grep -qx "${pair%%|*}"; then
      log "Stage 3: the teacher's 4-best lists of ${pair##*|} -> data/synth/${pair%%|*}"
      parts=""  # the MVQ cuts: train only (above)
      if [ "${pair%%|*}" = mvq-nbest ]; then parts="--parts train"; fi
      ./prepare.sh --corpus synth --vocab-size $vocab --stage 8 --stop-stage 8 $teacher \
        --nbest-beam 4 --nbest 4 --nbest-input-dir ${pair##*|} --nbest-dir data/synth/${pair%%|*} \
        $parts
    fi
  done
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: students of the groups $groups${only:+ (only $only)}"
  drive $students --steps train --train-jobs $train_jobs
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: decoding, egs/synth/results.csv and egs/synth/RESULTS.md"
  [ -n "$exp_suffix" ] || drive --only $excluded --steps decode rows
  drive $students --steps decode rows
fi
log "Done"
