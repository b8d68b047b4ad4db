"""Decide which rows of a pretrained classifier start each target class.

When a classifier pretrained on *source* labels (usually ImageNet-1k) is fine-tuned on *target* labels,
a target class that corresponds to one or more source classes starts from those classifier rows instead
of a fresh one. This module only decides the rows and records how; copying them is done elsewhere.

Source labels are arbitrary strings, usually ImageNet style: comma-separated synonyms such as
``"hotdog, hot dog, red hot"``. Names are compared after :func:`normalize_label` (casefold, ``_``/``-``/
punctuation to spaces) and also in a *compact* form without spaces, so ``hotdog``, ``hot dog``,
``Hot-Dog`` and ``hot_dog`` are all the same name.

For every target label an explicit ``mapping`` entry wins. Otherwise the first level with any match wins:

1. ``exact``       the target equals the whole source label.
2. ``synonym``     the target equals one of the label's comma-separated synonyms.
3. ``plural``      a singular/plural variant of the target (``ants`` -> ``ant``, ``daisies`` -> ``daisy``)
                   equals a synonym.
4. ``synset``      the target is a WordNet synset id (``n07697537``) and the sources are ImageNet-1k.
5. ``head``        many-to-one: the target (or its singular/plural) is the last word of a multi-word
                   synonym (``cat`` -> ``tabby cat``, ``Persian cat``, ...).
6. ``definition``  many-to-one, ImageNet-1k sources only: the target is the genus of the class's WordNet
                   definition (``Chihuahua: an old breed of tiny short-haired dog ...`` -> ``dog``), or the
                   genus of that genus, and so on (see :func:`definition_genus` and ``_chain``). A target
                   that names one WordNet sense reaches its synonyms' classes too (``automobile`` is
                   ``car, auto, automobile, machine, motorcar``, so ``sports car: a small low car ...``
                   matches); when that genus word has other senses (``car`` is also a railcar) the
                   match's note lists them.

Levels 5 and 6 form one many-to-one stage, because English compounds are a weak signal on their own
(a ``hot dog`` is no dog, a ``sea lion`` no lion) and definitions are the stronger one: on ImageNet-1k
sources a ``head`` row is kept only when its definition chain confirms the target, and the rows of both
levels are merged. The match's ``kind`` is ``head`` when every row came from a head match, otherwise
``definition``.

Levels 1-4 should give one row. When they give several (``crane`` is a bird and a machine in ImageNet),
the match is *ambiguous*: if exactly one candidate has the target as its first synonym it is chosen,
otherwise all candidates are merged; ``candidates`` and ``note`` record this. A source row labelled
``background`` (row 0 of 1001-way checkpoints) never matches automatically, and two targets may share
a source row.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from timm.data import ImageNetInfo

from hf_finetune.errors import ConfigError, suggest

__all__ = [
    "MATCH_KINDS",
    "LabelMatch",
    "LabelMappingReport",
    "normalize_label",
    "match_labels",
    "parse_label_mapping",
    "definition_genus",
    "imagenet_offset",
]

MATCH_KINDS = ("explicit", "exact", "synonym", "plural", "synset", "head", "definition", "complement", "none")

# Targets that name "everything but X" (``not_hotdog``, ``non-food``) or "everything else" (``other``).
_NEGATION_RE = re.compile(r"^(?:not|non|no)\s+(.+)$")
_REST_WORDS = frozenset({"other", "others", "rest", "unknown", "misc", "miscellaneous", "everything else"})

_SYNSET_RE = re.compile(r"^n\d{8}$")
_NONE_WORDS = ("none", "null", "off", "fresh")
_BACKGROUND = "background"
_MAX_GENUS_HOPS = 4
_IMAGENET_MIN_AGREEMENT = 0.95


# ----------------------------------------------------------------------------------------------- results
@dataclass
class LabelMatch:
    """How one target label starts: from ``source_indices`` rows, or fresh when ``kind == "none"``."""

    target: str
    source_indices: list[int]
    source_names: list[str]
    kind: str
    candidates: list[int] = field(default_factory=list)
    note: str = ""


@dataclass
class LabelMappingReport:
    """One :class:`LabelMatch` per target label, in target order."""

    matches: list[LabelMatch]
    num_source_labels: int
    imagenet_offset: int | None
    bias_calibration: dict[str, Any] | None = None  # label_bias_from_data (hf_finetune.models.head_init)

    @property
    def reused(self) -> list[LabelMatch]:
        """The matches that start from pretrained rows."""
        return [m for m in self.matches if m.kind != "none"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return {
            "num_source_labels": self.num_source_labels,
            "imagenet_offset": self.imagenet_offset,
            "matches": [asdict(m) for m in self.matches],
            **({"bias_calibration": self.bias_calibration} if self.bias_calibration is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelMappingReport:
        matches = [
            LabelMatch(
                target=str(m["target"]),
                source_indices=[int(i) for i in m.get("source_indices", [])],
                source_names=[str(n) for n in m.get("source_names", [])],
                kind=str(m["kind"]),
                candidates=[int(i) for i in m.get("candidates", [])],
                note=str(m.get("note", "")),
            )
            for m in d["matches"]
        ]
        offset = d.get("imagenet_offset")
        return cls(
            matches=matches,
            num_source_labels=int(d["num_source_labels"]),
            imagenet_offset=None if offset is None else int(offset),
            bias_calibration=d.get("bias_calibration"),
        )

    def table(self, max_sources: int = 3) -> str:
        """An aligned text table: target | kind | source rows (``index: name``, ``... +N more``)."""
        rows = [("target", "kind", "source rows")]
        for m in self.matches:
            shown = [f"{i}: {n}" for i, n in zip(m.source_indices, m.source_names, strict=False)][
                :max_sources
            ]
            extra = len(m.source_indices) - len(shown)
            text = "; ".join(shown) + (f"; ... +{extra} more" if extra > 0 else "")
            rows.append((m.target, m.kind, text or "-"))
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines = [f"{a:<{w0}} | {b:<{w1}} | {c}".rstrip() for a, b, c in rows]
        lines.insert(1, f"{'-' * w0}-+-{'-' * w1}-+-{'-' * 11}")
        if self.bias_calibration is not None:
            c = self.bias_calibration
            shifts = ", ".join(f"{k} {v:+.2f}" for k, v in list(c["shift"].items())[:8])
            more = len(c["shift"]) - 8
            lines.append(
                f"biases fitted on {c['images']} training images (loss {c['loss_before']:.3f} -> "
                f"{c['loss_after']:.3f}): {shifts}" + (f", ... +{more} more" if more > 0 else "")
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- names
_PUNCT_RE = re.compile(r"[^\w\s]|_", re.UNICODE)


def normalize_label(name: str) -> str:
    """Casefold; turn ``_``, ``-`` and other punctuation into spaces; collapse whitespace; strip."""
    return " ".join(_PUNCT_RE.sub(" ", str(name).casefold()).split())


def _compact(normalized: str) -> str:
    return normalized.replace(" ", "")


def _synonyms(label: str) -> list[str]:
    """Normalized comma-separated synonyms of a source label, first one first, no empties."""
    out: list[str] = []
    for part in str(label).split(","):
        n = normalize_label(part)
        if n and n not in out:
            out.append(n)
    return out


def _number_variants(word: str) -> set[str]:
    """Singular/plural variants of ``word`` by simple English rules (the word itself excluded)."""
    out: set[str] = set()
    if not word:
        return out
    if word.endswith("ies") and len(word) > 4:
        out.add(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        out.add(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        out.add(word[:-1])
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        out.add(word[:-1] + "ies")
    if word.endswith(("s", "x", "z", "ch", "sh", "o")):
        out.add(word + "es")
    out.add(word + "s")
    out.discard(word)
    return out


def _forms(normalized: str) -> set[str]:
    """The normalized name and its compact form."""
    return {normalized, _compact(normalized)}


# ------------------------------------------------------------------------------------------- ImageNet
@functools.lru_cache(maxsize=1)
def _imagenet() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(synsets, descriptions, definitions) of ImageNet-1k from timm's bundled WordNet data."""

    info = ImageNetInfo()
    synsets = tuple(info.label_names())
    descriptions = tuple(info.index_to_description(i) for i in range(len(synsets)))
    definitions = tuple(
        info.index_to_description(i, detailed=True)[len(descriptions[i]) + 2 :] for i in range(len(synsets))
    )
    return synsets, descriptions, definitions


