"""What a class is a kind of, read from WordNet: the genus (head noun) of a definition, and the chain of genera
from a synset's definition, its genus' definition, and so on (timm's ImageNet-21k WordNet data).

``Chihuahua: an old breed of tiny short-haired dog ...`` has the genus ``dog``; the chain follows ``dog`` to its
synset and that synset's definition, and so on. :func:`hf_finetune.labels.matching.match_labels` uses the chain
for its many-to-one ``definition`` level.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from timm.data import ImageNetInfo

from hf_finetune.labels.names import normalize_label, number_variants, synonyms

__all__ = ["Chain", "wordnet", "definition_genus", "genus_chain_of", "resolve_word", "target_sense"]

_MAX_GENUS_HOPS = 4
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
_FUNCTION_WORDS = frozenset("or and but nor than as".split())
_COUNT_WORDS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve dozen hundred thousand several many "
    "more most few number pair couple".split()
)


@functools.lru_cache(maxsize=1)
def wordnet() -> tuple[dict[str, list[str]], dict[str, str], dict[str, list[str]], frozenset[str]]:
    """timm's WordNet data for all ImageNet-21k synsets.

    Returns (synset -> normalized lemmas, synset -> definition, word -> synsets having it as a lemma,
    single-word lemmas used as the noun vocabulary of :func:`definition_genus`).
    """

    info = ImageNetInfo()
    lemmas = {s: synonyms(text) for s, text in info._lemmas.items()}
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
    for v in sorted(number_variants(word), key=len):
        if len(v) < len(word) and v in nouns:
            return v
    return word


def _is_noun(token: str, nouns: frozenset[str]) -> bool:
    word = normalize_label(token)
    if word in _COUNT_WORDS or word in _FUNCTION_WORDS:  # "two or more slices": never the genus
        return False
    return "-" not in token and _singular(word, nouns) in nouns


def _is_participle(token: str, nouns: frozenset[str]) -> bool:
    return (
        "-" not in token
        and token.endswith(("ed", "ing"))
        and token not in _VACUOUS
        and not _is_noun(token, nouns)
    )


def _genus_phrase(definition: str) -> list[str]:
    """Steps 1-3 of :func:`definition_genus`: the words of the definition's leading noun phrase."""
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
    return phrase


def _longest_lemma(phrase: list[str], end: int, head: str) -> str:
    """The longest known lemma ending in the head noun at ``phrase[end]``: ``coffee maker``, not ``maker``."""
    by_word = wordnet()[2]
    for start in range(max(0, end - 2), end):
        before = phrase[start:end]
        if all("-" not in t for t in before):
            longer = " ".join([*(normalize_label(t) for t in before), head])
            if longer in by_word:
                return longer
    return head


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
    nouns = wordnet()[3]
    phrase = _genus_phrase(definition)
    participles = [pos for pos, token in enumerate(phrase) if pos and _is_participle(token, nouns)]
    after_noun = [pos for pos in participles if any(_is_noun(t, nouns) for t in phrase[:pos])]
    if after_noun:
        phrase = phrase[: after_noun[0]]
    for end in range(len(phrase) - 1, -1, -1):
        token = phrase[end]
        word = normalize_label(token)
        if word in _VACUOUS or _singular(word, nouns) in _VACUOUS:
            return ""
        if not _is_noun(token, nouns):
            continue
        head = _singular(word, nouns)
        return _longest_lemma(phrase, end, head) if compound else head
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
    lemmas, definitions, _, nouns = wordnet()
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
    lemmas, _, by_word, _ = wordnet()
    found = by_word.get(word, [])
    return [s for s in found if lemmas[s][0] == word] or list(found)


def resolve_word(word: str) -> str | None:
    """The one synset that ``word`` names (preferring synsets where it is the first lemma), else None."""
    found = _senses(word)
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class Chain:
    """What a synset is a kind of, from its definition's genus, that genus' genus, and so on."""

    words: frozenset[str]  # genus words and the lemmas of every resolved genus synset
    synsets: frozenset[str]  # the genus synsets resolved on the way (a word naming exactly one synset)
    open_word: str = ""  # an ambiguous genus word that ended the chain (``car``: automobile or railcar?)
    open_senses: tuple[str, ...] = ()  # the synsets that word may name


@functools.cache
def genus_chain_of(synset: str) -> Chain:
    """The genus chain of ``synset``.

    Each hop resolves the genus word to a WordNet synset in timm's data; an ambiguous word (``car``,
    ``crane``, ``vessel``) ends the chain there, so ambiguity never leaks into unrelated classes; the
    word and its senses are kept so that a target naming one of those senses can still be matched, with
    a note. At most ``_MAX_GENUS_HOPS`` hops.
    """
    lemmas = wordnet()[0]
    seen = {synset}
    resolved: set[str] = set()
    words: set[str] = set()
    genus = _synset_genus(synset)
    for _ in range(_MAX_GENUS_HOPS + 1):
        if not genus:
            break
        words.update({genus, genus.split()[-1]})
        parent = resolve_word(genus)
        if parent is None:
            senses = tuple(s for s in _senses(genus) if s not in seen)
            return Chain(frozenset(words), frozenset(resolved), genus if len(senses) > 1 else "", senses)
        if parent in seen:
            break
        seen.add(parent)
        resolved.add(parent)
        words.update(lemmas[parent])
        genus = _synset_genus(parent)
    return Chain(frozenset(words), frozenset(resolved))


def _genus_chain(synset: str) -> frozenset[str]:
    """Words naming what ``synset`` is a kind of (see :func:`genus_chain_of`)."""
    return genus_chain_of(synset).words


def target_sense(words: set[str]) -> str | None:
    """The one WordNet synset a target names (``automobile`` -> ``car, auto, automobile, ...``), else None."""
    senses = {s for w in words for s in [resolve_word(w)] if s is not None}
    return senses.pop() if len(senses) == 1 else None
