"""Data preparation: prepare.sh on LibriSpeech- and synth-layout trees, bad input, resumption."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lhotse import CutSet, load_manifest
from lhotse.recipes import prepare_librispeech

from mvq_kd.data.fbank import compute_fbank
from mvq_kd.data.librispeech import (
    BadAudioError,
    EmptyTranscriptError,
    prepare_librispeech_manifests,
)
from mvq_kd.utils import atomic_path
from tests.conftest import REPO

# LibriSpeech part name -> tiny synth split holding its audio
LIBRI_PARTS = {
    "train-clean-100": "train",
    "dev-clean": "dev",
    "dev-other": "dev",
    "test-clean": "test-clean",
    "test-other": "test-other",
}


def run_prepare(*args, cwd: Path, check=True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(REPO / "prepare.sh"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"prepare.sh failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def libri_tree(tiny_corpus, tmp_path) -> Path:
    """A small tree in the LibriSpeech layout: <dl>/LibriSpeech/<part>/<spk>/<chapter>/."""
    root = tmp_path / "download" / "LibriSpeech"
    for part, split in LIBRI_PARTS.items():
        shutil.copytree(tiny_corpus / split, root / part, ignore=shutil.ignore_patterns(".*"))
    return root


def _first_flac(part_dir: Path) -> Path:
    return sorted(part_dir.rglob("*.flac"))[0]


def test_librispeech_path_end_to_end(libri_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # feature paths are relative to the recipe folder
    dl = libri_tree.parent
    proc = run_prepare(
        "--corpus", "librispeech", "--dl-dir", str(dl), "--vocab-size", "60", cwd=tmp_path
    )
    data = tmp_path / "data" / "librispeech"
    for part in LIBRI_PARTS:
        assert f"{part}: present, skipping" in proc.stdout  # no download
        cuts = load_manifest(data / "fbank" / f"librispeech_cuts_{part}.jsonl.gz")
        n_flac = len(list((libri_tree / part).rglob("*.flac")))
        assert len(cuts) == n_flac
        feats = cuts[0].load_features()
        assert feats.shape[1] == 80 and abs(feats.shape[0] - cuts[0].duration * 100) <= 2
        assert cuts[0].supervisions[0].text
    assert (data / "lang_bpe_60" / "bpe.model").is_file()
    assert "Stage 3: MUSAN not requested" in proc.stdout

    # Our manifests equal lhotse's own prepare_librispeech on the same tree.
    ref = prepare_librispeech(libri_tree, dataset_parts=["test-other"])["test-other"]
    ours_rec = load_manifest(data / "manifests" / "librispeech_recordings_test-other.jsonl.gz")
    ours_sup = load_manifest(data / "manifests" / "librispeech_supervisions_test-other.jsonl.gz")

    def by_id(manifest):
        return sorted((m.to_dict() for m in manifest), key=lambda d: d["id"])

    assert by_id(ours_rec) == by_id(ref["recordings"])
    assert by_id(ours_sup) == by_id(ref["supervisions"])

    # A re-run of finished stages does no work: nothing is rewritten.
    outputs = [p for p in data.rglob("*") if p.is_file()]
    mtimes = {p: p.stat().st_mtime_ns for p in outputs}
    again = run_prepare(
        "--corpus", "librispeech", "--dl-dir", str(dl), "--vocab-size", "60", cwd=tmp_path
    )
    assert {p: p.stat().st_mtime_ns for p in outputs} == mtimes
    assert sorted(p for p in data.rglob("*") if p.is_file()) == sorted(outputs)
    assert "manifests exist" in again.stderr and "features exist" in again.stdout + again.stderr
    assert "bpe.model exists, skipping" in again.stderr


def test_librispeech_unlabeled_parts_lose_their_transcripts(libri_tree, tmp_path, monkeypatch):
    """--unlabeled-libri prepares extra parts without text (layer-wise KD on unlabeled audio)."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(libri_tree / "dev-clean", libri_tree / "train-clean-360")
    dl = libri_tree.parent
    unlabeled = ("--unlabeled-libri", "train-clean-360")
    run_prepare("--corpus", "librispeech", "--dl-dir", str(dl), *unlabeled, "--stop-stage", "2",
                cwd=tmp_path)  # fmt: skip
    fbank = tmp_path / "data" / "librispeech" / "fbank"
    cuts = load_manifest(fbank / "librispeech_cuts_train-clean-360.jsonl.gz")
    assert len(cuts) == len(list((libri_tree / "train-clean-360").rglob("*.flac")))
    assert all(c.supervisions[0].text is None for c in cuts)
    labeled = load_manifest(fbank / "librispeech_cuts_train-clean-100.jsonl.gz")
    assert all(c.supervisions[0].text for c in labeled)

    # A part cannot be labeled and unlabeled at once.
    proc = run_prepare("--corpus", "librispeech", "--dl-dir", str(dl), "--full-libri", "true",
                       *unlabeled, cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode != 0
    assert "--unlabeled-libri train-clean-360 is also a labeled training part" in proc.stderr


def test_synth_path_with_unlabeled_split(corpus_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dl = corpus_copy.parent  # stage 0 finds every split done and skips synthesis
    proc = run_prepare(
        "--dl-dir", str(dl), "--vocab-size", "60", "--synth-noise-files", "3", cwd=tmp_path
    )  # fmt: skip
    assert proc.stderr.count("already synthesized") == 6
    data = tmp_path / "data" / "synth"
    noise = load_manifest(data / "fbank" / "noise_cuts_all.jsonl.gz")
    assert len(noise) == 3 and noise[0].duration == 10.0
    assert noise[0].load_features().shape == (1000, 80)
    for part in ("train", "dev", "test-clean", "test-other", "train-unlabeled", "train-teacher"):
        cuts = load_manifest(data / "fbank" / f"synth_cuts_{part}.jsonl.gz")
        assert cuts[0].load_features().shape[1] == 80
    unlabeled = load_manifest(data / "fbank" / "synth_cuts_train-unlabeled.jsonl.gz")
    assert all(c.supervisions[0].text is None for c in unlabeled)
    # The BPE model never saw the unlabeled transcripts.
    bpe_text = (data / "lang_bpe_60" / "transcript_words.txt").read_text().splitlines()
    train = load_manifest(data / "manifests" / "synth_supervisions_train.jsonl.gz")
    assert sorted(bpe_text) == sorted(s.text for s in train)


def test_speed_perturbation(corpus_copy, tmp_path):
    from mvq_kd.data.librispeech import prepare_part

    recs, sups, _ = prepare_part(corpus_copy / "dev")
    cuts = compute_fbank(
        CutSet.from_manifests(recs, sups),
        tmp_path,
        "dev",
        "x",
        num_jobs=1,
        speed_perturb=(0.9, 1.1),
    )
    assert len(cuts) == 3 * len(recs)
    sp = [c for c in cuts if c.id.endswith("_sp0.9")]
    assert len(sp) == len(recs)
    orig = {c.id: c for c in cuts}
    c = sp[0]
    assert c.duration == pytest.approx(orig[c.id[: -len("_sp0.9")]].duration / 0.9, rel=1e-3)


# ---------------------------------------------------------------- bad input


def test_corrupt_audio_names_the_file(corpus_copy, tmp_path):
    bad = _first_flac(corpus_copy / "dev")
    bad.write_bytes(b"this is not a flac file" * 10)
    with pytest.raises(BadAudioError, match=str(bad)):
        prepare_librispeech_manifests(corpus_copy, ["dev"], tmp_path / "m", prefix="x")
    assert not list((tmp_path / "m").glob("*.jsonl.gz"))  # nothing half-written

    # The documented option skips, counts and lists it instead.
    out = prepare_librispeech_manifests(
        corpus_copy, ["dev"], tmp_path / "m", prefix="x", on_bad_audio="skip"
    )
    recs, _ = out["dev"]
    n = len(list((corpus_copy / "dev").rglob("*.flac")))
    assert len(recs) == n - 1 and bad.stem not in recs.ids
    assert str(bad) in (tmp_path / "m" / "x_bad_audio_dev.txt").read_text()


def test_missing_audio_via_prepare_sh(corpus_copy, tmp_path):
    missing = _first_flac(corpus_copy / "test-clean")
    missing.unlink()
    proc = run_prepare(
        "--dl-dir",
        str(corpus_copy.parent),
        "--stage",
        "1",
        "--stop-stage",
        "1",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert f"Missing audio file {missing}" in proc.stderr
    assert "--skip-bad-audio" in proc.stderr
    # With --skip-bad-audio true the stage completes and reports the count.
    proc = run_prepare(
        "--dl-dir",
        str(corpus_copy.parent),
        "--stage",
        "1",
        "--stop-stage",
        "1",
        "--skip-bad-audio",
        "true",
        cwd=tmp_path,
    )
    assert "test-clean: skipped 1 bad audio file(s)" in proc.stderr


def test_empty_transcript_rejected_with_cut_id(corpus_copy, tmp_path):
    trans = sorted((corpus_copy / "test-other").rglob("*.trans.txt"))[0]
    lines = trans.read_text().splitlines()
    cut_id = lines[0].split()[0]
    trans.write_text("\n".join([cut_id] + lines[1:]) + "\n")
    with pytest.raises(EmptyTranscriptError, match=f"'{cut_id}' at {trans}:1"):
        prepare_librispeech_manifests(corpus_copy, ["test-other"], tmp_path / "m")


def test_truncated_audio_stops_fbank_naming_cut(corpus_copy, tmp_path):
    from mvq_kd.data.librispeech import prepare_part

    bad = _first_flac(corpus_copy / "dev")
    recs, sups, _ = prepare_part(corpus_copy / "dev")  # the header is still valid here
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadAudioError, match=f"cut '{bad.stem}.*{bad.name}"):
        compute_fbank(CutSet.from_manifests(recs, sups), tmp_path, "dev", "x", num_jobs=2)
    # Interrupted stage: no manifest, no folder that looks finished.
    assert not (tmp_path / "x_cuts_dev.jsonl.gz").exists()
    assert not (tmp_path / "x_feats_dev").exists()
    # After the fix, the stage runs again from scratch and completes.
    bad.write_bytes(data)
    cuts = compute_fbank(CutSet.from_manifests(recs, sups), tmp_path, "dev", "x", num_jobs=2)
    assert len(cuts) == len(recs) and (tmp_path / "x_cuts_dev.jsonl.gz").is_file()
    assert not list(tmp_path.glob(".tmp*"))


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_prepare_sh_rejects_unknown_options(tmp_path):
    proc = run_prepare("--no-such-option", "1", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "unknown option --no-such-option" in proc.stderr
    proc = run_prepare("--help", cwd=tmp_path)
    assert "--stop-stage" in proc.stdout and "Stage" not in proc.stderr


def test_other_sampling_rates_are_resampled_and_stereo_refused(tmp_path, caplog):
    import numpy as np
    import soundfile as sf
    from lhotse import Recording

    from mvq_kd.data.librispeech import BadAudioError

    rng = np.random.default_rng(0)
    recordings = []
    for rate in (8000, 44100, 16000):
        path = tmp_path / f"tone-{rate}.flac"
        t = np.arange(int(1.5 * rate)) / rate
        sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(len(t)), rate)
        recordings.append(Recording.from_file(path))
    cuts = CutSet.from_cuts(r.to_cut() for r in recordings)
    with caplog.at_level("INFO"):
        done = compute_fbank(cuts, tmp_path / "fbank", "mixed", "own", num_jobs=1)
    assert "mixed: resampling 2 cuts to 16000 Hz (1 at 8000 Hz, 1 at 44100 Hz)" in caplog.text
    for cut in done:
        assert cut.sampling_rate == 16000 and cut.num_features == 80
        assert abs(cut.load_features().shape[0] - 150) <= 1  # 1.5 s of 10 ms frames
    stereo = tmp_path / "stereo.flac"
    sf.write(stereo, rng.standard_normal((16000, 2)) * 0.1, 16000)
    two = CutSet.from_cuts([Recording.from_file(stereo).to_cut()])
    with pytest.raises(BadAudioError, match=r"Cut '.*' of st has 2 channels .*stereo.flac"):
        compute_fbank(two, tmp_path / "fbank", "st", "own", num_jobs=1)


def test_librispeech_chosen_parts_prepare_offline(libri_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dl = libri_tree.parent
    for part in ("train-clean-100", "dev-other", "test-other"):
        shutil.rmtree(libri_tree / part)
    proc = run_prepare(
        "--corpus", "librispeech", "--dl-dir", str(dl), "--vocab-size", "60",
        "--parts", "dev-clean test-clean", "--librispeech-url", "http://127.0.0.1:9",
        cwd=tmp_path,
    )  # fmt: skip
    fbank = tmp_path / "data" / "librispeech" / "fbank"
    assert sorted(p.name for p in fbank.glob("*_cuts_*")) == [
        "librispeech_cuts_dev-clean.jsonl.gz",
        "librispeech_cuts_test-clean.jsonl.gz",
    ]
    assert "no training part among the prepared parts" in proc.stdout
    assert not list(dl.glob("*.tar.gz*"))


def test_failed_download_leaves_nothing_and_says_what_to_fetch(libri_tree, tmp_path):
    dl = libri_tree.parent
    shutil.rmtree(libri_tree / "dev-other")
    proc = run_prepare(
        "--corpus", "librispeech", "--dl-dir", str(dl), "--stop-stage", "0",
        "--parts", "dev-clean dev-other", "--librispeech-url", "http://127.0.0.1:9",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if "failed" in line]
    assert len(error) == 1 and "http://127.0.0.1:9/dev-other.tar.gz" in error[0]
    assert f"{libri_tree / 'dev-other'}/ exists" in error[0]
    assert sorted(p.name for p in dl.iterdir()) == ["LibriSpeech"]


def test_download_is_atomic_and_extracts_the_part(libri_tree, tmp_path):
    import tarfile

    from mvq_kd.data.download import download_librispeech_part

    server = tmp_path / "server"
    server.mkdir()
    with tarfile.open(server / "dev-clean.tar.gz", "w:gz") as tar:
        tar.add(libri_tree / "dev-clean", arcname="LibriSpeech/dev-clean")
    dl = tmp_path / "dl"
    part_dir = download_librispeech_part(dl, "dev-clean", f"file://{server}")
    assert part_dir == dl / "LibriSpeech" / "dev-clean"
    assert sorted(p.name for p in dl.iterdir()) == ["LibriSpeech", "dev-clean.tar.gz"]
    assert len(list(part_dir.rglob("*.flac"))) == len(
        list((libri_tree / "dev-clean").rglob("*.flac"))
    )


def test_transcripts_are_normalised_for_bpe_and_kept_as_written(libri_tree, tmp_path):
    from mvq_kd.data.bpe import train_bpe

    part = libri_tree / "train-clean-100"
    written = {}
    for trans in part.rglob("*.trans.txt"):
        lines = []
        for line in trans.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            words = text.lower().split()
            written[utt_id] = f'"{words[0].capitalize()}," ' + " ".join(words[1:]) + ". [$5]"
            lines.append(f"{utt_id} {written[utt_id]}")
        trans.write_text("\n".join(lines) + "\n")
    out = prepare_librispeech_manifests(libri_tree, ["train-clean-100"], tmp_path / "m")
    sups = out["train-clean-100"][1]
    for sup in sups:
        assert sup.custom["orig_text"] == written[sup.id]
        assert sup.text == sup.text.upper() and sup.text.endswith(" 5")
        assert not set(sup.text) & set('.,"[]$')
    bpe = train_bpe([s.text for s in sups], tmp_path / "lang", vocab_size=60)
    pieces = (bpe.parent / "tokens.txt").read_text().split()[0::2]
    assert not [p for p in pieces if set(p) & set('.,"[]$')], pieces

    as_is = prepare_librispeech_manifests(
        libri_tree, ["train-clean-100"], tmp_path / "m2", text_norm="none"
    )["train-clean-100"][1]
    assert {s.id: s.text for s in as_is} == written


def _truncate(flac: Path) -> None:
    data = flac.read_bytes()
    flac.write_bytes(data[: len(data) // 2])  # the header stays intact


def test_truncated_flac_end_to_end(libri_tree, tmp_path, monkeypatch):
    """Stage 1 decodes LibriSpeech audio in full: a truncated FLAC is named in one line,
    or skipped and listed; a file without a transcript line is counted and listed."""
    monkeypatch.chdir(tmp_path)
    dl = libri_tree.parent
    bad = _first_flac(libri_tree / "dev-clean")
    _truncate(bad)
    trans = next((libri_tree / "test-clean").rglob("*.trans.txt"))
    first, *rest = trans.read_text().splitlines()
    trans.write_text("\n".join(rest) + "\n")
    untranscribed = trans.parent / f"{first.split()[0]}.flac"
    args = ["--corpus", "librispeech", "--dl-dir", str(dl), "--stage", "1", "--stop-stage", "2",
            "--parts", "dev-clean test-clean"]  # fmt: skip
    proc = run_prepare(*args, cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"'{bad.stem}' ({bad})" in last and "lost sync" in last and "--skip-bad-audio" in last

    proc = run_prepare(*args, "--skip-bad-audio", "true", cwd=tmp_path)
    manifests = tmp_path / "data" / "librispeech" / "manifests"
    assert str(bad) in (manifests / "librispeech_bad_audio_dev-clean.txt").read_text()
    listed = (manifests / "librispeech_no_transcript_test-clean.txt").read_text().split()
    assert listed == [str(untranscribed)]
    assert "1 audio file(s) have no transcript line" in proc.stderr
    fbank = tmp_path / "data" / "librispeech" / "fbank"
    cuts = load_manifest(fbank / "librispeech_cuts_dev-clean.jsonl.gz")
    n_flac = len(list((libri_tree / "dev-clean").rglob("*.flac")))
    assert bad.stem not in [c.recording_id for c in cuts] and len(cuts) == n_flac - 1


def test_truncated_audio_in_stage_2_is_skipped_and_listed(corpus_copy, tmp_path):
    """Manifests made before the damage (header-only validation): stage 2 names the cut
    in one line, or with --skip-bad-audio drops and lists it."""
    from mvq_kd.data.librispeech import manifest_paths, prepare_part

    recs, sups, _ = prepare_part(corpus_copy / "dev")
    rec_path, sup_path = manifest_paths(tmp_path / "m", "x", "dev")
    rec_path.parent.mkdir()
    recs.to_file(rec_path)
    sups.to_file(sup_path)
    bad = _first_flac(corpus_copy / "dev")
    _truncate(bad)
    cmd = [sys.executable, str(REPO / "local" / "compute_fbank.py"), "--manifest-dir",
           str(tmp_path / "m"), "--output-dir", str(tmp_path / "f"), "--prefix", "x",
           "--parts", "dev", "--num-jobs", "2"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("compute_fbank.py: Cannot compute features of cut")
    assert f"cut '{bad.stem}" in last and str(bad) in last and "--skip-bad-audio" in last

    proc = subprocess.run(cmd + ["--skip-bad-audio"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    listed = (tmp_path / "f" / "x_bad_audio_dev.txt").read_text().splitlines()
    assert len(listed) == 1 and f"cut '{bad.stem}" in listed[0]
    cuts = load_manifest(tmp_path / "f" / "x_cuts_dev.jsonl.gz")
    assert sorted(c.recording_id for c in cuts) == sorted(i for i in recs.ids if i != bad.stem)
