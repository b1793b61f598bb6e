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
# MVQ-KD (the MVQ-KD paper's configuration):
#   4  HuBERT-XL (fairseq checkpoint fine-tuned on LS-960, --hubert) layer 36 embeddings of
#      --mvq-num-cuts training cuts -> 8-byte quantizer (one GPU), then codebook indexes of
#      every training cut, speed-perturbed copies included (torchrun, all GPUs) -> data/librispeech/mvq
#   5  train with MVQ-KD (codebook loss scale 0.1, no time warp): the non-streaming
#      student (12 x 512, KD on layer 6, icefall's pruned_transducer_stateless6 size), its
#      baseline, and the streaming 16 x 256 student (KD on layer 8; its baseline is stage 2)
#   6  decode the students of stage 5 (greedy_search and modified_beam_search)
# Layer-wise KD (the layer-wise KD paper's configuration):
#   7  train the streaming 16 x 256 student with auxiliary non-streaming branches on
#      layers 4, 8, 12, 16 distilling the stage-1 teacher's layers 4, 8, 12, 16 (run on the
#      fly): feature, attention-relation and APC losses; with --unlabeled-libri also a
#      second student that mixes those unlabeled parts 1:1 into each epoch (KD losses only)
#   8  decode the students of stage 7
# Sequence-level KD and the combination:
#   9  the stage-1 teacher's N-best lists (modified beam search) of every training cut
#      (and --unlabeled-libri cut) -> data/librispeech/nbest, and of the MVQ cuts of
#      stage 4 -> data/librispeech/mvq-nbest (torchrun, all GPUs; sharded, resumable)
#  10  non-streaming students of three sizes (16 x 256, 12 x 256, 8 x 192: 3.8x, 5.0x and
#      11.9x fewer parameters than the teacher), each as a baseline and on the N-best
#      (with --unlabeled-libri also on the unlabeled parts' N-best)
#  11  the combined streaming 16 x 256 student: MVQ-KD + layer-wise KD + sequence-level KD
#      (+ the unlabeled parts with --unlabeled-libri)
#  12  decode the students of stages 10-11
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
# MVQ-KD (stages 4-6)
hubert=download/hubert/hubert_xtralarge_ll60k_finetune_ls960.pt  # fairseq HuBERT-XL checkpoint
hubert_layer=36         # 1-based HuBERT layer quantized
num_codebooks=8         # bytes per 20 ms teacher frame
mvq_num_cuts=1000       # training cuts whose embeddings train the quantizer
codebook_loss_scale=0.1 # weight of the codebook loss (icefall's code)
# Layer-wise KD (stages 7-8); the scales are those tuned on egs/synth (per frame, like the
# transducer loss; the paper's 0.01 / 0.0005 / 0.005 assume its own normalisation)
layerwise_connections=4 # evenly spaced student -> teacher layer pairs (16 layers: 4, 8, 12, 16)
feature_loss_scale=1
attention_loss_scale=0.1
apc_loss_scale=1
apc_shift=2             # APC predicts the teacher layer output this many 40 ms frames ahead
unlabeled_libri=        # parts prepared without transcripts (stage 0) for the second student,
                        # e.g. "train-clean-360 train-other-500" with --full-libri false
# Sequence-level KD (stages 9-12)
nbest_beam=4            # the teacher's modified beam search beam
nbest=4                 # hypotheses kept per cut
nbest_weighting=scores  # uniform | scores (the teacher's posterior over the list)
ground_truth_weight=0   # a labeled cut's transcript weight beside its pseudo labels

options="stage stop_stage num_gpus dl_dir full_libri nj num_epochs avg max_duration use_fp16
 beam_size torchrun_opts dry_run hubert hubert_layer num_codebooks mvq_num_cuts codebook_loss_scale
 layerwise_connections feature_loss_scale attention_loss_scale apc_loss_scale apc_shift
 unlabeled_libri nbest_beam nbest nbest_weighting ground_truth_weight"

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
    --unlabeled-libri "$unlabeled_libri" --speed-perturb true --musan true --nj "$nj"
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

mvq=$data/mvq
mvq_opts=(--train-manifest-dir "$mvq" --quantizer "$mvq/quantizer.pt"
  --codebook-loss-scale "$codebook_loss_scale" --time-warp-factor 0)
nonstreaming_student=(--num-encoder-layers 12 --encoder-dim 512 --num-heads 8
  --feedforward-dim 2048 --causal false --base-lr 1e-3 --warmup-batches 5000
  --lr-batches 5000 --lr-epochs 6)