def imagenet_offset(source_labels: Sequence[str]) -> int | None:
    """0 or 1 when ``source_labels`` are ImageNet-1k (1: row 0 is ``background``), else ``None``.

    Labels are compared after normalization with timm's names (or synset ids); at least 95% must agree,
    since checkpoints spell a few classes differently.
    """
    n = len(source_labels)
    if n == 1001 and normalize_label(source_labels[0]) == _BACKGROUND:
        offset, rest = 1, source_labels[1:]
    elif n == 1000:
        offset, rest = 0, source_labels
    else:
        return None
    synsets, descriptions, _ = _imagenet()
    same = sum(
        normalize_label(s) in (normalize_label(d), y)
        for s, d, y in zip(rest, descriptions, synsets, strict=True)
    )
    return offset if same >= _IMAGENET_MIN_AGREEMENT * len(descriptions) else None


# ------------------------------------------------------------------------------------ definition genus
_STOP_WORDS = frozenset(
    "with that which who whose having used from in for by of on to as at into than "
    "resembling especially similar like where when whereas native".split()
)
_QUANTIFIER_RE = re.compile(
    r"^(?:any|one|some|each|either|members?|\w+est)\s+of\s+"
    r"(?:(?:several|various|numerous|many|two|three|four|the|a|an)\s+)*"
)
_CLASSIFIER_RE = re.compile(
    r"^(?:\S+\s+){0,5}?(?:breeds?|bred|kinds?|types?|variety|varieties|species|forms?|sorts?|strains?|races?"
    r"|versions?|family|families|genus|genera|orders?|groups?|subfamily|class)\s+of\s+(?:(?:the|a|an)\s+)?"
)
_ARTICLE_RE = re.compile(r"^(?:a|an|the)\s+")
_SIZE_RANGE_RE = re.compile(r"\b(?:small|medium|large)(?:-sized)? to (?=(?:small|medium|large)\b)")
_VACUOUS = frozenset(
    "breed breeds kind type variety species form sort strain race member one version origin "
    "family genus order group class".split()
)


