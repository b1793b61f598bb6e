"""Batches for transducer training and decoding from lhotse cuts with precomputed fbank."""

from __future__ import annotations

import itertools
import logging
import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from lhotse import CutSet, MonoCut, load_manifest_lazy
from lhotse.cut import MixedCut
from lhotse.dataset import DynamicBucketingSampler, SpecAugment
from lhotse.dataset.collation import collate_audio, collate_features
from torch import Tensor

from mvq_kd.cli import option
from mvq_kd.fields import SAMPLE_RATE
from mvq_kd.model.encoder import FBANK_FRAME_SHIFT, ConformerEncoder
from mvq_kd.utils import write_lines


class AsrDataset(torch.utils.data.Dataset):
    """Map a :class:`CutSet` (one sampler batch) to padded features and texts.

    Returns a dict with:
        ``features``: ``(B, T, F)`` float32 fbank, padded at the end;
        ``feature_lens``: ``(B,)`` int64 valid frames;
        ``texts``: list of B transcripts (``None`` for unlabeled cuts);
        ``cuts``: the cuts in batch order (longest first);
        ``speech_feature_lens``: ``(B,)`` int64 frames of each cut's speech track (a
        noise-mixed cut is padded with noise to the longest cut of the batch; frame-level
        teacher targets cover only its speech);
        for each name in ``temporal_fields`` (e.g. ``codebook_indexes``):
        ``<name>`` ``(B, T', ...)`` padded with ``-100`` (int64 for integer arrays) and
        ``<name>_lens`` ``(B,)``, read from the speech track of noise-mixed cuts;
        with ``teacher_input`` (``"fbank"`` or ``"audio"``): ``teacher_inputs`` (the
        speech tracks' fbank ``(B, T, F)`` or 16 kHz audio ``(B, S)``, without noise
        or SpecAugment) and ``teacher_input_lens`` ``(B,)``, for a teacher run on the fly.

    With ``tempo_perturb = a > 0`` each cut's features are resampled in time by a factor
    drawn uniformly from ``[1 - a, 1 + a]`` (:func:`perturb_tempo`, the global ``random``
    module) before the input transforms; frame-aligned teacher targets would no longer
    match, so it excludes ``temporal_fields`` and ``teacher_input``.
    """

    def __init__(
        self,
        cut_transforms: Sequence[Callable[[CutSet], CutSet]] = (),
        input_transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]] = (),
        temporal_fields: Sequence[str] = (),
        teacher_input: Optional[str] = None,
        tempo_perturb: float = 0.0,
    ) -> None:
        if teacher_input not in (None, "fbank", "audio"):
            raise ValueError(f"teacher_input must be fbank or audio, got {teacher_input!r}")
        if tempo_perturb and (temporal_fields or teacher_input):
            raise ValueError(
                "Tempo perturbation moves frames away from frame-aligned teacher targets "
                f"({list(temporal_fields) or teacher_input}): use --tempo-perturb 0 with "
                "frame-level or layer-wise KD"
            )
        self.cut_transforms = list(cut_transforms)
        self.input_transforms = list(input_transforms)
        self.temporal_fields = list(temporal_fields)
        self.teacher_input = teacher_input
        self.tempo_perturb = tempo_perturb

    def set_epoch(self, epoch: int) -> None:
        """Pass the (1-based) epoch to the transforms that change with it (e.g.
        :class:`NoiseMix`'s warm-up). Call it before the epoch's loader iterator is created:
        worker processes get a copy of the dataset then."""
        for transform in self.cut_transforms:
            if hasattr(transform, "set_epoch"):
                transform.set_epoch(epoch)

    def __getitem__(self, cuts: CutSet) -> Dict:
        cuts = cuts.sort_by_duration(ascending=False)
        for transform in self.cut_transforms:
            cuts = transform(cuts)
        features, feature_lens = collate_features(cuts)
        if self.tempo_perturb:
            a = self.tempo_perturb
            factors = torch.tensor([random.uniform(1 - a, 1 + a) for _ in range(len(cuts))])
            features, feature_lens = perturb_tempo(features, feature_lens, factors)
        for transform in self.input_transforms:
            features = transform(features)
        texts = [c.supervisions[0].text if c.supervisions else None for c in cuts]
        batch = {
            "features": features,
            "feature_lens": feature_lens.long(),
            "texts": texts,
            "cuts": list(cuts),
            "speech_feature_lens": torch.tensor(
                [speech_track(c).num_frames for c in cuts], dtype=torch.int64
            ),
        }
        for name in self.temporal_fields:
            batch[name], batch[f"{name}_lens"] = collate_temporal_field(cuts, name)
        if self.teacher_input is not None:
            speech = CutSet.from_cuts(speech_track(c) for c in cuts)
            batch["teacher_inputs"], batch["teacher_input_lens"] = collate_teacher_inputs(
                speech, self.teacher_input
            )
        return batch


