#!/usr/bin/env bash
# Data preparation for the mvq_kd recipes (icefall style).
#
#   ./prepare.sh                                  # embedded synthetic corpus, all stages
#   ./prepare.sh --corpus librispeech --dl-dir /data/download
#   ./prepare.sh --corpus librispeech --parts "dev-clean test-clean"   # only these parts
#   ./prepare.sh --corpus lhotse --src-manifest-dir my/manifests --prefix my \
#     --train-parts train --dev-parts dev --test-parts test      # your own corpus
#   ./prepare.sh --stage 2 --stop-stage 3         # only some stages
#
# Stages (each logs what it does and skips work that is already finished):
#   0  corpus: synthesize the embedded corpus (synth) or download LibriSpeech parts
#      missing from --dl-dir (never one that is present; a failed download leaves no file
#      and says what to fetch and where to put it)
#   1  lhotse manifests (validated: bad audio and empty transcripts are reported)
#   2  80-dim fbank features (LilcomChunkyWriter), optional speed perturbation
#   3  noise for training-time mixing: MUSAN manifests + fbank (librispeech, only with
#      --musan true); synthetic coloured noise (synth, always: the MUSAN stand-in)
#   4  BPE model (sentencepiece unigram) on the training transcripts
# MVQ-KD stages (need a teacher: --stop-stage 7 and the --teacher-* options):
#   5  teacher embeddings of --mvq-num-cuts random training cuts
#   6  multi-codebook quantizer (--num-codebooks bytes per teacher frame)
#   7  codebook indexes of every training and unlabeled cut
#      -> <data-dir>/mvq/<prefix>_cuts_<part>.jsonl.gz
#      (sharded and resumable; run it under torchrun for several GPUs)
# Sequence-level KD stage (needs a train.py teacher: --teacher-model, --teacher-epoch):
#   8  the teacher's N-best lists (modified beam search, --nbest-beam, --nbest) of every
#      training and unlabeled cut of --nbest-input-dir (default: the fbank cuts; the MVQ
#      cuts of stage 7 for a run that combines MVQ-KD and sequence-level KD)
#      -> <data-dir>/nbest/<prefix>_cuts_<part>.jsonl.gz (beside the transcripts, which
#      stay as they are; sharded and resumable)
#
# Outputs go to --data-dir (default data/<prefix>: data/synth, data/librispeech):
# manifests/, fbank/, lang_bpe_<N>/, mvq/, nbest/. --parts: a part that is not among the
# recipe's is a training part when its name starts with "train", else an evaluation part.
set -euo pipefail

corpus=synth            # synth | librispeech | lhotse (the lhotse manifests of any corpus)
stage=0                 # first stage to run
stop_stage=4            # last stage to run (5-7: MVQ, need a teacher)
dl_dir=download         # where corpora are (or will be) downloaded
data_dir=               # default: data/<prefix> (data/synth, data/librispeech)
nj=2                    # parallel jobs
vocab_size=500          # BPE vocabulary size
speed_perturb=false     # add 0.9x and 1.1x copies of the training parts
musan=false             # prepare MUSAN for noise mixing (librispeech recipes)
skip_bad_audio=false    # stages 1-2: skip and list bad audio (<prefix>_bad_audio_<part>.txt)
validate_audio=         # stage 1: full (decode each file) | header (default: synth header, else full)
text_norm=upper         # transcripts: upper (upper case, no punctuation) | none (as written)
full_libri=false        # librispeech: add train-clean-360 and train-other-500
unlabeled_libri=        # librispeech: parts without transcripts, e.g. "train-clean-360 train-other-500"
parts=                  # only these parts, e.g. "dev-clean test-clean" (default: the recipe's)
librispeech_url=https://www.openslr.org/resources/12  # archives of missing parts (or a mirror)
# --corpus lhotse: your own corpus as lhotse manifests
src_manifest_dir=       # folder of <prefix>_{recordings,supervisions}_<part>.jsonl.gz
prefix=                 # their name prefix (synth and librispeech: the corpus name)
train_parts=            # e.g. "train"
dev_parts=              # e.g. "dev" (validation)
test_parts=             # e.g. "test"
# synth corpus size and seed
synth_train_hours=2     # hours of labeled training audio
synth_unlabeled_hours=2 # hours of unlabeled training audio
synth_teacher_hours=6   # hours of labeled audio only the teacher learns from (train-teacher)
synth_seed=42           # the corpus is a function of this seed
synth_noise_files=200   # 10 s files of synthetic training noise (stage 3)
# MVQ-KD (stages 5-7)
teacher_kind=conformer  # conformer (a train.py experiment) | hf (transformers / fairseq .pt)
teacher_model=          # experiment folder, transformers name/folder or fairseq HuBERT .pt
teacher_layer=          # 1-based teacher layer (HuBERT-XL in the paper: 36)
teacher_epoch=0         # conformer teacher: last epoch
teacher_avg=1           # conformer teacher: epochs averaged
num_codebooks=8         # bytes per teacher frame
mvq_num_cuts=1000       # training cuts whose embeddings train the quantizer
quantizer_ridge=        # stage 6: ridge values tried, e.g. "0.01" (default: the quantizer's)
store_embeddings=false  # also store fp16 teacher embeddings (L1/L2 KD baselines)
mvq_dir=                # default: <data-dir>/mvq
# Sequence-level KD (stage 8)
nbest_beam=4            # modified beam search beam of the teacher
nbest=4                 # hypotheses kept per cut (<= nbest_beam)
nbest_input_dir=        # cuts to decode (default: <data-dir>/fbank)
nbest_dir=              # default: <data-dir>/nbest

