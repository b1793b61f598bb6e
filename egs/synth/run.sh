#!/usr/bin/env bash
# The embedded synthetic-corpus recipe, end to end on CPU (2 cores: ~50 minutes):
#   data preparation, a non-streaming teacher, a small streaming student baseline,
#   the teacher's codebook indexes (MVQ) and the MVQ-KD streaming student, decoding of
#   test-clean and test-other, and the rows of egs/synth/RESULTS.md.
#
#   egs/synth/run.sh                       # everything above
#   egs/synth/run.sh --kd-baselines true   # + the MVQ-KD paper's comparison (~100 min more)
#   egs/synth/run.sh --layerwise true      # + the layer-wise KD students (~2.5 h more)
#   egs/synth/run.sh --seq-kd true         # + sequence-level KD, students of three sizes
#   egs/synth/run.sh --combined true       # + the students with all three families
#   egs/synth/run.sh --all true            # the whole table of egs/synth/RESULTS.md
#   egs/synth/run.sh --stage 5             # from the MVQ stages on
#   egs/synth/run.sh --stage 6 --stop-stage 7 --teacher-epochs 20 --exp-suffix -teacher-epoch20
#                                          # students again from another teacher checkpoint,
#                                          # in their own folders and RESULTS rows
#
# Stages:
#   0  ./prepare.sh on the synthetic corpus (BPE vocabulary 64, training noise)
#   1  train the teacher: non-streaming Conformer 4 x 192
#   2  train the student baseline: streaming Conformer 4 x 128 (chunk 160 ms, left 640 ms)
#   3  decode both (student: simulated and true chunk-by-chunk streaming)
#   4  rows of egs/synth/RESULTS.md
#   5  ./prepare.sh stages 5-7: teacher layer-4 embeddings -> 8-byte quantizer -> codebook
#      indexes (and fp16 embeddings) of every training and unlabeled cut, in data/synth/mvq;
#      with --seq-kd or --combined also stage 8: the teacher's 4-best lists of those cuts
#      (data/synth/nbest) and of the MVQ cuts (data/synth/mvq-nbest)
#   6  train the MVQ-KD streaming student (same size and epochs as the baseline;
#      --train-jobs N trains N students at once with one thread each: on 2 cores two
#      at a time do ~1.7x the work of one at a time with two threads);
#      with --kd-baselines true also: streaming students with L2 regression of the
#      stored embeddings and of the teacher run on the fly, and the non-streaming
#      student baseline, MVQ-KD, stored-L2 and on-the-fly-L2;
#      with --layerwise true also: streaming students with layer-wise KD from the
#      teacher on the fly (connections 2-2 and 4-4): the ablations feature loss only,
#      + attention relation, + APC, and all three with the train-unlabeled split;
#      with --seq-kd true also: non-streaming students of 4 x 128, 4 x 80 and 4 x 40 (2.1x,
#      4.4x and 10.5x fewer parameters than the teacher), each as a baseline and trained on
#      the teacher's N-best, and the two smaller ones also with the train-unlabeled split;
#      with --combined true also: the streaming and the non-streaming 4 x 128 student
#      with MVQ-KD + layer-wise KD (0.1x) + sequence-level KD, and the same two with
#      on-the-fly L2 in place of MVQ-KD (labeled cuts only: the 1:1 train-unlabeled split
#      would double each epoch), and the two with on-the-fly L2 on every cut and the
#      teacher's 4-best as the labels of train-unlabeled (transcripts alone on labeled cuts)
#   7  decode the students of stage 6 and write their rows of egs/synth/RESULTS.md
set -euo pipefail

stage=0                 # first stage to run
stop_stage=100          # last stage to run
teacher_epochs=10       # epochs of the teacher
student_epochs=10       # epochs of every student
avg=3                   # epoch checkpoints averaged for decoding
nj=2                    # data preparation jobs
exp=egs/synth/exp       # experiment folders
kd_layer=0              # student layer (1-based) predicting the teacher targets (0: middle)
codebook_loss_scale=0.1 # MVQ-KD loss weight (icefall's)
embedding_loss_scale=1  # L2 baselines' loss weight
kd_baselines=false      # also train the stored / on-the-fly L2 and non-streaming students
layerwise=false         # also train the layer-wise KD students
seq_kd=false            # also train the sequence-level KD students
combined=false          # also train the students with all three families
all=false               # all of the above
pseudo_labels=nbest     # sequence-level KD: 1best | nbest
nbest_weighting=scores  # sequence-level KD: uniform | scores
ground_truth_weight=0.5 # sequence-level KD: a labeled cut's transcript weight
combined_ground_truth_weight=0.8  # the same in the combined students
students=               # stages 6-7: only these experiments (e.g. "student-l2-stored")
train_jobs=1            # stage 6: students trained at once, one thread each (2 cores: 2)
seed=42                 # random seed of every training run
exp_suffix=             # stages 6-7: appended to every student's folder (and RESULTS row) name