def perturb_tempo(features: Tensor, lens: Tensor, factors: Tensor) -> Tuple[Tensor, Tensor]:
    """Change the tempo of each utterance of a batch in the feature domain.

    Row ``i``'s ``lens[i]`` valid frames are linearly interpolated to
    ``round(lens[i] / factors[i])`` frames (factor 1.1: 10% faster speech), which keeps
    the spectrum (pitch and formants) as a change of speaking rate does.

    Args:
        features: ``(B, T, F)`` padded features.
        lens: ``(B,)`` valid frames.
        factors: ``(B,)`` tempo factors, > 0.

    Returns:
        ``(B, T2, F)`` features padded with zeros (``T2`` the longest new length) and the
        ``(B,)`` int64 new lengths.
    """
    if (factors <= 0).any():
        raise ValueError(f"tempo factors must be > 0, got {factors.tolist()}")
    new_lens = (lens.double() / factors.double()).round().clamp(min=1).long()
    out = features.new_zeros(features.size(0), int(new_lens.max()), features.size(2))
    for i, (n, m) in enumerate(zip(lens.tolist(), new_lens.tolist())):
        x = features[i, :n].t().unsqueeze(0)  # (1, F, n)
        y = torch.nn.functional.interpolate(x, size=m, mode="linear", align_corners=False)
        out[i, :m] = y[0].t()
    return out, new_lens


