"""Sentences of the synthetic corpus: a small probabilistic grammar of everyday English.

In the spirit of the DARPA Resource Management corpus: a closed vocabulary (about 2,000
word forms, :mod:`mvq_kd.data.lexicon`) in natural sentence patterns (statements,
questions, requests, subordinate clauses), so that every word recurs in training and a
model can learn both how words sound and how they follow each other, while the number of
distinct sentences is practically unlimited: no test sentence occurs in training.

Example::

    >>> sentences = generate_sentences(3, seed=1)   # list of 3 distinct upper-case strings
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, List, Sequence, Tuple

from mvq_kd.data import lexicon

_VOWELS = "AEIOU"


def plural(noun: str) -> str:
    """Regular English plural of an upper-case noun (``BOX`` -> ``BOXES``)."""
    if noun.endswith(("S", "SH", "CH", "X", "Z")):
        return noun + "ES"
    if noun.endswith("Y") and noun[-2] not in _VOWELS:
        return noun[:-1] + "IES"
    if noun.endswith("O") and noun in ("POTATO", "TOMATO", "HERO"):
        return noun + "ES"
    return noun + "S"


def past(verb: str) -> str:
    """Regular past tense (``LIKE`` -> ``LIKED``, ``CARRY`` -> ``CARRIED``)."""
    if verb.endswith("E"):
        return verb + "D"
    if verb.endswith("Y") and verb[-2] not in _VOWELS:
        return verb[:-1] + "IED"
    return verb + "ED"


def _forms(text: str, regular: Callable[[str], str]) -> Dict[str, str]:
    """``A B/C ...`` -> ``{A: regular(A), B: C, ...}`` (later entries win)."""
    forms = {}
    for entry in text.split():
        base, _, irregular = entry.partition("/")
        forms[base] = irregular or regular(base)
    return forms


@dataclass(frozen=True)
class Lexicon:
    """The word lists, with their inflections (``{singular: plural}``, ``{base: past}``)."""

    nouns: Dict[str, str]
    names: Tuple[str, ...]
    places: Tuple[str, ...]
    adjectives: Tuple[str, ...]
    transitive: Dict[str, str]
    intransitive: Dict[str, str]
    adverbs: Tuple[str, ...]
    prepositions: Tuple[str, ...]
    times: Tuple[str, ...]
    numbers: Tuple[str, ...]

    def words(self) -> List[str]:
        """Every word form the grammar can produce from the lists (sorted)."""
        words = set(self.names) | set(self.places) | set(self.adjectives)
        words |= set(self.adverbs) | set(self.prepositions) | set(self.numbers)
        for table in (self.nouns, self.transitive, self.intransitive):
            words |= set(table) | set(table.values())
        words |= {third_person(v) for v in (*self.transitive, *self.intransitive)}
        for t in self.times:
            words |= set(t.split())
        return sorted(words)


def third_person(verb: str) -> str:
    """Present tense, third person singular (``WATCH`` -> ``WATCHES``)."""
    if verb in ("HAVE", "DO", "GO"):
        return {"HAVE": "HAS", "DO": "DOES", "GO": "GOES"}[verb]
    return plural(verb)


@lru_cache(maxsize=1)
def load_lexicon() -> Lexicon:
    split = lambda text: tuple(text.split())  # noqa: E731
    return Lexicon(
        nouns=_forms(lexicon.NOUNS, plural),
        names=split(lexicon.NAMES),
        places=split(lexicon.PLACES),
        adjectives=split(lexicon.ADJECTIVES),
        transitive=_forms(lexicon.VERBS_TRANSITIVE, past),
        intransitive=_forms(lexicon.VERBS_INTRANSITIVE, past),
        adverbs=split(lexicon.ADVERBS),
        prepositions=split(lexicon.PREPOSITIONS),
        times=tuple(" ".join(t.split()) for t in lexicon.TIMES.split("|")),
        numbers=split(lexicon.NUMBERS),
    )


class _Generator:
    """Draws phrases from the grammar with one ``random.Random``."""

    def __init__(self, lex: Lexicon, rng: random.Random):
        self.lex, self.r = lex, rng
        self.nouns = sorted(lex.nouns)
        self.transitive = sorted(lex.transitive)
        self.intransitive = sorted(lex.intransitive)

    def pick(self, items: Sequence[str]) -> str:
        return items[self.r.randrange(len(items))]

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    # Noun phrases: (words, is_plural)
    def noun_phrase(self) -> Tuple[str, bool]:
        r = self.r.random()
        if r < 0.12:
            return self.pick(self.lex.names), False
        if r < 0.2:
            n = self.pick(self.nouns)
            return f"{self.number()} {self.adjective_maybe(0.3)}{self.lex.nouns[n]}", True
        noun = self.pick(self.nouns)
        is_plural = self.chance(0.3)
        word = self.lex.nouns[noun] if is_plural else noun
        adj = self.adjective_maybe(0.5)
        if is_plural:
            det = self.pick(("THE", "THE", "SOME", "MY", "YOUR", "OUR", "THEIR", "THOSE", "THESE"))
        else:
            det = self.pick(("THE", "THE", "THE", "A", "MY", "YOUR", "HIS", "HER", "THIS", "THAT"))
            if det == "A" and (adj or word)[0] in _VOWELS:
                det = "AN"
        phrase = f"{det} {adj}{word}"
        if self.chance(0.1):
            phrase += f" OF {self.pick(self.lex.names)}"
        return phrase, is_plural

    def adjective_maybe(self, p: float) -> str:
        return self.pick(self.lex.adjectives) + " " if self.chance(p) else ""

    def number(self) -> str:
        r = self.r.random()
        if r < 0.15:
            tens = self.pick(("TWENTY", "THIRTY", "FORTY", "FIFTY", "SIXTY", "SEVENTY"))
            return f"{tens} {self.pick(('ONE', 'TWO', 'THREE', 'FOUR', 'FIVE', 'SIX'))}"
        if r < 0.2:
            return "A HUNDRED"
        return self.pick(self.lex.numbers)

    def pronoun(self) -> Tuple[str, bool]:
        return self.pick(
            (
                ("I", False),
                ("YOU", True),
                ("HE", False),
                ("SHE", False),
                ("WE", True),
                ("THEY", True),
            )
        )

    def subject(self) -> Tuple[str, bool]:
        return self.pronoun() if self.chance(0.2) else self.noun_phrase()

    def obj(self) -> str:
        if self.chance(0.1):
            return self.pick(("ME", "HIM", "HER", "US", "THEM", "IT"))
        return self.noun_phrase()[0]

    def place_phrase(self) -> str:
        if self.chance(0.25):
            return f"{self.pick(('IN', 'TO', 'FROM', 'NEAR'))} {self.pick(self.lex.places)}"
        return f"{self.pick(self.lex.prepositions)} {self.noun_phrase()[0]}"

    def extras(self) -> str:
        out = ""
        if self.chance(0.35):
            out += " " + self.place_phrase()
        if self.chance(0.25):
            out += " " + self.pick(self.lex.times)
        return out

    # Clauses
    def clause(self) -> str:
        r = self.r.random()
        subj, pl = self.subject()
        if r < 0.4:  # past, transitive
            v = self.pick(self.transitive)
            adv = self.pick(self.lex.adverbs) + " " if self.chance(0.15) else ""
            return f"{subj} {adv}{self.lex.transitive[v]} {self.obj()}{self.extras()}"
        if r < 0.55:  # past, intransitive
            v = self.pick(self.intransitive)
            adv = " " + self.pick(self.lex.adverbs) if self.chance(0.3) else ""
            return f"{subj} {self.lex.intransitive[v]}{adv}{self.extras()}"
        if r < 0.7:  # future or modal
            modal = self.pick(("WILL", "CAN", "SHOULD", "MUST", "MIGHT", "WOULD", "COULD"))
            if self.chance(0.7):
                rest = f"{self.pick(self.transitive)} {self.obj()}"
            else:
                rest = self.pick(self.intransitive)
            return f"{subj} {modal} {rest}{self.extras()}"
        if r < 0.82:  # present, habitual
            v = self.pick(self.transitive)
            third = not pl and subj not in ("I", "YOU")
            verb = third_person(v) if third else v
            adv = self.pick(self.lex.adverbs) + " " if self.chance(0.3) else ""
            return f"{subj} {adv}{verb} {self.obj()}{self.extras()}"
        # be + adjective / place
        be = (
            ("AM" if subj == "I" else "ARE" if pl else "IS")
            if self.chance(0.5)
            else ("WAS" if subj in ("I", "HE", "SHE") or (not pl and subj != "YOU") else "WERE")
        )
        if self.chance(0.6):
            very = self.pick(("VERY ", "QUITE ", "REALLY ", "TOO ")) if self.chance(0.3) else ""
            return f"{subj} {be} {very}{self.pick(self.lex.adjectives)}"
        return f"{subj} {be} {self.place_phrase()}"

    def question(self) -> str:
        r = self.r.random()
        subj, _ = self.subject()
        v = self.pick(self.transitive)
        if r < 0.35:
            return f"DID {subj} {v} {self.obj()}{self.extras()}"
        if r < 0.7:
            wh = self.pick(("WHERE", "WHEN", "WHY", "HOW"))
            return f"{wh} DID {subj} {v} {self.obj()}"
        if r < 0.85:
            return f"WHO {self.lex.transitive[v]} {self.obj()}{self.extras()}"
        n = self.pick(self.nouns)
        return f"HOW MANY {self.lex.nouns[n]} DID {subj} {v}"

    def request(self) -> str:
        v = self.pick(self.transitive)
        please = "PLEASE " if self.chance(0.5) else ""
        return f"{please}{v} {self.obj()}{self.extras()}"

    def sentence(self) -> str:
        r = self.r.random()
        if r < 0.45:
            return self.clause()
        if r < 0.6:
            return self.question()
        if r < 0.7:
            return self.request()
        if r < 0.85:
            conj = self.pick(("AND", "BUT", "BECAUSE", "SO", "WHILE", "UNTIL", "AFTER", "BEFORE"))
            return f"{self.clause()} {conj} {self.clause()}"
        if r < 0.93:
            lead = self.pick(("WHEN", "IF", "ALTHOUGH", "AS SOON AS"))
            return f"{lead} {self.clause()} {self.clause()}"
        speaker = self.pick((*self.lex.names, "I", "THE TEACHER", "MY FRIEND"))
        verb = self.pick(("SAID", "THINKS", "KNEW", "HEARD", "BELIEVES", "FORGOT"))
        return f"{speaker} {verb} THAT {self.clause()}"


def generate_sentences(
    n: int,
    seed: int,
    min_words: int = 4,
    max_words: int = 18,
    exclude: frozenset = frozenset(),
) -> List[str]:
    """``n`` distinct sentences of ``min_words``-``max_words`` words, none in ``exclude``.

    Deterministic in ``seed``. Raises ``ValueError`` if the grammar cannot produce that many
    (it can produce far more than any corpus needs).
    """
    gen = _Generator(load_lexicon(), random.Random(seed))
    seen, out = set(exclude), []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"Could only draw {len(out)} of {n} distinct sentences")
        s = gen.sentence()
        if min_words <= len(s.split()) <= max_words and s not in seen:
            seen.add(s)
            out.append(s)
    return out
