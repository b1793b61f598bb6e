"""The embedded synthetic corpus: layout, determinism, split design."""

import json

import numpy as np
import soundfile as sf

from mvq_kd.data.synth import (
    SPLITS,
    TRAIN_ACCENTS,
    SynthCorpusConfig,
    plan_corpus,
    write_corpus,
)
from tests.conftest import TINY


def _transcripts(corpus, split):
    out = {}
    for trans in (corpus / split).rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            out[utt_id] = text
    return out


def test_librispeech_layout(tiny_corpus):
    for split in SPLITS:
        trans = _transcripts(tiny_corpus, split)
        assert trans, split
        for utt_id, text in trans.items():
            spk, chapter, _ = utt_id.split("-")
            flac = tiny_corpus / split / spk / chapter / f"{utt_id}.flac"
            info = sf.info(str(flac))
            assert info.samplerate == 16000 and info.channels == 1 and info.format == "FLAC"
            assert 0.5 < info.duration < 20
            assert text == text.upper() and text.strip()


def test_deterministic_from_seed(tiny_corpus, tmp_path):
    again = tmp_path / "again"
    write_corpus(again, SynthCorpusConfig(**TINY, splits=["test-other"]), num_jobs=1)
    assert _transcripts(again, "test-other") == _transcripts(tiny_corpus, "test-other")
    for flac in (again / "test-other").rglob("*.flac"):
        a, _ = sf.read(str(flac))
        b, _ = sf.read(str(tiny_corpus / flac.relative_to(again)))
        np.testing.assert_array_equal(a, b)
    other = plan_corpus(SynthCorpusConfig(**{**TINY, "seed": 7}))["train"]
    assert [u.text for u in other] != [
        u.text for u in plan_corpus(SynthCorpusConfig(**TINY))["train"]
    ]


def test_split_design():
    plan = plan_corpus(SynthCorpusConfig(**TINY))
    texts = {s: {u.text for u in utts} for s, utts in plan.items()}
    for ev in ("dev", "test-clean", "test-other"):
        assert not texts[ev] & texts["train"], f"{ev} shares sentences with train"
        assert not texts[ev] & texts["train-unlabeled"]
    train_voices = {u.voice for u in plan["train"]}
    # test-clean: voices seen in training; test-other: variants and rates never seen, noisy
    assert {u.voice for u in plan["test-clean"]} <= train_voices
    seen_variants = {v.variant for v in train_voices}
    for u in plan["test-other"]:
        assert u.voice.variant not in seen_variants
        assert not 140 <= u.voice.rate <= 200
        assert u.noise is not None and 5 <= u.noise[1] <= 20
    assert all(u.voice.language in TRAIN_ACCENTS for u in plan["train"])
    assert all(u.noise is None for u in plan["train"])


def test_grammar_sentences_are_distinct_and_recur_in_words():
    from collections import Counter

    from mvq_kd.data.grammar import generate_sentences, load_lexicon, past, plural

    assert [plural(w) for w in ("BOX", "CITY", "DAY", "DOG", "TOMATO")] == [
        "BOXES",
        "CITIES",
        "DAYS",
        "DOGS",
        "TOMATOES",
    ]
    assert [past(w) for w in ("LIKE", "CARRY", "PLAY", "WALK")] == [
        "LIKED",
        "CARRIED",
        "PLAYED",
        "WALKED",
    ]
    lex = load_lexicon()
    assert lex.nouns["CHILD"] == "CHILDREN" and lex.transitive["BUY"] == "BOUGHT"
    words = set(lex.words())
    a = generate_sentences(3000, seed=3)
    assert a == generate_sentences(3000, seed=3) and a != generate_sentences(3000, seed=4)
    assert len(set(a)) == 3000 and all(4 <= len(s.split()) <= 18 for s in a)
    assert {w for s in a for w in s.split()} <= words | {
        "A",
        "AN",
        "THE",
        "OF",
        "AND",
        "BUT",
        "THAT",
    } | set(
        "I YOU HE SHE WE THEY ME HIM HER US THEM IT MY YOUR HIS OUR THEIR THIS THOSE THESE "
        "SOME IS ARE AM WAS WERE DID WILL CAN SHOULD MUST MIGHT WOULD COULD PLEASE WHO WHERE "
        "WHEN WHY HOW MANY VERY QUITE REALLY TOO BECAUSE SO WHILE UNTIL BEFORE IF ALTHOUGH "
        "AS SOON SAID THINKS KNEW HEARD BELIEVES FORGOT TEACHER FRIEND IN TO FROM NEAR "
        "HUNDRED ONE TWO THREE FOUR FIVE SIX".split()
    )
    # A closed vocabulary: most word forms of held-out sentences recur in 2,500 others.
    train = Counter(w for s in a[:2500] for w in s.split())
    held_out = [w for s in a[2500:] for w in s.split()]
    assert sum(w in train for w in held_out) / len(held_out) > 0.97
    assert generate_sentences(5, 1, exclude=frozenset(generate_sentences(5, 1))) != (
        generate_sentences(5, 1)
    )