def collate_teacher_inputs(cuts: CutSet, input_type: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """A teacher's batch: 16 kHz audio ``(B, S)`` (``input_type="audio"``) or fbank
    ``(B, T, F)`` (``"fbank"``), and ``(B,)`` int64 lengths. Errors name the cuts."""
    try:
        if input_type == "audio":
            x, x_lens = collate_audio(cuts.resample(SAMPLE_RATE))
        else:
            x, x_lens = collate_features(cuts)
    except Exception as e:  # name the cuts: lhotse's errors often do not
        raise RuntimeError(
            f"Cannot load the {input_type} of cuts {[c.id for c in cuts][:5]}: {e}"
        ) from e
    return x, x_lens.long()


def speech_track(cut) -> MonoCut:
    """The cut itself, or for a cut mixed with noise (:class:`NoiseMix`) its first track:
    the original speech, which carries the custom fields."""
    if isinstance(cut, MixedCut):
        return cut.tracks[0].cut
    return cut


def collate_temporal_field(cuts: CutSet, name: str, pad_value: int = -100):
    """Pad the temporal array field ``name`` of each cut's speech track.

    Returns ``(B, T', ...)`` (int64 for integer arrays, float32 otherwise) padded with
    ``pad_value`` and ``(B,)`` int64 lengths. A cut without the field is an error that
    names it.
    """
    arrays = []
    for cut in cuts:
        speech = speech_track(cut)
        if not speech.has_custom(name):
            raise ValueError(
                f"Cut {cut.id} has no {name!r} field: use the manifests written by "
                "prepare.sh stage 7 (data/<corpus>/mvq/) for this training"
            )
        arr = torch.from_numpy(speech.load_custom(name))
        arrays.append(arr.long() if not arr.is_floating_point() else arr.float())
    lens = torch.tensor([a.shape[0] for a in arrays], dtype=torch.int64)
    out = arrays[0].new_full((len(arrays), int(lens.max()), *arrays[0].shape[1:]), pad_value)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    return out, lens


@dataclass
class DataConfig:
    """Where the cuts are and how they are batched and augmented.

    Attributes:
        train_cuts: cut manifests combined into the training set.
        valid_cuts: cut manifests for the validation loss.
        max_duration: seconds of audio per batch (per rank).
        num_buckets: buckets of the dynamic bucketing sampler.
        spec_augment: apply SpecAugment to training batches.
        time_warp_factor: SpecAugment time warp (0 turns it off; it misaligns
            frame-level distillation targets).
        tempo_perturb: on-the-fly tempo perturbation (:func:`perturb_tempo`): factors
            uniform in ``1 +- tempo_perturb`` (0: off; it misaligns frame-level targets).
        musan_cuts: optional MUSAN cuts to mix into training cuts.
        musan_prob, musan_snr: share of the training cuts mixed with them, at an SNR
            (dB) drawn uniformly from ``musan_snr``.
        musan_warmup_epochs, musan_warmup_prob, musan_warmup_snr: the first
            ``musan_warmup_epochs`` epochs mix at the warm-up share and SNR instead (a
            model that meets loud noise from the start can stay on the blank plateau).
        num_workers: dataloader worker processes.
        min_duration, max_cut_duration: training cuts outside are dropped.
        seed: sampler seed (batches are a function of seed and epoch).
        unlabeled_cuts: cut manifests without transcripts (distillation only), mixed
            into the training cuts (see :func:`training_cuts`).
        unlabeled_ratio: unlabeled cuts per labeled cut in an epoch.
    """

    train_cuts: List[Path]
    valid_cuts: List[Path]
    max_duration: float = option(200.0, "seconds of audio per batch (per rank)")
    num_buckets: int = option(10, "buckets of the dynamic bucketing sampler")
    spec_augment: bool = option(True, "SpecAugment on training batches")
    time_warp_factor: int = option(80, "SpecAugment time warp (0 turns time warp off)")
    tempo_perturb: float = option(
        0.0,
        "tempo perturbation of the training cuts, on the fly in the feature domain: each "
        "cut's frames resampled by a factor drawn uniformly from 1 +- this (0.2: 0.8-1.2x "
        "the speaking rate; 0: off). Not with frame-level or layer-wise KD",
    )
    musan_cuts: Optional[Path] = option(
        None,
        "noise cuts mixed into the training cuts (--musan-prob of them, at --musan-snr; "
        "MUSAN, or data/synth/fbank/noise_cuts_all.jsonl.gz)",
        flag="--musan",
    )
    musan_prob: float = option(0.5, "share of the training cuts mixed with --musan noise")
    musan_snr: Tuple[float, float] = option(
        (10.0, 20.0), "SNR range (dB) of the --musan noise, drawn uniformly per cut", nargs=2
    )
    musan_warmup_epochs: int = option(
        0,
        "the first this many epochs mix --musan noise at --musan-warmup-prob and "
        "--musan-warmup-snr instead of --musan-prob and --musan-snr (0: no warm-up)",
    )
    musan_warmup_prob: float = option(
        0.5, "share of the training cuts mixed with --musan noise during the warm-up epochs"
    )
    musan_warmup_snr: Tuple[float, float] = option(
        (10.0, 20.0), "SNR range (dB) of the --musan noise during the warm-up epochs", nargs=2
    )
    num_workers: int = option(2, "dataloader worker processes")
    min_duration: float = 0.5
    max_cut_duration: float = 20.0
    seed: int = 42
    unlabeled_cuts: List[Path] = field(default_factory=list)
    unlabeled_ratio: float = option(
        1.0,
        "unlabeled cuts per labeled cut in an epoch (the unlabeled cuts are reshuffled every "
        "epoch)",
    )

    def __post_init__(self) -> None:
        if self.unlabeled_ratio <= 0:
            raise ValueError(f"unlabeled_ratio must be > 0, got {self.unlabeled_ratio}")
        for name in ("musan", "musan_warmup"):
            prob, snr = getattr(self, f"{name}_prob"), getattr(self, f"{name}_snr")
            if not 0 < prob <= 1 or snr[0] > snr[1]:
                raise ValueError(
                    f"{name}_prob must be in (0, 1] and {name}_snr (low, high), got {prob} "
                    f"and {snr}"
                )
        if self.musan_warmup_epochs < 0:
            raise ValueError(f"musan_warmup_epochs must be >= 0, got {self.musan_warmup_epochs}")
        if not 0 <= self.tempo_perturb < 0.5:
            raise ValueError(f"tempo_perturb must be in [0, 0.5), got {self.tempo_perturb}")


def add_manifest_args(group) -> None:
    """``--manifest-dir`` and ``--prefix``: the folder and name prefix of the cut manifests
    (:func:`mvq_kd.fields.cuts_path`) a program reads, shared by ``train.py`` and
    ``decode.py``. ``group``: an ``argparse`` parser or argument group."""
    group.add_argument(
        "--manifest-dir",
        type=Path,
        default=Path("data/synth/fbank"),
        help="folder of the cut manifests",
    )
    group.add_argument("--prefix", default="synth", help="cut manifest prefix (synth, librispeech)")


def load_cuts(paths: Sequence[Path]) -> CutSet:
    """Lazily open and concatenate cut manifests, with a clear error for missing ones."""
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"No cut manifest {path}: run ./prepare.sh first")
    cut_sets = [load_manifest_lazy(p) for p in paths]
    return cut_sets[0] if len(cut_sets) == 1 else CutSet.mux(*cut_sets)


