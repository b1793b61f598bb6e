"""Bring your own corpus: ``prepare.sh --corpus lhotse`` on lhotse manifests, then
train.py and decode.py on it unchanged (real audio files written by the test)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet, load_manifest
from scipy.signal import resample_poly

from mvq_kd.data.librispeech import prepare_part
from tests.conftest import REPO
from tests.test_prepare import run_prepare


def _messy(text: str) -> str:
    words = text.lower().split()
    return f'"{words[0].capitalize()}," ' + " ".join(words[1:]) + "."


def write_own_corpus(tiny_corpus, root):
    """Manifests of a corpus 'my' (parts train, dev, test) with lower-case punctuated text;
    its training audio is at 8 and 44.1 kHz, its test part holds one long 8 kHz recording
    with two segments."""
    src = root / "manifests"
    src.mkdir(parents=True)
    for part, split in (("train", "train"), ("dev", "dev"), ("test", "test-clean")):
        recs, sups, _ = prepare_part(tiny_corpus / split)
        sups = SupervisionSet.from_segments(
            [dataclasses.replace(s, text=_messy(s.text)) for s in sups]
        )
        if part == "train":  # WAV files at 8 and 44.1 kHz
            resampled = []
            for i, rec in enumerate(recs):
                rate = (8000, 44100)[i % 2]
                wav = root / f"{rec.id}.wav"
                sf.write(str(wav), resample_poly(rec.load_audio()[0], rate // 100, 160), rate)
                resampled.append(Recording.from_file(wav, recording_id=rec.id))
            recs = RecordingSet.from_recordings(resampled)
        if part == "test":  # two utterances in one 8 kHz recording
            a, b = list(recs)[:2]
            audio = np.concatenate([a.load_audio()[0], np.zeros(8000), b.load_audio()[0]])
            wav = root / "long.wav"
            sf.write(str(wav), audio[::2], 8000)
            long = Recording.from_file(wav, recording_id="long")
            sa, sb = sups[a.id], sups[b.id]
            recs = RecordingSet.from_recordings([long, *list(recs)[2:]])
            sups = SupervisionSet.from_segments(
                [
                    SupervisionSegment("seg-a", "long", 0.0, a.duration, text=sa.text),
                    SupervisionSegment("seg-b", "long", a.duration + 0.5, b.duration, text=sb.text),
                    *[s for s in sups if s.recording_id not in (a.id, b.id)],
                ]
            )
        recs.to_file(src / f"my_recordings_{part}.jsonl.gz")
        sups.to_file(src / f"my_supervisions_{part}.jsonl.gz")
    return src


def test_lhotse_corpus_prepares_trains_and_decodes(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = write_own_corpus(tiny_corpus, tmp_path)
    proc = run_prepare(
        "--corpus", "lhotse", "--src-manifest-dir", str(src), "--prefix", "my",
        "--train-parts", "train", "--dev-parts", "dev", "--test-parts", "test",
        "--vocab-size", "60", cwd=tmp_path,
    )  # fmt: skip
    n_train = len(load_manifest(src / "my_recordings_train.jsonl.gz"))
    assert f"train: resampling {n_train} cuts to 16000 Hz (" in proc.stderr
    data = tmp_path / "data" / "my"
    sups = load_manifest(data / "manifests" / "my_supervisions_train.jsonl.gz")
    assert all(s.text == s.text.upper() and "." not in s.text for s in sups)
    assert all(s.custom["orig_text"].endswith(".") for s in sups)
    test = load_manifest(data / "fbank" / "my_cuts_test.jsonl.gz")
    segs = [c for c in test if c.recording.id == "long"]
    assert len(segs) == 2 and all(len(c.supervisions) == 1 for c in segs)
    assert abs(segs[1].duration - sups_duration(src, "seg-b")) < 0.02
    assert (data / "lang_bpe_60" / "bpe.model").is_file()

    exp = tmp_path / "exp"
    common = ["--manifest-dir", str(data / "fbank"), "--prefix", "my",
              "--bpe-model", str(data / "lang_bpe_60" / "bpe.model")]  # fmt: skip
    train = [
        sys.executable, str(REPO / "train.py"), "--exp-dir", str(exp), *common,
        "--train-parts", "train", "--valid-parts", "dev", "--num-epochs", "1",
        "--num-encoder-layers", "1", "--encoder-dim", "32", "--feedforward-dim", "64",
        "--decoder-dim", "32", "--joiner-dim", "32", "--max-duration", "20",
        "--num-workers", "0", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(train, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    decode = [
        sys.executable, str(REPO / "decode.py"), "--exp-dir", str(exp), *common,
        "--epoch", "1", "--avg", "1", "--test-parts", "test", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(decode, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recogs = (exp / "greedy_search" / "recogs-test-epoch-1-avg-1.txt").read_text()
    assert recogs.count("ref=") == len(test)


def sups_duration(src, sup_id):
    return load_manifest(src / "my_supervisions_test.jsonl.gz")[sup_id].duration


@pytest.mark.parametrize("bad", ["missing_manifest", "missing_audio", "truncated", "empty_text"])
def test_lhotse_corpus_errors_name_the_problem(tiny_corpus, tmp_path, bad):
    src = write_own_corpus(tiny_corpus, tmp_path)
    if bad == "missing_manifest":
        (src / "my_supervisions_dev.jsonl.gz").unlink()
        expected = "my_supervisions_dev.jsonl.gz"
    elif bad == "missing_audio":
        recs = load_manifest(src / "my_recordings_dev.jsonl.gz")
        first = next(iter(recs))
        first.sources[0].source = str(tmp_path / "nowhere.flac")
        recs.to_file(src / "my_recordings_dev.jsonl.gz")
        expected = f"{tmp_path / 'nowhere.flac'} of recording '{first.id}'"
    elif bad == "truncated":
        recs = load_manifest(src / "my_recordings_dev.jsonl.gz")
        first = next(iter(recs))
        flac = tmp_path / "dev.flac"
        flac.write_bytes(Path(first.sources[0].source).read_bytes())
        first.sources[0].source = str(flac)
        recs.to_file(src / "my_recordings_dev.jsonl.gz")
        flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
        expected = f"Cannot decode audio of '{first.id}' ({flac}): Error : flac decoder lost sync"
    else:
        sups = load_manifest(src / "my_supervisions_dev.jsonl.gz")
        first = next(iter(sups))
        SupervisionSet.from_segments(
            [dataclasses.replace(s, text="...") if s.id == first.id else s for s in sups]
        ).to_file(src / "my_supervisions_dev.jsonl.gz")
        expected = f"supervision '{first.id}'"
    proc = run_prepare(
        "--corpus", "lhotse", "--src-manifest-dir", str(src), "--prefix", "my",
        "--train-parts", "train", "--dev-parts", "dev", "--stop-stage", "1",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert expected in proc.stderr.splitlines()[-1]
    if bad in ("missing_audio", "truncated"):
        proc = run_prepare(
            "--corpus", "lhotse", "--src-manifest-dir", str(src), "--prefix", "my",
            "--train-parts", "train", "--dev-parts", "dev", "--stop-stage", "1",
            "--skip-bad-audio", "true", cwd=tmp_path,
        )  # fmt: skip
        listed = (tmp_path / "data" / "my" / "manifests" / "my_bad_audio_dev.txt").read_text()
        assert expected in listed


def test_corpus_options_belong_to_their_corpus(tmp_path):
    proc = run_prepare("--train-parts", "train", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "--train-parts is an option of --corpus lhotse" in proc.stderr
    proc = run_prepare("--corpus", "lhotse", "--prefix", "my", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "needs --src-manifest-dir" in proc.stderr
