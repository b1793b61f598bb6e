"""Transcript normalisation: one function for the manifests, the BPE model and scoring.

The default, ``upper``, is icefall's LibriSpeech convention: upper case, punctuation
removed (apostrophes inside words kept: ``DON'T``), hyphens and other symbols turned into
word boundaries, white space collapsed. ``none`` keeps the text as it is.

Example::

    normalize_text('"Search." the well-known  SITE, he said')
    # -> "SEARCH THE WELL KNOWN SITE HE SAID"
"""

from __future__ import annotations

import re

TEXT_NORMS = ("upper", "none")

_NOT_WORD = re.compile(r"[^\w']+")  # \w: letters and digits of any script, and "_"
_EDGE_APOSTROPHES = re.compile(r"(?<!\w)'+|'+(?!\w)")  # quote marks, not DON'T


def normalize_text(text: str, norm: str = "upper") -> str:
    """Normalise one transcript.

    Args:
        text: the transcript as written.
        norm: ``upper`` (case folding to upper case, punctuation removed) or ``none``.
    Returns:
        The normalised text, words separated by single spaces.
    """
    if norm == "none":
        return text
    if norm != "upper":
        raise ValueError(f"Unknown text normalisation {norm!r}: use one of {TEXT_NORMS}")
    text = _NOT_WORD.sub(" ", text.replace("_", " ").replace("\u2019", "'"))
    text = _EDGE_APOSTROPHES.sub(" ", text)
    return " ".join(text.upper().split())