class UnlabeledStream:
    """The unlabeled cuts as an endless stream, in a new order for every epoch.

    An epoch ends with its labeled cuts, so it takes about ``unlabeled_ratio`` x their
    count from the start of this stream: reshuffled per epoch (:meth:`set_epoch`), a ratio
    below the unlabeled/labeled count ratio reaches other unlabeled cuts each epoch instead
    of the same first ones. The order is a function of ``seed``, the epoch and the pass,
    so a resumed epoch sees the same cuts. Shuffling streams through ``buffer_size`` cuts
    (lhotse's lazy shuffle): shuffle an unlabeled manifest much larger than that once on
    disk, or each epoch starts within its first ``buffer_size`` cuts.
    """

    def __init__(self, cuts: CutSet, seed: int, buffer_size: int = 20000) -> None:
        if next(iter(cuts), None) is None:  # an endless stream of nothing would never end
            raise ValueError("The unlabeled cut manifests (--unlabeled-parts) hold no cut")
        self.cuts, self.seed, self.buffer_size = cuts, seed, buffer_size
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        for n in itertools.count():
            rng = random.Random(f"unlabeled-{self.seed}-{self.epoch}-{n}")
            yield from self.cuts.shuffle(rng=rng, buffer_size=self.buffer_size)


@dataclass
class TrainingCuts:
    """Attributes:
    cuts: the training cuts of an epoch (lazy: iterate once per epoch).
    unlabeled: the unlabeled stream inside ``cuts``, if any; :meth:`set_epoch` reorders it.
    """

    cuts: CutSet
    unlabeled: Optional[UnlabeledStream] = None

    def set_epoch(self, epoch: int) -> None:
        if self.unlabeled is not None:
            self.unlabeled.set_epoch(epoch)