@functools.lru_cache(maxsize=1)
def _wordnet() -> tuple[dict[str, list[str]], dict[str, str], dict[str, list[str]], frozenset[str]]:
    """timm's WordNet data for all ImageNet-21k synsets.

    Returns (synset -> normalized lemmas, synset -> definition, word -> synsets having it as a lemma,
    single-word lemmas used as the noun vocabulary of :func:`definition_genus`).
    """

    info = ImageNetInfo()
    lemmas = {s: _synonyms(text) for s, text in info._lemmas.items()}
    definitions = dict(info._definitions)
    by_word: dict[str, list[str]] = {}
    for s, names in lemmas.items():
        for name in names:
            by_word.setdefault(name, []).append(s)
    nouns = frozenset(name for names in lemmas.values() for name in names if " " not in name)
    return lemmas, definitions, by_word, nouns


def _singular(word: str, nouns: frozenset[str]) -> str:
    if word in nouns:
        return word
    for v in sorted(_number_variants(word), key=len):
        if len(v) < len(word) and v in nouns:
            return v
    return word


_FUNCTION_WORDS = frozenset("or and but nor than as".split())
_COUNT_WORDS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve dozen hundred thousand several many "
    "more most few number pair couple".split()
)


def definition_genus(definition: str, compound: bool = False) -> str:
    """The genus (head noun) of a WordNet definition, singular, or ``""`` when it names none.

    Heuristic, checked on ImageNet-1k's 1000 definitions:

    1. casefold; keep the text before the first ``,`` ``;`` ``:`` ``(``; read ``small to medium-sized``
       as ``medium-sized``;
    2. repeatedly drop a leading article (``a``, ``an``, ``the``), a quantifier (``any of several``,
       ``one of the``, ``the largest of``) and a classifier with up to five words before it
       (``an old breed of``, ``kind of``, ``type of``, ``variety of``, ``species of``, ``version of``,
       ``family of``, ``genus of``, ...);
    3. keep the noun phrase up to the first stop word (``with``, ``that``, ``which``, ``who``, ``having``,
       ``used``, ``from``, ``in``, ``for``, ``by``, ``of``, ``on``, ``to``, ...);
    4. nouns are the one-word lemmas of timm's ImageNet-21k WordNet data (hyphenated words such as
       ``short-haired`` count as adjectives); cut the phrase at a participle (``-ed``/``-ing``, not a noun)
       that follows a noun: ``a cargo ship designed ...`` -> ``cargo ship``;
    5. the genus is the phrase's last noun, in the singular; with no noun, its last word before any
       participle (``a frankfurter served hot`` -> ``frankfurter``). A classifier word without ``of``
       (``an Irish breed with ...``) gives ``""``.

    Examples: ``an old breed of tiny short-haired dog ...`` -> ``dog``; ``a sled pulled by dogs`` ->
    ``sled``; ``a commercial airplane that carries passengers`` -> ``airplane``. With ``compound=True``
    the longest known lemma ending in the head noun is returned instead (``a coffee maker that ...`` ->
    ``coffee maker``); the genus chain uses that form so that ``maker`` (a person) is not followed.
    """
    nouns = _wordnet()[3]
    text = re.split(r"[,;:(]", definition.casefold(), maxsplit=1)[0].strip()
    text = _SIZE_RANGE_RE.sub("", text)
    while True:
        before = text
        for pattern in (_ARTICLE_RE, _QUANTIFIER_RE, _CLASSIFIER_RE):
            text = pattern.sub("", text, count=1)
        if text == before:
            break
    phrase: list[str] = []
    for token in text.split():
        if token in _STOP_WORDS:
            break
        phrase.append(token)

    def is_noun(token: str) -> bool:
        word = normalize_label(token)
        if word in _COUNT_WORDS or word in _FUNCTION_WORDS:  # "two or more slices": never the genus
            return False
        return "-" not in token and _singular(word, nouns) in nouns

    def is_participle(token: str) -> bool:
        return (
            "-" not in token
            and token.endswith(("ed", "ing"))
            and token not in _VACUOUS
            and not is_noun(token)
        )

    participles = [pos for pos, token in enumerate(phrase) if pos and is_participle(token)]
    after_noun = [pos for pos in participles if any(is_noun(t) for t in phrase[:pos])]
    if after_noun:
        phrase = phrase[: after_noun[0]]
    for end in range(len(phrase) - 1, -1, -1):
        token = phrase[end]
        word = normalize_label(token)
        if word in _VACUOUS or _singular(word, nouns) in _VACUOUS:
            return ""
        if not is_noun(token):
            continue
        head = _singular(word, nouns)
        if compound:  # the longest known lemma ending in the head noun: "coffee maker", not "maker"
            by_word = _wordnet()[2]
            for start in range(max(0, end - 2), end):
                before = phrase[start:end]
                if all("-" not in t for t in before):
                    longer = " ".join([*(normalize_label(t) for t in before), head])
                    if longer in by_word:
                        return longer
        return head
    if participles:  # no noun at all: the last word before the first participle
        phrase = phrase[: participles[0]]
    for token in reversed(phrase):
        word = normalize_label(token)
        if word in _COUNT_WORDS or word in _FUNCTION_WORDS:
            continue  # "two or more slices": neither "or" nor "two" is a genus
        if word and "-" not in token:
            return _singular(word.split()[-1], nouns)
    return ""