options="corpus stage stop_stage dl_dir data_dir nj vocab_size speed_perturb musan skip_bad_audio text_norm
 validate_audio  full_libri unlabeled_libri parts librispeech_url src_manifest_dir prefix train_parts dev_parts
 test_parts synth_train_hours synth_unlabeled_hours synth_teacher_hours synth_seed synth_noise_files teacher_kind teacher_model
 teacher_layer teacher_epoch teacher_avg num_codebooks mvq_num_cuts quantizer_ridge store_embeddings mvq_dir
 nbest_beam nbest nbest_input_dir nbest_dir"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/local/parse_options.sh" "$@"
python=${PYTHON:-python3}

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (prepare.sh:${BASH_LINENO[0]}) $*"; }

if [ "$corpus" != lhotse ]; then
  for opt in src_manifest_dir prefix train_parts dev_parts test_parts; do
    if [ -n "${!opt}" ]; then
      echo "$0: --${opt//_/-} is an option of --corpus lhotse (for $corpus use --parts)" >&2; exit 1
    fi
  done
fi
case "$corpus" in
  lhotse)
    if [ -z "$src_manifest_dir" ] || [ -z "$prefix" ] || [ -z "$train_parts$dev_parts$test_parts" ]; then
      echo "$0: --corpus lhotse needs --src-manifest-dir, --prefix and --train-parts, --dev-parts, --test-parts" >&2
      exit 1
    fi
    if [ ! -d "$src_manifest_dir" ]; then
      echo "$0: --src-manifest-dir $src_manifest_dir is not a folder" >&2; exit 1
    fi
    corpus_dir=$src_manifest_dir
    eval_parts="$dev_parts $test_parts"
    unlabeled_parts=""
    teacher_parts="" ;;
  synth)
    corpus_dir=$dl_dir/SynthSpeech
    prefix=synth
    train_parts="train"
    eval_parts="dev test-clean test-other"
    unlabeled_parts="train-unlabeled"
    teacher_parts="train-teacher" ;;
  librispeech)
    corpus_dir=$dl_dir/LibriSpeech
    prefix=librispeech
    train_parts="train-clean-100"
    [ "$full_libri" = true ] && train_parts="train-clean-100 train-clean-360 train-other-500"
    eval_parts="dev-clean dev-other test-clean test-other"
    unlabeled_parts="$unlabeled_libri"
    teacher_parts=""
    for part in $unlabeled_parts; do
      case " $train_parts " in *" $part "*)
        echo "$0: --unlabeled-libri $part is also a labeled training part (drop it there or use --full-libri false)" >&2
        exit 1 ;;
      esac
    done ;;
  *) echo "$0: --corpus must be synth, librispeech or lhotse, not '$corpus'" >&2; exit 1 ;;