def training_cuts(cfg: DataConfig) -> TrainingCuts:
    """The training cuts of an epoch: every labeled cut and, with ``unlabeled_cuts``,
    about ``unlabeled_ratio`` unlabeled cuts per labeled one, interleaved at random
    (lhotse ``mux``) from an :class:`UnlabeledStream` (cycled, in a new order each
    epoch: a ratio above their count ratio repeats them). The epoch ends with the
    labeled cuts."""
    labeled = load_cuts(cfg.train_cuts)
    if not cfg.unlabeled_cuts:
        return TrainingCuts(labeled)
    unlabeled = UnlabeledStream(load_cuts(cfg.unlabeled_cuts), cfg.seed)
    cuts = CutSet.mux(
        labeled,
        CutSet(unlabeled),
        weights=[1.0, cfg.unlabeled_ratio],
        stop_early=True,
        seed=cfg.seed,
    )
    return TrainingCuts(cuts, unlabeled)


class NoiseMix:
    """Mix noise cuts (e.g. MUSAN, with precomputed features) into a batch's cuts.

    Unlike lhotse's ``CutMix``, which keeps one RNG across batches, the choices are
    drawn from the global ``random`` module, so a dataset that seeds it per batch
    (:class:`SeededAsrDataset`) mixes reproducibly, also after resuming.

    With ``warmup_epochs = N > 0``, epochs 1 to N (as set by :meth:`set_epoch`) mix
    with probability ``warmup_p`` at ``warmup_snr`` instead of ``p`` and ``snr``.
    """

    def __init__(
        self,
        noise: CutSet,
        p: float = 0.5,
        snr: Tuple[float, float] = (10.0, 20.0),
        warmup_epochs: int = 0,
        warmup_p: float = 0.5,
        warmup_snr: Tuple[float, float] = (10.0, 20.0),
    ) -> None:
        if len(noise) == 0:
            raise ValueError("The noise cut set is empty")
        self.noise, self.p, self.snr = noise, p, snr
        self.warmup_epochs, self.warmup_p, self.warmup_snr = warmup_epochs, warmup_p, warmup_snr
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        """Mix as epoch ``epoch`` (1-based) does from the next batch on."""
        self.epoch = epoch

    @property
    def setting(self) -> Tuple[float, Tuple[float, float]]:
        """The mixing probability and SNR range (dB) of the current epoch."""
        if self.epoch <= self.warmup_epochs:
            return self.warmup_p, self.warmup_snr
        return self.p, self.snr

    def __call__(self, cuts: CutSet) -> CutSet:
        p, snr = self.setting
        return cuts.mix(
            cuts=self.noise,
            duration=max(c.duration for c in cuts),
            snr=snr,
            mix_prob=p,
            preserve_id="left",  # the mixed cut keeps the speech cut's id
            seed=random.Random(random.getrandbits(64)),
        ).to_eager()