streaming_student=(--num-encoder-layers 16 --encoder-dim 256 --num-heads 4 --feedforward-dim 1024
  --causal true --chunk-size 4 --left-context 16 --dynamic-chunk-training true
  --base-lr 2e-3 --warmup-batches 5000 --lr-batches 5000 --lr-epochs 6)
kd_students="student-12x512-baseline student-12x512-mvq-kd student-16x256-causal-mvq-kd"

if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  log "Stage 4: HuBERT layer $hubert_layer -> $num_codebooks-byte codebook indexes -> $mvq"
  teacher_opts=(--teacher-kind hf --teacher-model "$hubert" --teacher-layer "$hubert_layer")
  run ./prepare.sh --corpus librispeech --full-libri "$full_libri" --speed-perturb true \
    --stage 5 --stop-stage 6 --num-codebooks "$num_codebooks" --mvq-num-cuts "$mvq_num_cuts" \
    "${teacher_opts[@]}"
  # The training manifests hold the speed-perturbed copies too.
  run torchrun $torchrun_opts --nproc-per-node "$num_gpus" local/compute_codebook_indexes.py \
    --manifest-dir "$fbank" --prefix librispeech --parts $train_parts $unlabeled_libri \
    --quantizer "$mvq/quantizer.pt" --output-dir "$mvq" "${teacher_opts[@]}"
fi

if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  log "Stage 5: MVQ-KD students"
  run torchrun $torchrun_opts --nproc-per-node "$num_gpus" train.py \
    --exp-dir "$exp/student-12x512-baseline" "${common_train_opts[@]}" "${nonstreaming_student[@]}"
  run torchrun $torchrun_opts --nproc-per-node "$num_gpus" train.py \
    --exp-dir "$exp/student-12x512-mvq-kd" "${common_train_opts[@]}" "${nonstreaming_student[@]}" \
    "${mvq_opts[@]}" --kd-layer 6
  run torchrun $torchrun_opts --nproc-per-node "$num_gpus" train.py \
    --exp-dir "$exp/student-16x256-causal-mvq-kd" "${common_train_opts[@]}" \
    "${streaming_student[@]}" "${mvq_opts[@]}" --kd-layer 8
fi

# Decode experiments of $exp (greedy_search and modified_beam_search; the causal ones with
# simulated streaming).
decode_students() {
  local name streaming_opts method
  for name in "$@"; do
    streaming_opts=()
    case $name in *causal*) streaming_opts=(--streaming simulated --chunk-size 4 --left-context 16) ;; esac
    for method in greedy_search modified_beam_search; do
      run "$python" decode.py --exp-dir "$exp/$name" --epoch "$num_epochs" --avg "$avg" \
        --manifest-dir "$fbank" --prefix librispeech --bpe-model "$bpe_model" \
        --test-parts test-clean test-other --beam-size "$beam_size" --max-duration 600 \
        --decoding-method "$method" "${streaming_opts[@]}"
    done
  done
}

if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
  log "Stage 6: decode the MVQ-KD students"
  decode_students $kd_students
fi

layerwise_opts=(--teacher-model "$teacher_dir" --teacher-epoch "$num_epochs" --teacher-avg "$avg"
  --layerwise-connections "$layerwise_connections" --feature-loss-scale "$feature_loss_scale"
  --attention-loss-scale "$attention_loss_scale" --apc-loss-scale "$apc_loss_scale"
  --apc-shift "$apc_shift" --time-warp-factor 0)
layerwise_students="student-16x256-causal-layerwise"
[ -n "$unlabeled_libri" ] && layerwise_students="$layerwise_students student-16x256-causal-layerwise-unlabeled"

if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 7 ]; then
  log "Stage 7: layer-wise KD students (teacher $teacher_dir on the fly)"
  run torchrun $torchrun_opts --nproc-per-node "$num_gpus" train.py \
    --exp-dir "$exp/student-16x256-causal-layerwise" "${common_train_opts[@]}" \
    "${streaming_student[@]}" "${layerwise_opts[@]}"
  if [ -n "$unlabeled_libri" ]; then
    run torchrun $torchrun_opts --nproc-per-node "$num_gpus" train.py \
      --exp-dir "$exp/student-16x256-causal-layerwise-unlabeled" "${common_train_opts[@]}" \
      "${streaming_student[@]}" "${layerwise_opts[@]}" \
      --unlabeled-parts $unlabeled_libri --unlabeled-ratio 1
  fi