@functools.cache
def _synset_genus(synset: str) -> str:
    """Genus of a synset's definition; for vacuous genera (``a breed having ...``) the head word of its
    first multi-word lemma that is a noun (``Yorkshire terrier`` -> ``terrier``)."""
    lemmas, definitions, _, nouns = _wordnet()
    genus = definition_genus(definitions.get(synset, ""), compound=True)
    if genus and genus not in _VACUOUS:
        return genus
    for name in lemmas.get(synset, []):
        head = name.split()[-1]
        if " " in name and head in nouns:
            return head
    return ""


def _senses(word: str) -> list[str]:
    """The synsets that ``word`` may name: those where it is the first lemma, else every one having it."""
    lemmas, _, by_word, _ = _wordnet()
    found = by_word.get(word, [])
    return [s for s in found if lemmas[s][0] == word] or list(found)


def _resolve_word(word: str) -> str | None:
    """The one synset that ``word`` names (preferring synsets where it is the first lemma), else None."""
    found = _senses(word)
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class _Chain:
    """What a synset is a kind of, from its definition's genus, that genus' genus, and so on."""

    words: frozenset[str]  # genus words and the lemmas of every resolved genus synset
    synsets: frozenset[str]  # the genus synsets resolved on the way (a word naming exactly one synset)
    open_word: str = ""  # an ambiguous genus word that ended the chain (``car``: automobile or railcar?)
    open_senses: tuple[str, ...] = ()  # the synsets that word may name


