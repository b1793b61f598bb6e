"""Data preparation: the synthetic corpus, LibriSpeech-layout manifests, fbank, BPE."""