options="stage stop_stage teacher_epochs student_epochs avg nj exp kd_layer codebook_loss_scale
 embedding_loss_scale kd_baselines layerwise seq_kd combined all pseudo_labels nbest_weighting
 ground_truth_weight combined_ground_truth_weight students train_jobs seed exp_suffix"
. "$(dirname "${BASH_SOURCE[0]}")/../../local/parse_options.sh" "$@"

if [ "$all" = true ]; then kd_baselines=true; layerwise=true; seq_kd=true; combined=true; fi

cd "$(dirname "${BASH_SOURCE[0]}")/../.."   # the repository root
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (run.sh:${BASH_LINENO[0]}) $*"; }

vocab=64
bpe=data/synth/lang_bpe_$vocab/bpe.model
mvq=data/synth/mvq
teacher_layer=4
common="--bpe-model $bpe --manifest-dir data/synth/fbank --prefix synth --max-duration 20
  --num-workers 1 --seed $seed --base-lr 2e-3 --warmup-batches 200 --warm-step 1000
  --spec-augment false --decoder-dim 256 --joiner-dim 256 --log-interval 100
  --musan data/synth/fbank/noise_cuts_all.jsonl.gz"
teacher_opts="--num-encoder-layers 4 --encoder-dim 192 --num-heads 4 --feedforward-dim 768"
small="--num-encoder-layers 4 --encoder-dim 128 --num-heads 4 --feedforward-dim 512"
streaming="--causal true --chunk-size 4 --left-context 16"
# Frame-level KD options
mvq_kd="--train-manifest-dir $mvq --quantizer $mvq/quantizer.pt --kd-layer $kd_layer
  --codebook-loss-scale $codebook_loss_scale"
l2_stored="--train-manifest-dir $mvq --kd-layer $kd_layer --embedding-loss l2
  --embedding-loss-scale $embedding_loss_scale"
l2_teacher="--kd-layer $kd_layer --embedding-loss l2 --embedding-loss-scale $embedding_loss_scale
  --embedding-source teacher --teacher-model $exp/teacher --teacher-epoch $teacher_epochs
  --teacher-avg $avg --teacher-layer $teacher_layer"
# Layer-wise KD: the teacher on the fly, auxiliary branches on student layers 2 and 4
layerwise_kd="--teacher-model $exp/teacher --teacher-epoch $teacher_epochs --teacher-avg $avg
  --layerwise-connections 2"
feature="--feature-loss-scale 1"
attention="--attention-loss-scale 0.1"
apc="--apc-loss-scale 1 --apc-shift 2"
unlabeled="--unlabeled-parts train-unlabeled --unlabeled-ratio 1"
# Sequence-level KD: the teacher's 4-best of prepare.sh stage 8
seq="--train-manifest-dir data/synth/nbest --pseudo-labels $pseudo_labels
  --nbest-weighting $nbest_weighting --ground-truth-weight $ground_truth_weight"
size80="--num-encoder-layers 4 --encoder-dim 80 --num-heads 4 --feedforward-dim 320"
size40="--num-encoder-layers 4 --encoder-dim 40 --num-heads 4 --feedforward-dim 160"
# All three: cuts with codebook indexes and N-best lists, the teacher on the fly. The
# layer-wise weights at 0.1x and the transcript at 0.8: at the weights of each family alone
# (feature 1, attention 0.1, APC 1, transcript 0.5) the combination measured worse (RESULTS).
light="--feature-loss-scale 0.1 --attention-loss-scale 0.01 --apc-loss-scale 0.1 --apc-shift 2
  --pseudo-labels nbest --nbest-weighting $nbest_weighting
  --ground-truth-weight $combined_ground_truth_weight"
all_kd="--train-manifest-dir data/synth/mvq-nbest --quantizer $mvq/quantizer.pt
  --kd-layer $kd_layer --codebook-loss-scale $codebook_loss_scale $layerwise_kd $light"
# The same with on-the-fly L2 regression of the teacher's layer in place of the codebook
# loss (the teacher already runs on the fly for the layer-wise losses): cuts with N-best only
all_kd_l2="--train-manifest-dir data/synth/nbest $l2_teacher --layerwise-connections 2 $light"
# On-the-fly L2 on every cut + sequence-level KD on the unlabeled split: the labeled cuts
# keep their transcripts alone (--ground-truth-weight 1), the cuts of train-unlabeled train
# on the teacher's 4-best, one per two labeled cuts (an epoch 1.5x as long; no layer-wise
# branches, which would double it)
l2_seq_unlabeled="--train-manifest-dir data/synth/nbest $l2_teacher --pseudo-labels nbest
  --nbest-weighting $nbest_weighting --ground-truth-weight 1
  --unlabeled-parts train-unlabeled --unlabeled-ratio 0.5"

