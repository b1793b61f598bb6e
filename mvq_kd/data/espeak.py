"""Offline text-to-speech with libespeak-ng, driven through ctypes.

The PyPI package ``espeakng-loader`` ships ``libespeak-ng`` together with its data
directory, so no system package is needed. The library keeps global state, so one
:class:`ESpeak` instance should exist per process; use one process per worker for
parallel synthesis.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

# Constants from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an espeak-ng language/accent, a voice variant and prosody.

    Attributes:
        language: espeak-ng voice name of the accent, e.g. ``"en-us"``.
        variant: voice variant name (a file in ``voices/!v``), e.g. ``"m3"``.
        rate: speaking rate in words per minute (espeak-ng accepts 80..450).
        pitch: base pitch, 0..100.
        pitch_range: pitch range, 0..100 (0 = monotone).
    """

    language: str
    variant: str
    rate: int
    pitch: int
    pitch_range: int

    @property
    def espeak_name(self) -> str:
        return f"{self.language}+{self.variant}"


class ESpeak:
    """A handle on libespeak-ng that synthesizes text to int16 samples.

    Example::

        tts = ESpeak()
        samples = tts.synthesize("HELLO WORLD", Voice("en-us", "m3", 170, 50, 50))
        # samples: np.ndarray int16 of shape (num_samples,) at tts.sample_rate Hz
    """

    def __init__(self, data_path: Optional[str] = None) -> None:
        try:
            import espeakng_loader
        except ImportError as e:  # pragma: no cover - dependency is declared
            raise ImportError(
                "The synthetic corpus needs the 'espeakng-loader' package "
                "(pip install espeakng-loader): it ships libespeak-ng and its data."
            ) from e
        self._lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data_path = data_path or espeakng_loader.get_data_path()
        # espeak_Initialize expects the folder *containing* espeak-ng-data or the folder itself.
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self.sample_rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), 0
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data path {data_path}")
        self._chunks: List[np.ndarray] = []

        def _callback(wav, num_samples, _events):  # noqa: ANN001 - ctypes signature
            if num_samples > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
            return 0  # 0 = continue synthesis

        self._callback = _SYNTH_CALLBACK(_callback)  # keep a reference: ctypes does not
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self._voice: Optional[str] = None

    def _set_voice(self, voice: Voice) -> None:
        if voice.espeak_name != self._voice:
            if self._lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice '{voice.espeak_name}'")
            self._voice = voice.espeak_name
        for param, value in (
            (_PARAM_RATE, voice.rate),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.pitch_range),
            (_PARAM_VOLUME, 100),
        ):
            self._lib.espeak_SetParameter(param, value, 0)

    def synthesize(self, text: str, voice: Voice, seed: int = 0) -> np.ndarray:
        """Synthesize ``text`` with ``voice``.

        Args:
            seed: seeds libespeak-ng's own random generator (voice flutter, noise
                sources), which it otherwise seeds from the clock: the same text, voice
                and seed give the same samples at any time.

        Returns:
            int16 samples of shape ``(num_samples,)`` at :attr:`sample_rate` Hz.
        """
        self._set_voice(voice)
        self._lib.espeak_ng_SetRandSeed(seed % 2**31)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data)
        status = self._lib.espeak_Synth(
            buf, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
        )
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed (status {status}) for text {text!r}")
        self._lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks)