esac
data_dir=${data_dir:-data/$prefix}
manifests=$data_dir/manifests
fbank=$data_dir/fbank
lang_dir=$data_dir/lang_bpe_${vocab_size}
mvq_dir=${mvq_dir:-$data_dir/mvq}
nbest_input_dir=${nbest_input_dir:-$fbank}
nbest_dir=${nbest_dir:-$data_dir/nbest}
if [ -n "$parts" ]; then  # keep the recipe's parts named in --parts, add the others
  keep() { local out="" p; for p in $1; do case " $parts " in *" $p "*) out="$out $p" ;; esac; done; echo $out; }
  recipe_parts=" $train_parts $eval_parts $unlabeled_parts $teacher_parts "
  train_parts=$(keep "$train_parts"); eval_parts=$(keep "$eval_parts")
  unlabeled_parts=$(keep "$unlabeled_parts"); teacher_parts=$(keep "$teacher_parts")
  for p in $parts; do
    case "$recipe_parts" in *" $p "*) continue ;; esac
    case "$p" in train*) train_parts="$train_parts $p" ;; *) eval_parts="$eval_parts $p" ;; esac
  done
fi
all_parts=$(echo $train_parts $eval_parts $unlabeled_parts $teacher_parts)
if [ -z "$validate_audio" ]; then
  validate_audio=full; [ "$corpus" = synth ] && validate_audio=header
fi
sp_factors=""; [ "$speed_perturb" = true ] && sp_factors="0.9 1.1"
skip_flag=""; [ "$skip_bad_audio" = true ] && skip_flag="--skip-bad-audio"

log "corpus=$corpus data_dir=$data_dir stages $stage..$stop_stage"

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  if [ "$corpus" = lhotse ]; then
    log "Stage 0: --corpus lhotse: the audio is where the manifests in $src_manifest_dir say, nothing to fetch"
  elif [ "$corpus" = synth ]; then
    log "Stage 0: synthesize the embedded corpus into $corpus_dir"
    $python "$here/local/make_synth_corpus.py" --corpus-dir "$corpus_dir" \
      --train-hours "$synth_train_hours" --unlabeled-hours "$synth_unlabeled_hours" \
      --teacher-hours "$synth_teacher_hours" \
      --seed "$synth_seed" --num-jobs "$nj"
  else
    log "Stage 0: LibriSpeech parts in $corpus_dir (downloading missing ones)"
    missing=""
    for part in $all_parts; do
      if [ -d "$corpus_dir/$part" ]; then log "  $part: present, skipping"; else missing="$missing $part"; fi
    done
    if [ -n "$missing" ]; then
      $python "$here/local/download_librispeech.py" --dl-dir "$dl_dir" --parts $missing \
        --base-url "$librispeech_url"
    fi
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: manifests -> $manifests"
  if [ "$corpus" = lhotse ]; then
    $python "$here/local/import_lhotse_manifests.py" --src-dir "$src_manifest_dir" \
      --output-dir "$manifests" --parts $all_parts --prefix $prefix $skip_flag \
      --text-norm "$text_norm" --validate-audio "$validate_audio"
  else
    $python "$here/local/prepare_manifests.py" --corpus-dir "$corpus_dir" --output-dir "$manifests" \
      --parts $all_parts --prefix $prefix --unlabeled-parts $unlabeled_parts $skip_flag \
      --text-norm "$text_norm" --validate-audio "$validate_audio"
  fi
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: fbank features -> $fbank"
  if [ -n "$train_parts" ]; then
    $python "$here/local/compute_fbank.py" --manifest-dir "$manifests" --output-dir "$fbank" \
      --prefix $prefix --parts $train_parts --speed-perturb $sp_factors --num-jobs "$nj" $skip_flag
  fi
  other_parts=$(echo $eval_parts $unlabeled_parts $teacher_parts)
  if [ -n "$other_parts" ]; then
    $python "$here/local/compute_fbank.py" --manifest-dir "$manifests" --output-dir "$fbank" \
      --prefix $prefix --parts $other_parts --num-jobs "$nj" $skip_flag
  fi
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  if [ "$corpus" = synth ]; then
    log "Stage 3: synthetic training noise (the MUSAN stand-in) -> $fbank/noise_cuts_all.jsonl.gz"
    $python "$here/local/prepare_synth_noise.py" --noise-dir "$corpus_dir/noise" \
      --output-dir "$fbank" --num-files "$synth_noise_files" --num-jobs "$nj"
  elif [ "$musan" = true ]; then
    log "Stage 3: MUSAN manifests and fbank"
    $python "$here/local/prepare_musan.py" --dl-dir "$dl_dir" --manifest-dir "$manifests" \
      --output-dir "$fbank" --num-jobs "$nj"
  else
    log "Stage 3: MUSAN not requested (--musan true to prepare it), skipping"
  fi
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  if [ -z "$train_parts" ]; then
    log "Stage 4: no training part among the prepared parts, no BPE model to train, skipping"
  else
    log "Stage 4: BPE model (vocab $vocab_size) -> $lang_dir"
    sups=""
    for part in $train_parts; do sups="$sups $manifests/${prefix}_supervisions_${part}.jsonl.gz"; done
    $python "$here/local/train_bpe.py" --supervisions $sups --lang-dir "$lang_dir" \
      --vocab-size "$vocab_size"
  fi
