#!/usr/bin/env bash
# Data preparation for the mvq_kd recipes (icefall style).
#
#   ./prepare.sh                                  # embedded synthetic corpus, all stages
#   ./prepare.sh --corpus librispeech --dl-dir /data/download
#   ./prepare.sh --stage 2 --stop-stage 3         # only some stages
#
# Stages (each logs what it does and skips work that is already finished):
#   0  corpus: synthesize the embedded corpus (synth) or download LibriSpeech
#      (skipped for parts already in --dl-dir)
#   1  lhotse manifests (validated: bad audio and empty transcripts are reported)
#   2  80-dim fbank features (LilcomChunkyWriter), optional speed perturbation
#   3  MUSAN noise manifests + fbank (only with --musan true)
#   4  BPE model (sentencepiece unigram) on the training transcripts
#
# Outputs go to --data-dir (default data/<corpus>): manifests/, fbank/, lang_bpe_<N>/.
set -euo pipefail

corpus=synth            # synth | librispeech
stage=0                 # first stage to run
stop_stage=100          # last stage to run
dl_dir=download         # where corpora are (or will be) downloaded
data_dir=               # default: data/$corpus
nj=2                    # parallel jobs
vocab_size=500          # BPE vocabulary size
speed_perturb=false     # add 0.9x and 1.1x copies of the training parts
musan=false             # prepare MUSAN for noise mixing (librispeech recipes)
skip_bad_audio=false    # skip (and count) unreadable audio instead of stopping
full_libri=false        # librispeech: add train-clean-360 and train-other-500
# synth corpus size and seed
synth_train_hours=2     # hours of labeled training audio
synth_unlabeled_hours=2 # hours of unlabeled training audio
synth_seed=42           # the corpus is a function of this seed

options="corpus stage stop_stage dl_dir data_dir nj vocab_size speed_perturb musan skip_bad_audio
 full_libri synth_train_hours synth_unlabeled_hours synth_seed"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/local/parse_options.sh" "$@"
python=${PYTHON:-python3}
data_dir=${data_dir:-data/$corpus}
manifests=$data_dir/manifests
fbank=$data_dir/fbank
lang_dir=$data_dir/lang_bpe_${vocab_size}

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (prepare.sh:${BASH_LINENO[0]}) $*"; }

case "$corpus" in
  synth)
    corpus_dir=$dl_dir/SynthSpeech
    prefix=synth
    train_parts="train"
    eval_parts="dev test-clean test-other"
    unlabeled_parts="train-unlabeled" ;;
  librispeech)
    corpus_dir=$dl_dir/LibriSpeech
    prefix=librispeech
    train_parts="train-clean-100"
    [ "$full_libri" = true ] && train_parts="train-clean-100 train-clean-360 train-other-500"
    eval_parts="dev-clean dev-other test-clean test-other"
    unlabeled_parts="" ;;
  *) echo "$0: --corpus must be synth or librispeech, not '$corpus'" >&2; exit 1 ;;
esac
all_parts="$train_parts $eval_parts $unlabeled_parts"
sp_factors=""; [ "$speed_perturb" = true ] && sp_factors="0.9 1.1"
skip_flag=""; [ "$skip_bad_audio" = true ] && skip_flag="--skip-bad-audio"

log "corpus=$corpus data_dir=$data_dir stages $stage..$stop_stage"

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  if [ "$corpus" = synth ]; then
    log "Stage 0: synthesize the embedded corpus into $corpus_dir"
    $python "$here/local/make_synth_corpus.py" --corpus-dir "$corpus_dir" \
      --train-hours "$synth_train_hours" --unlabeled-hours "$synth_unlabeled_hours" \
      --seed "$synth_seed" --num-jobs "$nj"
  else
    log "Stage 0: LibriSpeech parts in $corpus_dir (downloading missing ones)"
    for part in $all_parts; do
      if [ -d "$corpus_dir/$part" ]; then log "  $part: present, skipping"; continue; fi
      $python -c "from lhotse.recipes import download_librispeech as d; d('$dl_dir', dataset_parts='$part')"
    done
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: manifests -> $manifests"
  $python "$here/local/prepare_manifests.py" --corpus-dir "$corpus_dir" --output-dir "$manifests" \
    --parts $all_parts --prefix $prefix --unlabeled-parts $unlabeled_parts $skip_flag
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: fbank features -> $fbank"
  $python "$here/local/compute_fbank.py" --manifest-dir "$manifests" --output-dir "$fbank" \
    --prefix $prefix --parts $train_parts --speed-perturb $sp_factors --num-jobs "$nj"
  $python "$here/local/compute_fbank.py" --manifest-dir "$manifests" --output-dir "$fbank" \
    --prefix $prefix --parts $eval_parts $unlabeled_parts --num-jobs "$nj"
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  if [ "$musan" = true ]; then
    log "Stage 3: MUSAN manifests and fbank"
    $python "$here/local/prepare_musan.py" --dl-dir "$dl_dir" --manifest-dir "$manifests" \
      --output-dir "$fbank" --num-jobs "$nj"
  else
    log "Stage 3: MUSAN not requested (--musan true to prepare it), skipping"
  fi
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: BPE model (vocab $vocab_size) -> $lang_dir"
  sups=""
  for part in $train_parts; do sups="$sups $manifests/${prefix}_supervisions_${part}.jsonl.gz"; done
  $python "$here/local/train_bpe.py" --supervisions $sups --lang-dir "$lang_dir" \
    --vocab-size "$vocab_size"
fi

log "Done: stages $stage..$stop_stage of corpus $corpus"
