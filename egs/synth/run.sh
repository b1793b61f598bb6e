#!/usr/bin/env bash
# The embedded synthetic-corpus recipe, end to end on CPU (2 cores: ~30 minutes):
#   data preparation, a non-streaming teacher, a small streaming student baseline,
#   decoding of test-clean and test-other, and the rows of egs/synth/RESULTS.md.
#
#   egs/synth/run.sh                       # everything
#   egs/synth/run.sh --stage 2             # from the student on
#
# Stages:
#   0  ./prepare.sh on the synthetic corpus (BPE vocabulary 64, training noise)
#   1  train the teacher: non-streaming Conformer 4 x 192
#   2  train the student baseline: streaming Conformer 4 x 128 (chunk 160 ms, left 640 ms)
#   3  decode both (student: simulated and true chunk-by-chunk streaming)
#   4  write the rows of egs/synth/RESULTS.md
set -euo pipefail

stage=0                 # first stage to run
stop_stage=100          # last stage to run
teacher_epochs=10       # epochs of the teacher
student_epochs=10       # epochs of the student
avg=3                   # epoch checkpoints averaged for decoding
nj=2                    # data preparation jobs
exp=egs/synth/exp       # experiment folders

options="stage stop_stage teacher_epochs student_epochs avg nj exp"
. "$(dirname "${BASH_SOURCE[0]}")/../../local/parse_options.sh" "$@"

cd "$(dirname "${BASH_SOURCE[0]}")/../.."   # the repository root
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (run.sh:${BASH_LINENO[0]}) $*"; }

vocab=64
bpe=data/synth/lang_bpe_$vocab/bpe.model
common="--bpe-model $bpe --manifest-dir data/synth/fbank --prefix synth --max-duration 20
  --num-workers 1 --base-lr 2e-3 --warmup-batches 200 --warm-step 1000 --spec-augment false
  --decoder-dim 256 --joiner-dim 256 --log-interval 100
  --musan data/synth/fbank/noise_cuts_all.jsonl.gz"
teacher_opts="--num-encoder-layers 4 --encoder-dim 192 --num-heads 4 --feedforward-dim 768"
student_opts="--num-encoder-layers 4 --encoder-dim 128 --num-heads 4 --feedforward-dim 512
  --causal true --chunk-size 4 --left-context 16"
teacher_cmd="./train.py --exp-dir $exp/teacher --num-epochs $teacher_epochs $teacher_opts $common"
student_cmd="./train.py --exp-dir $exp/student-baseline --num-epochs $student_epochs $student_opts $common"
# Single-line forms for RESULTS.md
teacher_cmd=$(echo $teacher_cmd); student_cmd=$(echo $student_cmd)

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: data preparation"
  ./prepare.sh --corpus synth --vocab-size $vocab --nj $nj
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: teacher"
  mkdir -p $exp/teacher
  $python $teacher_cmd 2>&1 | tee $exp/teacher/train.log
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: student baseline"
  mkdir -p $exp/student-baseline
  $python $student_cmd 2>&1 | tee $exp/student-baseline/train.log
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "Stage 3: decoding"
  dec="--bpe-model $bpe --manifest-dir data/synth/fbank --prefix synth --avg $avg"
  $python ./decode.py --exp-dir $exp/teacher --epoch $teacher_epochs $dec
  for mode in simulated chunked; do
    $python ./decode.py --exp-dir $exp/student-baseline --epoch $student_epochs $dec \
      --streaming $mode
  done
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: egs/synth/RESULTS.md"
  $python -m mvq_kd.results --results egs/synth/RESULTS.md --exp-dir $exp/teacher \
    --role teacher --method baseline --suffix epoch-$teacher_epochs-avg-$avg \
    --command "$teacher_cmd"
  $python -m mvq_kd.results --results egs/synth/RESULTS.md --exp-dir $exp/student-baseline \
    --role student --method baseline \
    --suffix epoch-$student_epochs-avg-$avg-simulated-chunk-4-left-16 --command "$student_cmd"
fi
log "Done"