@functools.cache
def _chain(synset: str) -> _Chain:
    """The genus chain of ``synset``.

    Each hop resolves the genus word to a WordNet synset in timm's data; an ambiguous word (``car``,
    ``crane``, ``vessel``) ends the chain there, so ambiguity never leaks into unrelated classes; the
    word and its senses are kept so that a target naming one of those senses can still be matched, with
    a note. At most ``_MAX_GENUS_HOPS`` hops.
    """
    lemmas = _wordnet()[0]
    seen = {synset}
    resolved: set[str] = set()
    words: set[str] = set()
    genus = _synset_genus(synset)
    for _ in range(_MAX_GENUS_HOPS + 1):
        if not genus:
            break
        words.update({genus, genus.split()[-1]})
        parent = _resolve_word(genus)
        if parent is None:
            senses = tuple(s for s in _senses(genus) if s not in seen)
            return _Chain(frozenset(words), frozenset(resolved), genus if len(senses) > 1 else "", senses)
        if parent in seen:
            break
        seen.add(parent)
        resolved.add(parent)
        words.update(lemmas[parent])
        genus = _synset_genus(parent)
    return _Chain(frozenset(words), frozenset(resolved))


def _genus_chain(synset: str) -> frozenset[str]:
    """Words naming what ``synset`` is a kind of (see :func:`_chain`)."""
    return _chain(synset).words


def _target_sense(words: set[str]) -> str | None:
    """The one WordNet synset a target names (``automobile`` -> ``car, auto, automobile, ...``), else None."""
    senses = {s for w in words for s in [_resolve_word(w)] if s is not None}
    return senses.pop() if len(senses) == 1 else None