train_cmd() {  # exp-name epochs options...: the single-line train.py command
  local name=$1 epochs=$2; shift 2
  echo ./train.py --exp-dir $exp/$name --num-epochs $epochs $* $common
}
train() {  # exp-name epochs options...; skipped when epoch-<epochs>.pt exists,
           # resumed after the last epoch-N.pt of an interrupted run
  local cmd n resume=() append=(); cmd=$(train_cmd "$@")
  if [ -f $exp/$1/epoch-$2.pt ]; then
    log "$exp/$1/epoch-$2.pt exists: $1 is trained, skipping"; return
  fi
  for ((n = $2 - 1; n >= 1; n--)); do
    if [ -f $exp/$1/epoch-$n.pt ]; then
      log "$1: resuming after $exp/$1/epoch-$n.pt (log appended to $exp/$1/train.log)"
      resume=(--start-epoch $((n + 1))); append=(-a); break
    fi
  done
  mkdir -p $exp/$1
  $python $cmd "${resume[@]}" 2>&1 | tee "${append[@]}" $exp/$1/train.log
}
decode() {  # exp-name epochs [decode.py options]
  local name=$1 epochs=$2; shift 2
  $python ./decode.py --exp-dir $exp/$name --epoch $epochs --avg $avg --bpe-model $bpe \
    --manifest-dir data/synth/fbank --prefix synth "$@"
}
row() {  # exp-name epochs role method streaming(true|false) options...
  local name=$1 epochs=$2 role=$3 method=$4 is_streaming=$5; shift 5
  local suffix=epoch-$epochs-avg-$avg
  [ "$is_streaming" = true ] && suffix=$suffix-simulated-chunk-4-left-16
  $python -m mvq_kd.results --results egs/synth/RESULTS.md --exp-dir $exp/$name \
    --role $role --method "$method" --suffix $suffix --command "$(train_cmd $name $epochs "$@")"
}

# The students of stages 6-7: exp-name|method|streaming|options (options on one line)
mvq_kd=$(echo $mvq_kd); l2_stored=$(echo $l2_stored); l2_teacher=$(echo $l2_teacher)
lw="$small $streaming $(echo $layerwise_kd)"
seq=$(echo $seq); all_kd=$(echo $all_kd); all_kd_l2=$(echo $all_kd_l2)
l2_seq_unlabeled=$(echo $l2_seq_unlabeled)
kd_students=("student-mvq-kd|MVQ-KD|true|$small $streaming $mvq_kd")
if [ "$kd_baselines" = true ]; then
  kd_students+=(
    "student-l2-stored|L2 (stored embeddings)|true|$small $streaming $l2_stored"
    "student-l2-teacher|L2 (teacher on the fly)|true|$small $streaming $l2_teacher"
    "student-nonstreaming-baseline|baseline|false|$small"
    "student-nonstreaming-mvq-kd|MVQ-KD|false|$small $mvq_kd"
    "student-nonstreaming-l2-stored|L2 (stored embeddings)|false|$small $l2_stored"
    "student-nonstreaming-l2-teacher|L2 (teacher on the fly)|false|$small $l2_teacher"
  )
fi
if [ "$layerwise" = true ]; then
  kd_students+=(
    "student-layerwise-f1|layer-wise (feature 1)|true|$lw $feature"
    "student-layerwise-f1-a0.1|layer-wise (feature 1, attention 0.1)|true|$lw $feature $attention"
    "student-layerwise-f1-a0.1-apc1|layer-wise (feature 1, attention 0.1, APC 1)|true|$lw $feature $attention $apc"
    "student-layerwise-f1-a0.1-apc1-unlabeled|layer-wise + unlabeled (feature 1, attention 0.1, APC 1)|true|$lw $feature $attention $apc $unlabeled"
  )
fi
if [ "$seq_kd" = true ]; then
  [ "$kd_baselines" = true ] || kd_students+=("student-nonstreaming-baseline|baseline|false|$small")
  kd_students+=(
    "student-nonstreaming-4x80-baseline|baseline|false|$size80"
    "student-nonstreaming-4x40-baseline|baseline|false|$size40"
    "student-nonstreaming-seq-kd|sequence-level KD|false|$small $seq"
    "student-nonstreaming-4x80-seq-kd|sequence-level KD|false|$size80 $seq"
    "student-nonstreaming-4x40-seq-kd|sequence-level KD|false|$size40 $seq"
    "student-nonstreaming-4x80-seq-kd-unlabeled|sequence-level KD + unlabeled|false|$size80 $seq $unlabeled"
    "student-nonstreaming-4x40-seq-kd-unlabeled|sequence-level KD + unlabeled|false|$size40 $seq $unlabeled"
  )