def feature_stats(cuts: CutSet, max_cuts: int = 500) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-bin mean and standard deviation (each ``(F,)``) over the first ``max_cuts``
    cuts' features (global CMVN statistics). Cuts with non-finite features are left
    out with a warning."""
    total, total_sq, frames = None, None, 0
    for cut in itertools.islice(cuts, max_cuts):
        feats = torch.from_numpy(cut.load_features()).double()
        if not torch.isfinite(feats).all():
            logging.warning(f"Cut {cut.id} has non-finite features: left out of the statistics")
            continue
        total = feats.sum(0) if total is None else total + feats.sum(0)
        total_sq = (feats**2).sum(0) if total_sq is None else total_sq + (feats**2).sum(0)
        frames += feats.shape[0]
    if not frames:
        raise ValueError("No features to compute normalization statistics from")
    mean = total / frames
    std = (total_sq / frames - mean**2).clamp(min=0).sqrt()
    return mean.float(), std.float()


def train_dataset(
    cfg: DataConfig, temporal_fields: Sequence[str] = (), teacher_input: Optional[str] = None
) -> AsrDataset:
    """Training batches: noise mixing and SpecAugment as configured, plus the given
    frame-level teacher targets (see :class:`AsrDataset`)."""
    cut_transforms = []
    if cfg.musan_cuts is not None:
        (low, high), p = cfg.musan_snr, cfg.musan_prob
        warmup = ""
        if cfg.musan_warmup_epochs:
            (wlow, whigh), wp = cfg.musan_warmup_snr, cfg.musan_warmup_prob
            warmup = (
                f" after {cfg.musan_warmup_epochs} warm-up epoch(s) at p={wp:g}, "
                f"SNR {wlow:g}-{whigh:g} dB"
            )
        logging.info(
            f"Mixing noise from {cfg.musan_cuts} (p={p:g}, SNR {low:g}-{high:g} dB{warmup})"
        )
        noise = load_manifest_lazy(cfg.musan_cuts).to_eager()
        cut_transforms.append(
            NoiseMix(
                noise,
                p=p,
                snr=(low, high),
                warmup_epochs=cfg.musan_warmup_epochs,
                warmup_p=cfg.musan_warmup_prob,
                warmup_snr=tuple(cfg.musan_warmup_snr),
            )
        )
    input_transforms = []
    if cfg.spec_augment:
        input_transforms.append(
            SpecAugment(
                time_warp_factor=cfg.time_warp_factor,
                num_frame_masks=10,
                features_mask_size=27,
                num_feature_masks=2,
                frames_mask_size=100,
            )
        )
    return AsrDataset(
        cut_transforms, input_transforms, temporal_fields, teacher_input, cfg.tempo_perturb
    )


def make_sampler(
    cuts: CutSet,
    cfg: DataConfig,
    shuffle: bool,
    world_size: int = 1,
    rank: int = 0,
) -> DynamicBucketingSampler:
    """Batches of at most ``cfg.max_duration`` seconds from ``cfg.num_buckets`` duration
    buckets. Every cut is in a batch every epoch: partial batches are kept (with
    ``drop_last`` a small corpus lost a batch per bucket, and at a ``max_duration`` above a
    bucket's duration every batch), and with several ranks lhotse splits the last batches so
    that every rank takes the same number of steps."""
    num_buckets = cfg.num_buckets
    while True:
        try:
            return DynamicBucketingSampler(
                cuts,
                max_duration=cfg.max_duration,
                num_buckets=num_buckets,
                shuffle=shuffle,
                drop_last=False,
                seed=cfg.seed,
                world_size=world_size,
                rank=rank,
            )
        except AssertionError as e:  # lhotse estimates the buckets from the (filtered) cuts
            found = re.search(r"number of cuts \((\d+)\)", str(e))
            if not found:
                raise
            num_cuts = int(found.group(1))
            if num_cuts == 0:
                raise ValueError(
                    "No cut to batch: the manifests are empty or the filter dropped every cut "
                    f"(durations outside {cfg.min_duration}-{cfg.max_cut_duration} s, or fewer "
                    "encoder frames than BPE tokens)"
                ) from None
            logging.warning(
                f"Only {num_cuts} cut(s) to batch, fewer than --num-buckets {num_buckets}: "
                f"using {num_cuts} bucket(s)"
            )
            num_buckets = num_cuts


def make_loader(
    dataset: AsrDataset, sampler, num_workers: int, seed: int = 0
) -> torch.utils.data.DataLoader:
    """A loader over sampler batches. It has its own RNG for worker seeds, so creating
    an iterator does not consume the global torch RNG (needed for exact resume)."""
    return torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )


def load_bpe(path: Path, vocab_size: int):
    """The SentencePiece model at ``path``, checked against the model's ``vocab_size``."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    if sp.vocab_size() != vocab_size:
        raise ValueError(
            f"BPE model {path} has {sp.vocab_size()} tokens but the model "
            f"config says vocab_size={vocab_size}"
        )
    return sp


class CutFilter:
    """Keep training cuts that the transducer can learn; count and log the others.

    A cut is dropped when its duration is outside ``[min_duration, max_duration]``, or
    when it has fewer encoder frames (after 4x subsampling) than BPE tokens: the
    RNN-T loss emits at most one symbol per frame.
    """

    def __init__(
        self, sp, min_duration: float, max_duration: float, frame_shift: float = FBANK_FRAME_SHIFT
    ):
        self.sp = sp
        self.min_duration, self.max_duration = min_duration, max_duration
        self.frame_shift = frame_shift
        self.num_dropped: Dict[str, int] = {"duration": 0, "too_few_frames": 0}
        self.dropped: List[str] = []  # "<cut id> <reason>" lines since reset()

    def reset(self) -> None:
        """Forget the dropped cuts (a new epoch)."""
        self.num_dropped = {k: 0 for k in self.num_dropped}
        self.dropped = []

    def write(self, path: Path) -> None:
        """The dropped cuts, one ``<cut id> <reason>`` line each."""
        write_lines(path, self.dropped)

    def _drop(self, cut, kind: str, why: str) -> bool:
        self.num_dropped[kind] += 1
        self.dropped.append(f"{cut.id} {why}")
        return False

    def __call__(self, cut) -> bool:
        if not self.min_duration <= cut.duration <= self.max_duration:
            return self._drop(
                cut, "duration", f"duration {cut.duration:.2f} s outside "
                f"{self.min_duration}-{self.max_duration} s",
            )  # fmt: skip
        text = cut.supervisions[0].text if cut.supervisions else None
        if text:
            num_frames = int(round(cut.duration / self.frame_shift))
            enc_frames = int(ConformerEncoder.output_lengths(torch.tensor([num_frames]))[0])
            num_tokens = len(self.sp.encode(text))
            if enc_frames < num_tokens:
                why = f"{enc_frames} encoder frames < {num_tokens} tokens"
                return self._drop(cut, "too_few_frames", why)
        return True


class ResumableSampler(torch.utils.data.Sampler):
    """Wrap a lhotse sampler so that an iteration can start after ``skip`` batches.

    lhotse's samplers are deterministic given their seed and epoch, so skipping the
    batches consumed before a checkpoint resumes with exactly the next batch.
    """

    def __init__(self, sampler) -> None:
        self.sampler = sampler
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[CutSet]:
        # islice calls iter() once: lhotse samplers restart when iter() is called again.
        skip, self.skip = self.skip, 0
        return itertools.islice(self.sampler, skip, None)


class SeededAsrDataset(AsrDataset):
    """An :class:`AsrDataset` whose random augmentation is a function of the batch.

    The torch/python RNGs are re-seeded from the batch's cut ids (inside a forked RNG
    state), so augmentation does not depend on worker count or on resumption.
    """

    def __init__(self, base: AsrDataset, seed: int) -> None:
        super().__init__(
            base.cut_transforms,
            base.input_transforms,
            base.temporal_fields,
            base.teacher_input,
            base.tempo_perturb,
        )
        self.seed = seed

    def __getitem__(self, cuts: CutSet) -> Dict:
        batch_seed = zlib.crc32(" ".join(sorted(c.id for c in cuts)).encode()) ^ self.seed
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_seed)
            random.seed(batch_seed)
            try:
                return super().__getitem__(cuts)
            finally:
                random.setstate(py_state)


def tokenize(sp, texts: List[Optional[str]], device: torch.device) -> Tuple[Tensor, Tensor]:
    """BPE ids of a batch: ``(B, S)`` int64 padded with 0, and ``(B,)`` lengths."""
    ids = [sp.encode(t) if t else [] for t in texts]
    lens = torch.tensor([len(i) for i in ids], dtype=torch.int64)
    y = torch.zeros(len(ids), max(1, int(lens.max())), dtype=torch.int64)
    for i, seq in enumerate(ids):
        y[i, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
    return y.to(device), lens.to(device)