# ------------------------------------------------------------------------------------------ matching
class _Source:
    """Pre-normalized source labels."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = [str(s) for s in labels]
        self.offset = imagenet_offset(self.labels)
        synsets = _imagenet()[0] if self.offset is not None else ()
        self.synset_row = (
            {s: i + self.offset for i, s in enumerate(synsets)} if self.offset is not None else {}
        )
        self.row_synset = {row: s for s, row in self.synset_row.items()}
        descriptions = _imagenet()[1]
        self.whole: list[set[str]] = []
        self.syns: list[list[str]] = []
        for row, label in enumerate(self.labels):
            text = label
            if row in self.row_synset and _SYNSET_RE.match(label.strip()):
                text = descriptions[row - (self.offset or 0)]  # synset-id labels: match on the names
            self.whole.append(_forms(normalize_label(text)))
            self.syns.append(_synonyms(text))
        self.background = {i for i, s in enumerate(self.labels) if normalize_label(s) == _BACKGROUND}

    def rows(self) -> Iterable[int]:
        return (i for i in range(len(self.labels)) if i not in self.background)

    def describe(self, row: int) -> str:
        text = f"{row}: {self.labels[row]}"
        synset = self.row_synset.get(row)
        if synset is not None:
            definition = _imagenet()[2][row - (self.offset or 0)]
            short = definition if len(definition) <= 40 else definition[:40].rstrip() + "..."
            text += f" [{short}]"
        return text


def _names_match(forms: set[str], names: Iterable[str]) -> bool:
    return any(_forms(n) & forms for n in names)


def _single_level(target: str, source: _Source) -> tuple[str, list[int]] | None:
    """Levels 1-4; returns (kind, candidate rows) of the first level with any match."""
    norm = normalize_label(target)
    if not norm:
        return None
    forms = _forms(norm)
    variants = set().union(*(_forms(v) for v in _number_variants(norm)))
    levels = [
        ("exact", [i for i in source.rows() if source.whole[i] & forms]),
        ("synonym", [i for i in source.rows() if _names_match(forms, source.syns[i])]),
        ("plural", [i for i in source.rows() if _names_match(variants, source.syns[i])]),
    ]
    for kind, rows in levels:
        if rows:
            return kind, rows
    synset = target.strip()
    if _SYNSET_RE.match(synset) and synset in source.synset_row:
        row = source.synset_row[synset]
        if row not in source.background:
            return "synset", [row]
    return None


def _many_level(target: str, source: _Source) -> tuple[str, list[int], str] | None:
    """Levels 5-6 (head + definition); returns (kind, rows, note) or None."""
    norm = normalize_label(target)
    if not norm:
        return None
    words = {norm} | _number_variants(norm)
    head_rows = [
        i
        for i in source.rows()
        if any(" " in s and s.split()[-1] in words and s not in words for s in source.syns[i])
    ]
    def_rows: list[int] = []
    vetoed: list[int] = []
    sense_rows: list[int] = []  # reached through a synonym of the target (automobile -> car)
    open_words: dict[str, tuple[str, ...]] = {}  # ambiguous genus word -> its senses, for the note
    sense = _target_sense(words) if source.offset is not None else None
    if source.offset is not None:
        for i in source.rows():
            synset = source.row_synset.get(i)
            if synset is None:
                continue
            chain = _chain(synset)
            if chain.words & words:
                def_rows.append(i)
            elif sense is not None and (sense in chain.synsets or sense in chain.open_senses):
                def_rows.append(i)
                sense_rows.append(i)
                if sense not in chain.synsets:
                    open_words[chain.open_word] = chain.open_senses
            elif i in head_rows:
                vetoed.append(i)
    head_rows = [i for i in head_rows if i not in vetoed]
    rows = sorted(set(head_rows) | set(def_rows))
    if not rows:
        return None
    kind = "head" if set(rows) <= set(head_rows) else "definition"
    note = f"head: {len(head_rows)} rows"
    if source.offset is not None:
        extra = len(set(rows) - set(head_rows))
        note += f"; definition: +{extra} rows"
        if sense_rows:
            lemmas = _wordnet()[0]
            note += f"; {len(sense_rows)} of them through the synonyms {', '.join(lemmas[sense])!r}"
            for word, senses in open_words.items():
                others = "; ".join(", ".join(lemmas[s][:2]) for s in senses if s != sense)
                note += f" (their genus {word!r} may also mean: {others})"
        if vetoed:
            names = ", ".join(f"{i}: {source.labels[i]}" for i in vetoed[:3])
            more = f" +{len(vetoed) - 3} more" if len(vetoed) > 3 else ""
            note += f"; head rows not confirmed by their definition, skipped: {names}{more}"
    return kind, rows, note


def _auto_match(target: str, source: _Source) -> LabelMatch:
    single = _single_level(target, source)
    if single is not None:
        kind, rows = single
        note = ""
        chosen = rows
        if len(rows) > 1:
            forms = _forms(normalize_label(target))
            first = [i for i in rows if source.syns[i] and _forms(source.syns[i][0]) & forms]
            described = ", ".join(source.describe(i) for i in rows)
            if len(first) == 1:
                chosen = first
                note = f"ambiguous: {len(rows)} candidates ({described}); chose {first[0]} (first synonym)"
            else:
                note = f"ambiguous: {len(rows)} candidates ({described}); merged all {len(rows)}"
        return LabelMatch(target, list(chosen), [source.labels[i] for i in chosen], kind, list(rows), note)
    many = _many_level(target, source)
    if many is not None:
        kind, rows, note = many
        return LabelMatch(target, list(rows), [source.labels[i] for i in rows], kind, list(rows), note)
    return LabelMatch(target, [], [], "none", [], "")


# ---------------------------------------------------------------------------------- explicit mapping
def _resolve_value(key: str, value: Any, source: _Source) -> int:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"label_mapping[{key!r}]: expected a source label, synonym or synset id (or a list of them, "
            f"or none), got {value!r}"
        )
    text = value.strip()
    if _SYNSET_RE.match(text) and text in source.synset_row:
        return source.synset_row[text]
    forms = _forms(normalize_label(text))
    for rows in (
        [i for i in range(len(source.labels)) if source.whole[i] & forms],
        [i for i in range(len(source.labels)) if _names_match(forms, source.syns[i])],
    ):
        if len(rows) == 1:
            return rows[0]
        if len(rows) > 1:
            listed = ", ".join(f"{i}: {source.labels[i]!r}" for i in rows)
            raise ConfigError(
                f"label_mapping[{key!r}]: {value!r} is ambiguous, it names {len(rows)} source rows "
                f"({listed}); give the whole source label or a synset id"
            )
    choices = sorted({n for syns in source.syns for n in syns} | {normalize_label(s) for s in source.labels})
    raise ConfigError(
        f"label_mapping[{key!r}]: {value!r} is not a source label, synonym or synset id of the "
        f"{len(source.labels)}-label source classifier{suggest(normalize_label(text), choices)}"
    )


def _explicit_match(target: str, key: str, value: Any, source: _Source) -> LabelMatch:
    if value is None or (isinstance(value, str) and value.strip().casefold() in _NONE_WORDS):
        values: list[Any] = []
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        values = [value]
    if not values:
        return LabelMatch(target, [], [], "none", [], "explicit: none")
    rows: list[int] = []
    for v in values:
        row = _resolve_value(key, v, source)
        if row not in rows:
            rows.append(row)
    note = f"explicit: {len(rows)} rows" if len(rows) > 1 else "explicit"
    return LabelMatch(target, rows, [source.labels[i] for i in rows], "explicit", list(rows), note)


def _mapping_targets(mapping: Mapping[Any, Any], targets: Sequence[str]) -> dict[int, tuple[str, Any]]:
    """target position -> (key, value); keys are target labels, exactly or after normalization."""
    by_norm: dict[str, list[int]] = {}
    for pos, t in enumerate(targets):
        by_norm.setdefault(normalize_label(t), []).append(pos)
    out: dict[int, tuple[str, Any]] = {}
    for key, value in mapping.items():
        skey = str(key)
        positions = [p for p, t in enumerate(targets) if t == skey] or by_norm.get(normalize_label(skey), [])
        if len(positions) != 1:
            hint = suggest(skey, list(targets))
            raise ConfigError(
                f"label_mapping: key {skey!r} is not one of the {len(targets)} target labels{hint}"
            )
        if positions[0] in out:
            raise ConfigError(
                f"label_mapping: keys {out[positions[0]][0]!r} and {skey!r} both name target label "
                f"{targets[positions[0]]!r}"
            )
        out[positions[0]] = (skey, value)
    return out


def match_labels(
    target_labels: Sequence[str],
    source_labels: Sequence[str],
    mapping: Mapping[str, str | list[str] | None] | None = None,
    auto: bool = True,
) -> LabelMappingReport:
    """Decide which source classifier rows start each target label (see the module docstring).

    ``mapping`` entries (target -> source label / synonym / synset id, a list of them, or None for a
    fresh row) win; with ``auto=False`` nothing else is matched. Raises :class:`ConfigError` for a
    mapping key that is not a target label and for a value that names no source row or several.
    """
    targets = [str(t) for t in target_labels]
    source = _Source(source_labels)
    explicit = _mapping_targets(mapping or {}, targets)
    matches: list[LabelMatch] = []
    for pos, target in enumerate(targets):
        if pos in explicit:
            key, value = explicit[pos]
            matches.append(_explicit_match(target, key, value, source))
        elif auto:
            matches.append(_auto_match(target, source))
        else:
            matches.append(LabelMatch(target, [], [], "none", [], "automatic matching off"))
    if auto:
        matches = _complements(matches, source, explicit)
    return LabelMappingReport(matches, len(source.labels), source.offset)


def _complements(matches: list[LabelMatch], source: _Source, explicit: Mapping[int, Any]) -> list[LabelMatch]:
    """Unmatched targets that say "not X" or "other" start from the complement of X's rows (or of every
    matched row): ``not_hotdog`` is every source class but ``hotdog, hot dog, red hot``. Merged like any
    many-to-one target, its logit approximates the log-sum-exp of those classes, so the pair
    (``hotdog``, ``not_hotdog``) starts as "is hotdog more likely than everything else together?"."""
    used = {row for m in matches for row in m.source_indices}
    out = list(matches)
    for pos, match in enumerate(matches):
        if match.kind != "none" or pos in explicit:
            continue
        name = normalize_label(match.target)
        negated = _NEGATION_RE.match(name)
        if negated:
            inner = negated.group(1)
            rows: list[int] = []
            for other in matches:
                if other.source_indices and _forms(normalize_label(other.target)) & _forms(inner):
                    rows = list(other.source_indices)
            if not rows:
                found = _auto_match(inner, source)
                rows = list(found.source_indices)
            if not rows:
                continue
            what = f"every source class but the {len(rows)} row(s) of {inner!r}"
        elif name in _REST_WORDS:
            if not used:
                continue
            rows = sorted(used)
            what = f"every source class not used by another target ({len(rows)} used)"
        else:
            continue
        excluded = set(rows)
        complement = [i for i in source.rows() if i not in excluded]
        out[pos] = LabelMatch(
            match.target,
            complement,
            [source.labels[i] for i in complement],
            "complement",
            complement[:0],
            f"complement: {what}",
        )
    return out


# ------------------------------------------------------------------------------------ recipe values
def parse_label_mapping(value: Any) -> tuple[bool, dict[str, Any] | None]:
    """Read the recipe's ``label_mapping`` value into ``(auto, explicit mapping)``.

    ``None``/``"auto"``/``True`` -> ``(True, None)``; ``"none"``/``"off"``/``False`` -> ``(False, None)``;
    a dict -> ``(True, dict)``; a path to a ``.yaml``/``.yml``/``.json`` file holding a dict, or a JSON
    string of a dict -> ``(True, that dict)``. Anything else raises :class:`ConfigError`.
    """
    expected = (
        "expected 'auto', 'none'/'off', a mapping of target label to source label(s), "
        "a JSON string of one, or a .yaml/.yml/.json file holding one"
    )
    if value is None or value is True:
        return True, None
    if value is False:
        return False, None
    if isinstance(value, Mapping):
        return True, _check_mapping(dict(value), value)
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(f"label_mapping: {expected}, got {value!r}")
    text = value.strip()
    word = text.casefold()
    if word in ("", "auto"):
        return True, None
    if word in ("none", "off", "false", "no"):
        return False, None
    if text.startswith("{"):
        try:
            loaded = json.loads(text, object_pairs_hook=_unique_pairs)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"label_mapping: {value!r} is not valid JSON ({exc.msg})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"label_mapping: {expected}, got {value!r}")
        return True, _check_mapping(loaded, value)
    path = Path(text).expanduser()
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise ConfigError(f"label_mapping: file {text!r} not found")
        try:
            if path.suffix.lower() == ".json":
                loaded = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_pairs)
            else:
                from hf_finetune.config.safe_yaml import load_yaml

                loaded = load_yaml(path.read_text(encoding="utf-8"), f"label_mapping: {text}")
        except ConfigError:
            raise
        except (OSError, ValueError, ImportError) as exc:
            raise ConfigError(f"label_mapping: cannot read {text!r}: {exc}") from None
        except Exception as exc:  # yaml.YAMLError
            raise ConfigError(f"label_mapping: cannot parse {text!r}: {exc}".splitlines()[0]) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"label_mapping: {text!r} must hold a mapping, got {type(loaded).__name__}")
        return True, _check_mapping(loaded, text)
    raise ConfigError(f"label_mapping: {expected}, got {value!r}")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' object hook: a key given twice is an error (JSON keeps the last silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"label_mapping: key {key!r} is given twice; expected each target label once")
        out[key] = value
    return out


def _check_mapping(mapping: dict[Any, Any], origin: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in mapping.items():
        ok = (
            val is None
            or isinstance(val, str)
            or (isinstance(val, (list, tuple)) and all(isinstance(v, str) for v in val))
        )
        if not ok:
            raise ConfigError(
                f"label_mapping ({origin!r}): value for {key!r} must be a source label, a list of them "
                f"or none, got {val!r}"
            )
        out[str(key)] = list(val) if isinstance(val, (list, tuple)) else val
    return out