fi

if [ $stop_stage -ge 5 ] && [ $stage -le 7 ]; then
  if [ -z "$teacher_model" ] || [ -z "$teacher_layer" ]; then
    echo "$0: stages 5-7 need --teacher-model and --teacher-layer (see --help)" >&2; exit 1
  fi
  teacher_args="--teacher-kind $teacher_kind --teacher-model $teacher_model
    --teacher-layer $teacher_layer --teacher-epoch $teacher_epoch --teacher-avg $teacher_avg"
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: teacher embeddings of $mvq_num_cuts training cuts -> $mvq_dir/embeddings.pt"
  cuts=""
  for part in $train_parts; do cuts="$cuts $fbank/${prefix}_cuts_${part}.jsonl.gz"; done
  $python "$here/local/extract_teacher_embeddings.py" --cuts $cuts --num-cuts $mvq_num_cuts \
    --output "$mvq_dir/embeddings.pt" $teacher_args
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "Stage 6: quantizer ($num_codebooks bytes per frame) -> $mvq_dir/quantizer.pt"
  $python "$here/local/train_quantizer.py" --embeddings "$mvq_dir/embeddings.pt" \
    --num-codebooks $num_codebooks --output "$mvq_dir/quantizer.pt" \
    ${quantizer_ridge:+--ridge $quantizer_ridge}
fi

if [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  log "Stage 7: codebook indexes of the training and unlabeled cuts -> $mvq_dir"
  # Speed-perturbed copies (_sp0.9, _sp1.1) are cuts of the training manifests too.
  $python "$here/local/compute_codebook_indexes.py" --manifest-dir "$fbank" --prefix $prefix \
    --parts $train_parts $unlabeled_parts --quantizer "$mvq_dir/quantizer.pt" --output-dir "$mvq_dir" \
    --store-embeddings $store_embeddings $teacher_args
fi

if [ $stage -le 8 ] && [ $stop_stage -ge 8 ]; then
  if [ -z "$teacher_model" ] || [ "$teacher_kind" != conformer ]; then
    echo "$0: stage 8 needs a transducer teacher: --teacher-model <train.py experiment>" \
      "--teacher-epoch N [--teacher-avg K] (see --help)" >&2; exit 1
  fi
  log "Stage 8: the teacher's $nbest-best lists (beam $nbest_beam) of the training cuts -> $nbest_dir"
  $python "$here/local/compute_nbest.py" --manifest-dir "$nbest_input_dir" --prefix $prefix \
    --parts $train_parts $unlabeled_parts --output-dir "$nbest_dir" \
    --teacher-model "$teacher_model" --teacher-epoch $teacher_epoch --teacher-avg $teacher_avg \
    --bpe-model "$lang_dir/bpe.model" --beam $nbest_beam --nbest $nbest
fi

log "Done: stages $stage..$stop_stage of corpus $corpus"