fi

if [ "$stage" -le 8 ] && [ "$stop_stage" -ge 8 ]; then
  log "Stage 8: decode the layer-wise KD students"
  decode_students $layerwise_students
fi

nbest_dir=$data/nbest
seq_kd_opts=(--pseudo-labels nbest --nbest-weighting "$nbest_weighting"
  --ground-truth-weight "$ground_truth_weight")
unlabeled_opts=()
[ -n "$unlabeled_libri" ] && unlabeled_opts=(--unlabeled-parts $unlabeled_libri --unlabeled-ratio 1)
# Non-streaming students of stage 10: name|encoder options
sizes=(
  "16x256|--num-encoder-layers 16 --encoder-dim 256 --num-heads 4 --feedforward-dim 1024"
  "12x256|--num-encoder-layers 12 --encoder-dim 256 --num-heads 4 --feedforward-dim 1024"
  "8x192|--num-encoder-layers 8 --encoder-dim 192 --num-heads 4 --feedforward-dim 768"
)
size_opts=(--causal false --base-lr 2e-3 --warmup-batches 5000 --lr-batches 5000 --lr-epochs 6)
seq_students=""
for size in "${sizes[@]}"; do
  seq_students="$seq_students student-${size%%|*}-baseline student-${size%%|*}-seq-kd"
  [ -n "$unlabeled_libri" ] && seq_students="$seq_students student-${size%%|*}-seq-kd-unlabeled"
done
combined=student-16x256-causal-combined

if [ "$stage" -le 9 ] && [ "$stop_stage" -ge 9 ]; then
  log "Stage 9: the teacher's $nbest-best lists -> $nbest_dir, $data/mvq-nbest"
  for pair in "$fbank|$nbest_dir" "$mvq|$data/mvq-nbest"; do
    run torchrun $torchrun_opts --nproc-per-node "$num_gpus" local/compute_nbest.py \
      --manifest-dir "${pair%%|*}" --prefix librispeech --parts $train_parts $unlabeled_libri \
      --output-dir "${pair##*|}" --teacher-model "$teacher_dir" --teacher-epoch "$num_epochs" \
      --teacher-avg "$avg" --bpe-model "$bpe_model" --beam "$nbest_beam" --nbest "$nbest"
  done
fi

if [ "$stage" -le 10 ] && [ "$stop_stage" -ge 10 ]; then
  log "Stage 10: students of three sizes, baseline and sequence-level KD"
  for size in "${sizes[@]}"; do
    name=student-${size%%|*}
    read -r -a enc <<< "${size#*|}"
    run torchrun $torchrun_opts --nproc-per-node "$num_gpus" train.py \
      --exp-dir "$exp/$name-baseline" "${common_train_opts[@]}" "${enc[@]}" "${size_opts[@]}"
    run torchrun $torchrun_opts --nproc-per-node "$num_gpus" train.py \
      --exp-dir "$exp/$name-seq-kd" "${common_train_opts[@]}" "${enc[@]}" "${size_opts[@]}" \
      --train-manifest-dir "$nbest_dir" "${seq_kd_opts[@]}"
    if [ -n "$unlabeled_libri" ]; then
      run torchrun $torchrun_opts --nproc-per-node "$num_gpus" train.py \
        --exp-dir "$exp/$name-seq-kd-unlabeled" "${common_train_opts[@]}" "${enc[@]}" \
        "${size_opts[@]}" --train-manifest-dir "$nbest_dir" "${seq_kd_opts[@]}" \
        "${unlabeled_opts[@]}"
    fi
  done
fi

if [ "$stage" -le 11 ] && [ "$stop_stage" -ge 11 ]; then
  log "Stage 11: the combined student (MVQ-KD + layer-wise KD + sequence-level KD)"
  run torchrun $torchrun_opts --nproc-per-node "$num_gpus" train.py \
    --exp-dir "$exp/$combined" "${common_train_opts[@]}" "${streaming_student[@]}" \
    --train-manifest-dir "$data/mvq-nbest" --quantizer "$mvq/quantizer.pt" \
    --codebook-loss-scale "$codebook_loss_scale" --kd-layer 8 "${layerwise_opts[@]}" \
    "${seq_kd_opts[@]}" "${unlabeled_opts[@]}"
fi

if [ "$stage" -le 12 ] && [ "$stop_stage" -ge 12 ]; then
  log "Stage 12: decode the students of stages 10-11"
  decode_students $seq_students $combined
fi

log "Done: stages $stage..$stop_stage"