fi
if [ "$combined" = true ]; then
  kd_students+=(
    "student-combined-light|MVQ-KD + layer-wise 0.1x + sequence-level KD (ground truth $combined_ground_truth_weight)|true|$small $streaming $all_kd"
    "student-nonstreaming-combined-light|MVQ-KD + layer-wise 0.1x + sequence-level KD (ground truth $combined_ground_truth_weight)|false|$small $all_kd"
    "student-combined-l2-light|L2 on the fly + layer-wise 0.1x + sequence-level KD (ground truth $combined_ground_truth_weight)|true|$small $streaming $all_kd_l2"
    "student-nonstreaming-combined-l2-light|L2 on the fly + layer-wise 0.1x + sequence-level KD (ground truth $combined_ground_truth_weight)|false|$small $all_kd_l2"
    "student-combined-l2-unlabeled|L2 on the fly + sequence-level KD on train-unlabeled (transcripts alone on labeled cuts)|true|$small $streaming $l2_seq_unlabeled"
    "student-nonstreaming-combined-l2-unlabeled|L2 on the fly + sequence-level KD on train-unlabeled (transcripts alone on labeled cuts)|false|$small $l2_seq_unlabeled"
  )
fi

if [ -n "$students" ]; then
  selected=()
  for s in "${kd_students[@]}"; do
    case " $students " in *" ${s%%|*} "*) selected+=("$s") ;; esac
  done
  [ ${#selected[@]} -gt 0 ] || { echo "$0: no student of stage 6 is named in --students" >&2; exit 1; }
  kd_students=("${selected[@]}")
fi

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: data preparation"
  ./prepare.sh --corpus synth --vocab-size $vocab --nj $nj
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: teacher"
  train teacher $teacher_epochs $teacher_opts
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: student baseline"
  train student-baseline $student_epochs $small $streaming
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "Stage 3: decoding"
  decode teacher $teacher_epochs
  for mode in simulated chunked; do
    decode student-baseline $student_epochs --streaming $mode
  done
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: egs/synth/RESULTS.md"
  row teacher $teacher_epochs teacher baseline false $teacher_opts
  row student-baseline $student_epochs student baseline true $small $streaming
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: teacher codebook indexes and embeddings -> $mvq"
  ./prepare.sh --corpus synth --vocab-size $vocab --stage 5 --stop-stage 7 \
    --teacher-model $exp/teacher --teacher-epoch $teacher_epochs --teacher-avg $avg \
    --teacher-layer $teacher_layer --num-codebooks 8 --mvq-num-cuts 1500 \
    --store-embeddings true
  if [ "$seq_kd" = true ] || [ "$combined" = true ]; then
    log "Stage 5: the teacher's 4-best lists -> data/synth/nbest, data/synth/mvq-nbest"
    for pair in "data/synth/fbank|data/synth/nbest" "$mvq|data/synth/mvq-nbest"; do
      ./prepare.sh --corpus synth --vocab-size $vocab --stage 8 --stop-stage 8 \
        --teacher-model $exp/teacher --teacher-epoch $teacher_epochs --teacher-avg $avg \
        --nbest-beam 4 --nbest 4 --nbest-input-dir ${pair%%|*} --nbest-dir ${pair##*|}
    done
  fi
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  for s in "${kd_students[@]}"; do
    IFS='|' read -r name method is_streaming opts <<< "$s"
    name=$name$exp_suffix
    if [ "$train_jobs" -le 1 ]; then
      log "Stage 6: $name ($method)"
      train $name $student_epochs $opts
      continue
    fi
    while [ "$(jobs -rp | wc -l)" -ge "$train_jobs" ]; do wait -n; done
    log "Stage 6: $name ($method) in the background, one thread; log: $exp/$name/train.log"
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 train $name $student_epochs $opts > /dev/null &
  done
  while [ -n "$(jobs -rp)" ]; do wait -n; done  # stops here if one of them failed
fi

if [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  for s in "${kd_students[@]}"; do
    IFS='|' read -r name method is_streaming opts <<< "$s"
    name=$name$exp_suffix
    log "Stage 7: decoding $name"
    decode $name $student_epochs
    row $name $student_epochs student "$method" $is_streaming $opts
  done
fi
log "Done"
