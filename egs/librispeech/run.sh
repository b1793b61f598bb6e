#!/usr/bin/env bash
# LibriSpeech recipe: non-streaming teacher and streaming student at the papers' sizes.
#
#   egs/librispeech/run.sh --dl-dir /data/download --num-gpus 8
#   egs/librispeech/run.sh --stage 3 --stop-stage 3          # decode only
#   egs/librispeech/run.sh --dry-run true                    # print the commands only
#
# Stages (the script works from the repository root; relative paths are relative to it):
#   0  data: ./prepare.sh --corpus librispeech (960 h with --full-libri true, speed
#      perturbation 0.9/1.1, MUSAN) -> data/librispeech/
#   1  train the non-streaming teacher, Conformer 16 layers x 512 dim (torchrun, DDP)
#   2  train the streaming student, causal Conformer 16 layers x 256 dim, chunk 160 ms
#      (4 encoder frames), left context 640 ms (16 frames) (torchrun, DDP)
#   3  decode test-clean and test-other (one GPU): teacher greedy_search and
#      modified_beam_search; student the same with simulated streaming, plus
#      greedy_search chunk by chunk (--streaming chunked)
#
# Results: egs/librispeech/exp/<model>/<method>/{recogs,errs,wer-summary}-<part>-<settings>.txt
set -euo pipefail

stage=0                 # first stage to run
stop_stage=100          # last stage to run
num_gpus=8              # GPUs per node for training (torchrun --nproc-per-node)
dl_dir=download         # where LibriSpeech and MUSAN are (or will be) downloaded
full_libri=true         # true: 960 h (as in the papers); false: train-clean-100 only
nj=16                   # parallel jobs of the data preparation
num_epochs=30           # training epochs (both models)
avg=9                   # decode the average of epoch-(num_epochs-avg+1) .. epoch-num_epochs
max_duration=1000       # seconds of audio per batch and GPU in training
use_fp16=true           # mixed precision training
beam_size=4             # modified_beam_search beam
torchrun_opts=--standalone  # e.g. "--nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint host:29400"
dry_run=false           # true: print the commands without running them

options="stage stop_stage num_gpus dl_dir full_libri nj num_epochs avg max_duration use_fp16
 beam_size torchrun_opts dry_run"

. "$(dirname "${BASH_SOURCE[0]}")/../../local/parse_options.sh" "$@"

if [ "$avg" -lt 1 ] || [ "$avg" -gt "$num_epochs" ]; then
  echo "$0: --avg must be in 1..$num_epochs (--num-epochs), got $avg" >&2; exit 1
fi

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
python=${PYTHON:-python3}

data=data/librispeech
fbank=$data/fbank
bpe_model=$data/lang_bpe_500/bpe.model
musan_cuts=$fbank/musan_cuts_all.jsonl.gz
exp=egs/librispeech/exp
teacher_dir=$exp/teacher-16x512
student_dir=$exp/student-16x256-causal
train_parts="train-clean-100"
[ "$full_libri" = true ] && train_parts="train-clean-100 train-clean-360 train-other-500"

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (run.sh:${BASH_LINENO[0]}) $*"; }

# Log a command, then run it (only log it with --dry-run true).
run() {
  echo "$(date '+%Y-%m-%d %H:%M:%S') (run.sh:${BASH_LINENO[0]}) + $*"
  if [ "$dry_run" != true ]; then
    "$@"
  fi
}

# Options shared by both training runs (data, batches, schedule).
common_train_opts=(
  --manifest-dir "$fbank" --prefix librispeech
  --train-parts $train_parts --valid-parts dev-clean dev-other
  --bpe-model "$bpe_model" --musan "$musan_cuts"
  --use-fp16 "$use_fp16" --max-duration "$max_duration" --num-buckets 30
  --num-epochs "$num_epochs" --save-every-n 4000 --keep-last-k 3 --log-interval 50
)

log "stages $stage..$stop_stage: $num_gpus GPUs, full_libri=$full_libri, $num_epochs epochs, avg $avg"

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  log "Stage 0: data preparation -> $data"
  run ./prepare.sh --corpus librispeech --dl-dir "$dl_dir" --full-libri "$full_libri" \
    --speed-perturb true --musan true --nj "$nj"
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "Stage 1: non-streaming teacher (16 x 512) -> $teacher_dir"
  run torchrun $torchrun_opts --nproc-per-node "$num_gpus" train.py \
    --exp-dir "$teacher_dir" "${common_train_opts[@]}" \
    --num-encoder-layers 16 --encoder-dim 512 --num-heads 8 --feedforward-dim 2048 \
    --causal false --base-lr 1e-3 --warmup-batches 5000 --lr-batches 5000 --lr-epochs 6
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  log "Stage 2: streaming student (16 x 256, chunk 160 ms, left 640 ms) -> $student_dir"
  run torchrun $torchrun_opts --nproc-per-node "$num_gpus" train.py \
    --exp-dir "$student_dir" "${common_train_opts[@]}" \
    --num-encoder-layers 16 --encoder-dim 256 --num-heads 4 --feedforward-dim 1024 \
    --causal true --chunk-size 4 --left-context 16 --dynamic-chunk-training true \
    --base-lr 2e-3 --warmup-batches 5000 --lr-batches 5000 --lr-epochs 6
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  decode_opts=(
    --epoch "$num_epochs" --avg "$avg" --manifest-dir "$fbank" --prefix librispeech
    --bpe-model "$bpe_model" --test-parts test-clean test-other --beam-size "$beam_size"
    --max-duration 600
  )
  log "Stage 3: decode test-clean / test-other (epoch $num_epochs, avg $avg)"
  for method in greedy_search modified_beam_search; do
    run "$python" decode.py --exp-dir "$teacher_dir" "${decode_opts[@]}" \
      --decoding-method "$method"
    run "$python" decode.py --exp-dir "$student_dir" "${decode_opts[@]}" \
      --decoding-method "$method" --streaming simulated --chunk-size 4 --left-context 16
  done
  run "$python" decode.py --exp-dir "$student_dir" "${decode_opts[@]}" \
    --decoding-method greedy_search --streaming chunked --chunk-size 4 --left-context 16
  if [ "$dry_run" != true ]; then
    for f in "$teacher_dir"/*/wer-summary-test-*-epoch-"$num_epochs"-avg-"$avg"*.txt \
             "$student_dir"/*/wer-summary-test-*-epoch-"$num_epochs"-avg-"$avg"*.txt; do
      if [ -f "$f" ]; then
        log "$f: WER $(tail -n 1 "$f" | cut -f 2)"
      fi
    done
  fi
fi

log "Done: stages $stage..$stop_stage"