def test_default_corpus_tests_hearing_not_memorising():
    plan = plan_corpus(SynthCorpusConfig())
    test_words = {w for s in ("test-clean", "test-other") for u in plan[s] for w in u.text.split()}
    assert len(test_words) >= 1500
    train = {u.text for s in ("train", "train-teacher", "train-unlabeled") for u in plan[s]}
    for s in ("dev", "test-clean", "test-other"):
        assert not {u.text for u in plan[s]} & train
    # train-teacher: labeled audio of training-like voices of its own, 3x the students' train
    teacher, students = plan["train-teacher"], plan["train"]
    assert 2.5 < len(teacher) / len(students) < 3.5
    assert not {u.voice for u in teacher} & {u.voice for u in students}
    assert all(u.voice.language in TRAIN_ACCENTS and u.noise is None for u in teacher)


def test_resume_after_interruption(corpus_copy, tmp_path):
    # Simulate a kill in the middle of a split: marker and some files gone.
    split = corpus_copy / "dev"
    (split / ".done").unlink()
    flacs = sorted(split.rglob("*.flac"))
    flacs[0].unlink()
    mtime = flacs[1].stat().st_mtime_ns
    write_corpus(corpus_copy, SynthCorpusConfig(**TINY, splits=["dev"]), num_jobs=1)
    assert flacs[0].is_file() and flacs[1].stat().st_mtime_ns == mtime
    assert json.loads((split / ".done").read_text())["utts"] == TINY["dev_utts"]


def test_training_noise_set(tmp_path):
    import numpy as np
    import soundfile as sf

    from mvq_kd.data.synth import colored_noise, write_noise_set

    rng = np.random.default_rng(0)
    for slope in (0.0, -1.0, -2.0):
        x = colored_noise(2**16, slope, rng)
        power = np.abs(np.fft.rfft(x)) ** 2
        f = np.arange(len(power))
        lo, hi = power[(f > 100) & (f < 200)].mean(), power[(f > 10000) & (f < 20000)].mean()
        # the power ratio of bands 100x apart in frequency is ~ 100 ** -slope
        assert abs(np.log10(lo / hi) - 2 * -slope) < 0.3, slope
    paths = write_noise_set(tmp_path / "a", num_files=3, seconds=1.0)
    again = write_noise_set(tmp_path / "b", num_files=3, seconds=1.0)
    for p, q in zip(paths, again):
        a, sr = sf.read(p)
        assert sr == 16000 and a.shape == (16000,) and np.abs(a).max() <= 0.31
        assert np.array_equal(a, sf.read(q)[0])


def _synthesize_fresh(clock_seed):
    """In a fresh process whose libespeak-ng RNG starts elsewhere (as the clock would
    leave it), synthesize one sentence with seed 7."""
    from mvq_kd.data.espeak import ESpeak, Voice

    tts = ESpeak()
    tts._lib.espeak_ng_SetRandSeed(clock_seed)
    return tts.synthesize("the quick brown fox", Voice("en-us", "Alicia", 170, 50, 50), seed=7)


def test_espeak_audio_does_not_depend_on_the_clock():
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1) as pool:
        a, b = pool.map(_synthesize_fresh, [1, 2], chunksize=1)
    np.testing.assert_array_equal(a, b)
