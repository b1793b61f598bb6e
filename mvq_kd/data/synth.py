"""The embedded synthetic speech corpus, written in the LibriSpeech layout.

Speech is synthesized offline with espeak-ng (:mod:`mvq_kd.data.espeak`) from
sentences of a small grammar of everyday English (:mod:`mvq_kd.data.grammar`, ~2,750
word forms, every sentence of the corpus distinct). Each split is
written as ``<corpus_dir>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``
plus ``<speaker>-<chapter>.trans.txt``, exactly like LibriSpeech, so the LibriSpeech
preparation code path reads it.

Splits (all deterministic from the seed):

* ``train``: training voices (6 accents x 80% of the voice variants, rate 140-200 wpm).
* ``dev`` and ``test-clean``: voices seen in training, sentences never seen in training.
* ``test-other``: accents, variants and speaking rates never seen in training, plus
  additive white/pink/brown noise at 5-20 dB SNR.
* ``train-unlabeled``: more audio of new training-like voices. Its transcripts are
  written (so the layout stays LibriSpeech's) but recipes must not train on them.
* ``train-teacher``: labeled audio of further training-like voices that only the teacher
  learns from (with ``train``), as HuBERT learns from far more audio than its students.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from mvq_kd.cli import option
from mvq_kd.data.espeak import ESpeak, Voice
from mvq_kd.data.grammar import generate_sentences
from mvq_kd.fields import SAMPLE_RATE
from mvq_kd.utils import atomic_path

SPLITS = ("train", "dev", "test-clean", "test-other", "train-unlabeled", "train-teacher")

TRAIN_ACCENTS = (
    "en-us",
    "en",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
UNSEEN_ACCENTS = ("en-029", "en-us-nyc")
_WORDS_PER_SECOND = 2.83  # measured, silences included: sizes splits before synthesis


@dataclass
class SynthCorpusConfig:
    """Size and randomness of the synthetic corpus.

    Attributes:
        seed: everything (sentences, voices, noise) is a function of it.
        train_hours: approximate audio duration of ``train``.
        unlabeled_hours: approximate audio duration of ``train-unlabeled``.
        teacher_hours: approximate audio duration of ``train-teacher``.
        dev_utts, test_utts: utterances in ``dev`` and in each test set.
        num_train_speakers: distinct training voices.
        utts_per_chapter: utterances per (speaker, chapter) transcript file.
        min_words, max_words: sentence length range.
        other_snr_db: SNR range of the noise added to ``test-other``.
        splits: which splits to write.
    """

    seed: int = option(42, "everything (sentences, voices, noise) is a function of it")
    train_hours: float = option(2.0, "approximate audio duration of train")
    unlabeled_hours: float = option(2.0, "approximate audio duration of train-unlabeled")
    teacher_hours: float = option(
        6.0, "approximate audio duration of train-teacher (labeled, for the teacher only)"
    )
    dev_utts: int = option(200, "utterances of dev")
    test_utts: int = option(300, "utterances per test set")
    num_train_speakers: int = option(160, "distinct training voices")
    utts_per_chapter: int = 20
    min_words: int = 4
    max_words: int = 18
    other_snr_db: Tuple[float, float] = (5.0, 20.0)
    splits: Sequence[str] = option(
        help="which splits to write",
        default_factory=lambda: list(SPLITS),
        choices=SPLITS,
        nargs="+",
    )

    def __post_init__(self) -> None:
        unknown = set(self.splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"Unknown split(s) {sorted(unknown)}; choose from {SPLITS}")


@dataclass(frozen=True)
class Utterance:
    """One utterance to synthesize (``noise`` is ``(kind, snr_db)`` or ``None``)."""

    utt_id: str
    text: str
    voice: Voice
    noise: Optional[Tuple[str, float]]
    seed: int


def _variants() -> List[str]:
    import espeakng_loader

    vdir = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return sorted(p.name for p in vdir.iterdir() if p.is_file())


def _draw_voice(rng: np.random.Generator, accents, variants, rates, pitches) -> Voice:
    return Voice(
        language=str(rng.choice(accents)),
        variant=str(rng.choice(variants)),
        rate=int(rng.integers(*rates)),
        pitch=int(rng.integers(*pitches)),
        pitch_range=int(rng.integers(20, 90)),
    )


def plan_corpus(cfg: SynthCorpusConfig) -> Dict[str, List[Utterance]]:
    """Decide every utterance of every split (text, voice, noise) without synthesizing.

    Returns:
        split name -> list of utterances, ids in LibriSpeech form ``SPK-CHAPTER-UTT``.
    """
    rng = np.random.default_rng(cfg.seed)
    # Disjoint sentence pools: every sentence of the corpus is distinct, so no evaluation
    # sentence is ever used for training.
    sizes = {"dev": cfg.dev_utts, "test-clean": cfg.test_utts, "test-other": cfg.test_utts}
    probe = generate_sentences(2000, cfg.seed + 1, cfg.min_words, cfg.max_words)
    secs_per_utt = float(np.mean([len(s.split()) for s in probe])) / _WORDS_PER_SECOND
    for split, hours in (
        ("train", cfg.train_hours),
        ("train-unlabeled", cfg.unlabeled_hours),
        ("train-teacher", cfg.teacher_hours),
    ):
        sizes[split] = math.ceil(hours * 3600 / secs_per_utt)
    sentences = generate_sentences(sum(sizes.values()), cfg.seed, cfg.min_words, cfg.max_words)
    pools: Dict[str, List[str]] = {}
    start = 0
    for split, n in sizes.items():
        pools[split] = sentences[start : start + n]
        start += n

    variants = _variants()
    shuffled = list(variants)
    rng.shuffle(shuffled)
    n_seen = int(round(0.8 * len(shuffled)))
    seen_variants, unseen_variants = sorted(shuffled[:n_seen]), sorted(shuffled[n_seen:])

    train_voices = [
        _draw_voice(rng, TRAIN_ACCENTS, seen_variants, (140, 201), (30, 71))
        for _ in range(cfg.num_train_speakers)
    ]
    unlabeled_voices = [
        _draw_voice(rng, TRAIN_ACCENTS, seen_variants, (140, 201), (30, 71))
        for _ in range(cfg.num_train_speakers)
    ]
    teacher_voices = [
        _draw_voice(rng, TRAIN_ACCENTS, seen_variants, (140, 201), (30, 71))
        for _ in range(cfg.num_train_speakers)
    ]

    def other_voice(r: np.random.Generator) -> Voice:
        slow_or_fast = (110, 136) if r.random() < 0.5 else (210, 251)
        accents = UNSEEN_ACCENTS if r.random() < 0.5 else TRAIN_ACCENTS
        return _draw_voice(r, accents, unseen_variants, slow_or_fast, (15, 86))

    plan: Dict[str, List[Utterance]] = {}
    for split_idx, split in enumerate(SPLITS):
        if split not in cfg.splits:
            continue
        srng = np.random.default_rng([cfg.seed, split_idx])
        utts = []
        for i, text in enumerate(pools[split]):
            if split == "test-other":
                spk = 9000 + i // cfg.utts_per_chapter
                voice = other_voice(np.random.default_rng([cfg.seed, split_idx, spk]))
                kind = ("white", "pink", "brown")[int(srng.integers(3))]
                noise = (kind, float(srng.uniform(*cfg.other_snr_db)))
            elif split == "train-unlabeled":
                spk_idx = int(srng.integers(len(unlabeled_voices)))
                spk, voice, noise = 5000 + spk_idx, unlabeled_voices[spk_idx], None
            elif split == "train-teacher":
                spk_idx = int(srng.integers(len(teacher_voices)))
                spk, voice, noise = 7000 + spk_idx, teacher_voices[spk_idx], None
            else:  # train, dev and test-clean share the training voices
                spk_idx = int(srng.integers(len(train_voices)))
                spk, voice, noise = 1000 + spk_idx, train_voices[spk_idx], None
            utts.append((spk, text, voice, noise))
        # Group into chapters of utts_per_chapter utterances per speaker.
        counts: Dict[int, int] = {}
        result = []
        for k, (spk, text, voice, noise) in enumerate(utts):
            n = counts.get(spk, 0)
            counts[spk] = n + 1
            chapter = (split_idx + 1) * 1000 + n // cfg.utts_per_chapter
            utt_id = f"{spk}-{chapter}-{n % cfg.utts_per_chapter:04d}"
            seed = (cfg.seed * 100 + split_idx) * 10_000_000 + k
            result.append(Utterance(utt_id, text, voice, noise, seed))
        plan[split] = result
    return plan


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spec = np.fft.rfft(white)
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec /= np.sqrt(f) if kind == "pink" else f
    return np.fft.irfft(spec, n)


def render(samples: np.ndarray, in_rate: int, utt: Utterance) -> np.ndarray:
    """Resample espeak output to 16 kHz, pad with silence, add noise; float32 in [-1, 1].

    Args:
        samples: int16 ``(num_samples,)`` at ``in_rate``.
    Returns:
        float32 ``(num_samples_16k,)``.
    """
    rng = np.random.default_rng(utt.seed)
    g = math.gcd(SAMPLE_RATE, in_rate)
    x = resample_poly(samples.astype(np.float64) / 32768.0, SAMPLE_RATE // g, in_rate // g)
    lead, trail = (int(rng.uniform(0.05, 0.35) * SAMPLE_RATE) for _ in range(2))
    x = np.concatenate([np.zeros(lead), x, np.zeros(trail)])
    x *= 10 ** (rng.uniform(-6.0, 0.0) / 20) * 0.9 / max(np.abs(x).max(), 1e-6)
    if utt.noise is not None:
        kind, snr_db = utt.noise
        noise = _noise(kind, len(x), rng)
        p_sig = np.mean(x**2) + 1e-12
        noise *= math.sqrt(p_sig / (np.mean(noise**2) * 10 ** (snr_db / 10)))
        x = x + noise
        x *= min(1.0, 0.99 / np.abs(x).max())
    return x.astype(np.float32)


def utterance_path(corpus_dir: Path, split: str, utt_id: str) -> Path:
    spk, chapter, _ = utt_id.split("-")
    return corpus_dir / split / spk / chapter / f"{utt_id}.flac"


_BLOCK = 16  # utterances synthesized in sequence by one fresh process


def _synthesize_block(jobs: List[Tuple[Path, Utterance]]) -> List[float]:
    """Worker: synthesize a block of utterances to FLAC (atomically); return durations.

    libespeak-ng keeps state from one synthesis to the next (a few samples of
    difference), so every block runs in a fresh process (``maxtasksperchild=1``) and
    always synthesizes its utterances in the same order: the audio is then a function
    of the seed alone, whatever the number of processes or an earlier interruption.
    """
    if all(path.is_file() for path, _ in jobs):
        return [sf.info(str(path)).duration for path, _ in jobs]
    tts = ESpeak()
    durations = []
    for path, utt in jobs:
        audio = render(
            tts.synthesize(utt.text.lower(), utt.voice, seed=utt.seed), tts.sample_rate, utt
        )
        if not path.is_file():
            with atomic_path(path) as tmp:
                sf.write(str(tmp), audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        durations.append(len(audio) / SAMPLE_RATE)
    return durations


def write_corpus(corpus_dir: Path, cfg: SynthCorpusConfig, num_jobs: int = 2) -> Dict[str, float]:
    """Synthesize the planned corpus into ``corpus_dir`` (LibriSpeech layout).

    Resumable: finished audio files are kept, each split ends with a ``.done`` marker
    and transcripts are written atomically, so an interrupted run can simply be
    restarted. Returns split -> hours of audio.
    """
    from tqdm import tqdm

    corpus_dir = Path(corpus_dir)
    plan = plan_corpus(cfg)
    hours = {}
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(num_jobs, maxtasksperchild=1) as pool:
        for split, utts in plan.items():
            done = corpus_dir / split / ".done"
            if done.is_file():
                logging.info(f"{split}: already synthesized ({done}), skipping")
                continue
            jobs = [(utterance_path(corpus_dir, split, u.utt_id), u) for u in utts]
            blocks = [jobs[i : i + _BLOCK] for i in range(0, len(jobs), _BLOCK)]
            durations = []
            with tqdm(total=len(jobs), desc=f"synthesizing {split}", unit="utt") as bar:
                for block_durations in pool.imap(_synthesize_block, blocks):
                    durations += block_durations
                    bar.update(len(block_durations))
            chapters: Dict[Tuple[str, str], List[Utterance]] = {}
            for u in utts:
                spk, chapter, _ = u.utt_id.split("-")
                chapters.setdefault((spk, chapter), []).append(u)
            for (spk, chapter), chapter_utts in chapters.items():
                trans = corpus_dir / split / spk / chapter / f"{spk}-{chapter}.trans.txt"
                with atomic_path(trans) as tmp:
                    tmp.write_text("".join(f"{u.utt_id} {u.text}\n" for u in chapter_utts))
            hours[split] = sum(durations) / 3600
            _write_speakers(corpus_dir / split / "SPEAKERS.json", utts)
            with atomic_path(done) as tmp:
                tmp.write_text(json.dumps({"hours": hours[split], "utts": len(utts)}))
            logging.info(f"{split}: {len(utts)} utterances, {hours[split]:.2f} h")
    return hours


def _write_speakers(path: Path, utts: List[Utterance]) -> None:
    speakers = {}
    for u in utts:
        speakers.setdefault(u.utt_id.split("-")[0], asdict(u.voice))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(speakers, indent=1, sort_keys=True))


def colored_noise(n: int, slope: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as ``f ** slope`` (0: white, -1: pink,
    -2: brown), unit variance, ``(n,)`` float64."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec * f ** (slope / 2), n)
    return x / (x.std() + 1e-12)


def write_noise_set(
    out_dir: Path, num_files: int = 200, seconds: float = 10.0, seed: int = 7
) -> List[Path]:
    """Training noise for the synthetic corpus (a stand-in for MUSAN): 16 kHz FLAC files
    of coloured noise with a random spectral slope in [-2.2, 0.2] and a slow random
    loudness modulation (0-6 dB), so that models can learn to ignore noise like that of
    ``test-other`` without seeing its generator. Existing files are kept.

    Returns the file paths.
    """
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = int(seconds * SAMPLE_RATE)
    paths = []
    for i in range(num_files):
        slope, depth, rate = rng.uniform(-2.2, 0.2), rng.uniform(0, 6), rng.uniform(0.1, 1.0)
        file_rng = np.random.default_rng([seed, i])
        path = out_dir / f"noise-{i:04d}.flac"
        paths.append(path)
        if path.is_file():
            continue
        x = colored_noise(n, slope, file_rng)
        t = np.arange(n) / SAMPLE_RATE
        x *= 10 ** (depth / 2 * np.sin(2 * np.pi * rate * t + file_rng.uniform(0, 6.3)) / 20)
        x *= 0.3 / np.abs(x).max()
        with atomic_path(path) as tmp:
            sf.write(tmp, x.astype(np.float32), SAMPLE_RATE, format="FLAC")
    return paths
