"""export.py and onnx_pretrained.py: the ONNX graphs equal PyTorch, the ONNX searches
equal mvq_kd.decoding, and onnx_pretrained.py prints decode.py's hypotheses."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from lhotse import load_manifest

import export
from mvq_kd.checkpoint import load_model
from mvq_kd.decoding import greedy_search_batch, modified_beam_search
from mvq_kd.onnx_infer import OnnxTransducer, load_fbank
from tests.conftest import REPO
from tests.test_decode import read_recogs, run_decode, train

CPU = torch.device("cpu")


def export_exp(exp, tiny_data, int8=False):
    args = ["--exp-dir", str(exp), "--epoch", "2", "--avg", "1",
            "--bpe-model", str(tiny_data["bpe_model"]), "--int8", str(int8).lower()]  # fmt: skip
    export.main(args)
    return exp / "onnx"


@pytest.fixture(scope="module")
def offline_onnx(tiny_data, tmp_path_factory):
    exp = train(tiny_data, tmp_path_factory.mktemp("offline") / "exp", causal=False)
    return exp, export_exp(exp, tiny_data, int8=True)


@pytest.fixture(scope="module")
def streaming_onnx(tiny_data, tmp_path_factory):
    exp = train(tiny_data, tmp_path_factory.mktemp("streaming") / "exp", causal=True)
    return exp, export_exp(exp, tiny_data)


def test_cuts(tiny_data, part="test-clean"):
    return load_manifest(tiny_data["fbank"] / f"synth_cuts_{part}.jsonl.gz")


def audio_path(cut):
    return cut.recording.sources[0].source


@pytest.mark.parametrize("kind", ["offline", "streaming"])
def test_onnx_encoder_equals_pytorch(kind, offline_onnx, streaming_onnx, tiny_data):
    exp, onnx_dir = offline_onnx if kind == "offline" else streaming_onnx
    model, _ = load_model(exp, 2, 1, CPU)
    onnx = OnnxTransducer(onnx_dir)
    assert onnx.streaming == (kind == "streaming")
    for cut in test_cuts(tiny_data):
        feats = cut.load_features()
        got = np.concatenate(list(onnx.encoder_chunks(feats)))  # chunk by chunk if streaming
        x, x_lens = torch.from_numpy(feats)[None], torch.tensor([len(feats)])
        with torch.no_grad():
            if kind == "streaming":
                out, lens = model.encoder.streaming_encode(x, x_lens)
            else:
                enc = model.encoder(x, x_lens)
                out, lens = enc.out, enc.out_lens
            ref = model.joiner.encoder_proj(out)[0, : lens[0]].numpy()
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["offline", "streaming"])
def test_onnx_searches_equal_pytorch(kind, offline_onnx, streaming_onnx, tiny_data):
    exp, onnx_dir = offline_onnx if kind == "offline" else streaming_onnx
    model, _ = load_model(exp, 2, 1, CPU)
    onnx = OnnxTransducer(onnx_dir)
    any_hyp = False
    for cut in test_cuts(tiny_data, "test-other"):
        feats = cut.load_features()
        x, x_lens = torch.from_numpy(feats)[None], torch.tensor([len(feats)])
        with torch.no_grad():
            enc = model.encoder(x, x_lens)  # simulated streaming equals chunk by chunk
        greedy = greedy_search_batch(model, enc.out, enc.out_lens)[0]
        beam = modified_beam_search(model, enc.out, enc.out_lens, beam=4)[0]
        assert onnx.greedy_search(feats) == greedy
        assert onnx.modified_beam_search(feats, beam=4) == beam
        any_hyp |= bool(greedy)
    assert any_hyp, "the tiny model should output something"


def test_onnx_pretrained_prints_decode_py_hypotheses(offline_onnx, tiny_data, tmp_path):
    """decode.py on features stored without lilcom's (lossy) compression, so that both
    programs see the same features of the same audio."""
    from lhotse import Fbank, FbankConfig, NumpyFilesWriter

    exp, onnx_dir = offline_onnx
    cuts = test_cuts(tiny_data).drop_features()
    cuts = cuts.compute_and_store_features(
        Fbank(FbankConfig(num_mel_bins=80)), tmp_path / "feats", storage_type=NumpyFilesWriter
    )
    cuts.to_file(tmp_path / "synth_cuts_test-clean.jsonl.gz")
    run_decode(exp, dict(tiny_data, fbank=tmp_path), epoch=2, avg=1, parts=("test-clean",))
    recogs = read_recogs(exp / "greedy_search" / "recogs-test-clean-epoch-2-avg-1.txt")
    files = [audio_path(c) for c in cuts]
    proc = subprocess.run(
        [sys.executable, str(REPO / "onnx_pretrained.py"), "--model-dir", str(onnx_dir), *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(cuts)
    for cut, line in zip(cuts, lines):
        path, text = line.split(": ", 1) if ": " in line else (line.rstrip(":"), "")
        assert path == audio_path(cut)
        assert text.split() == recogs[cut.id][1]


def test_int8_graphs_are_smaller_and_transcribe(offline_onnx, tiny_data):
    _, onnx_dir = offline_onnx
    for name in ("encoder", "decoder", "joiner"):
        assert (onnx_dir / f"{name}.int8.onnx").is_file()
    assert (onnx_dir / "encoder.int8.onnx").stat().st_size < (
        onnx_dir / "encoder.onnx"
    ).stat().st_size
    fp32, int8 = OnnxTransducer(onnx_dir), OnnxTransducer(onnx_dir, int8=True)
    feats = load_fbank(audio_path(next(iter(test_cuts(tiny_data)))))
    a = np.concatenate(list(fp32.encoder_chunks(feats)))
    b = np.concatenate(list(int8.encoder_chunks(feats)))
    assert a.shape == b.shape and np.abs(a - b).max() < 0.1 * np.abs(a).max()
    assert fp32.meta["blank_id"] == "0" and fp32.meta["num_mel_bins"] == "80"


def test_fbank_of_resampled_audio(tmp_path, tiny_data):
    import soundfile as sf
    from scipy.signal import resample_poly

    path = audio_path(next(iter(test_cuts(tiny_data))))
    audio, rate = sf.read(path)
    assert rate == 16000
    sf.write(tmp_path / "x.wav", resample_poly(audio, 441, 160), 44100)
    a, b = load_fbank(path), load_fbank(tmp_path / "x.wav")
    assert abs(len(a) - len(b)) <= 1
    n = min(len(a), len(b))
    assert np.median(np.abs(a[:n] - b[:n])) < 0.2  # the same speech after resampling
    sf.write(tmp_path / "stereo.wav", np.stack([audio, audio], 1), 16000)
    with pytest.raises(ValueError, match="2 channels"):
        load_fbank(tmp_path / "stereo.wav")


def test_onnx_encoder_with_half_rate_layers(tmp_path):
    """An encoder whose middle layers run at half the frame rate exports with dynamic
    lengths: ONNX equals PyTorch on odd and even lengths and on a padded batch."""
    import onnxruntime as ort

    from mvq_kd.export import export_onnx
    from mvq_kd.model import EncoderConfig, Transducer, TransducerConfig

    torch.manual_seed(0)
    enc = EncoderConfig(num_layers=4, d_model=32, num_heads=4, ffn_dim=64, conv_kernel=5,
                        dropout=0.0, half_rate_layers=2)  # fmt: skip
    model = Transducer(TransducerConfig(encoder=enc, vocab_size=8, decoder_dim=16, joiner_dim=16))
    export_onnx(model, tmp_path, {i: f"t{i}" for i in range(8)})
    sess = ort.InferenceSession(str(tmp_path / "encoder.onnx"))
    x = torch.randn(2, 131, 80)
    for lens in ([131, 131], [131, 90], [127, 64]):  # 31, 21, 30, 15 encoder frames
        x_lens = torch.tensor(lens)
        got, got_lens = sess.run(None, {"x": x.numpy(), "x_lens": x_lens.numpy()})
        with torch.no_grad():
            out = model.encoder(x, x_lens)
            ref = model.joiner.encoder_proj(out.out).numpy()
        assert got_lens.tolist() == out.out_lens.tolist()
        for b, n in enumerate(out.out_lens.tolist()):
            np.testing.assert_allclose(got[b, :n], ref[b, :n], atol=1e-4, rtol=0)
