"""Decide which rows of a pretrained classifier start each target class.

When a classifier pretrained on *source* labels (usually ImageNet-1k, or one of the larger ImageNet sets of
:mod:`hf_finetune.labels.label_sets`: 12k, 21k/22k) is fine-tuned on *target* labels,
a target class that corresponds to one or more source classes starts from those classifier rows instead
of a fresh one. This module only decides the rows and records how (:mod:`hf_finetune.labels.report`);
copying them is done elsewhere.

Source labels are arbitrary strings, usually ImageNet style: comma-separated synonyms such as
``"hotdog, hot dog, red hot"``. Names are compared after :func:`~hf_finetune.labels.names.normalize_label`
(casefold, ``_``/``-``/punctuation to spaces) and also in a *compact* form without spaces, so ``hotdog``,
``hot dog``, ``Hot-Dog`` and ``hot_dog`` are all the same name.

For every target label an explicit ``mapping`` entry wins. Otherwise the first level with any match wins:

1. ``exact``       the target equals the whole source label.
2. ``synonym``     the target equals one of the label's comma-separated synonyms.
3. ``plural``      a singular/plural variant of the target (``ants`` -> ``ant``, ``daisies`` -> ``daisy``)
                   equals a synonym.
4. ``synset``      the target is a WordNet synset id (``n07697537``) and the sources are a known ImageNet set.
5. ``head``        many-to-one: the target (or its singular/plural) is the last word of a multi-word
                   synonym (``cat`` -> ``tabby cat``, ``Persian cat``, ...).
6. ``definition``  many-to-one, known ImageNet sets only: the target is the genus of the class's WordNet
                   definition (``Chihuahua: an old breed of tiny short-haired dog ...`` -> ``dog``), or the
                   genus of that genus, and so on (:mod:`hf_finetune.labels.genus`). A target that
                   names one WordNet sense reaches its synonyms' classes too (``automobile`` is
                   ``car, auto, automobile, machine, motorcar``, so ``sports car: a small low car ...``
                   matches); when that genus word has other senses (``car`` is also a railcar) the
                   match's note lists them.

Levels 5 and 6 form one many-to-one stage, because English compounds are a weak signal on their own
(a ``hot dog`` is no dog, a ``sea lion`` no lion) and definitions are the stronger one: on ImageNet
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
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hf_finetune.errors import ConfigError, suggest
from hf_finetune.labels.genus import genus_chain_of, target_sense, wordnet
from hf_finetune.labels.imagenet import BACKGROUND, SYNSET_RE
from hf_finetune.labels.label_sets import recognize_label_set
from hf_finetune.labels.names import name_forms, normalize_label, number_variants, synonyms
from hf_finetune.labels.report import LabelMappingReport, LabelMatch

__all__ = ["match_labels"]

# Targets that name "everything but X" (``not_hotdog``, ``non-food``) or "everything else" (``other``).
_NEGATION_RE = re.compile(r"^(?:not|non|no)\s+(.+)$")
_REST_WORDS = frozenset({"other", "others", "rest", "unknown", "misc", "miscellaneous", "everything else"})
_NONE_WORDS = ("none", "null", "off", "fresh")


class _Source:
    """Pre-normalized source labels; ``known`` is their ImageNet label set when they are one."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = [str(s) for s in labels]
        self.known = recognize_label_set(self.labels)
        self.offset = self.known.offset if self.known is not None else None
        known = self.known.label_set if self.known is not None else None
        self.synset_row = {s: i + self.known.offset for i, s in enumerate(known.synsets)} if known else {}
        self.row_synset = {row: s for s, row in self.synset_row.items()}
        self.whole: list[set[str]] = []
        self.syns: list[list[str]] = []
        for row, label in enumerate(self.labels):
            text = label
            if known is not None and row in self.row_synset and SYNSET_RE.match(label.strip()):
                text = known.descriptions[row - self.known.offset]  # synset-id labels: match on the names
            self.whole.append(name_forms(normalize_label(text)))
            self.syns.append(synonyms(text))
        self.background = {i for i, s in enumerate(self.labels) if normalize_label(s) == BACKGROUND}
        # name form -> rows, so that a 21k-row source is searched by lookups rather than row by row
        self.whole_index: dict[str, list[int]] = {}
        self.syn_index: dict[str, list[int]] = {}
        self.last_word: dict[str, list[tuple[int, str]]] = {}  # multi-word synonyms by their last word
        for row in self.rows():
            for form in self.whole[row]:
                self.whole_index.setdefault(form, []).append(row)
            for name in self.syns[row]:
                for form in name_forms(name):
                    self.syn_index.setdefault(form, []).append(row)
                if " " in name:
                    self.last_word.setdefault(name.split()[-1], []).append((row, name))

    def rows(self) -> Iterable[int]:
        return (i for i in range(len(self.labels)) if i not in self.background)

    def lookup(self, index: Mapping[str, list[int]], forms: Iterable[str]) -> list[int]:
        """The rows (ascending, background excluded) that ``index`` has for any of ``forms``."""
        return sorted({row for form in forms for row in index.get(form, ())})

    def describe(self, row: int) -> str:
        text = f"{row}: {self.labels[row]}"
        synset = self.row_synset.get(row)
        if synset is not None:
            definition = self.known.label_set.definitions[row - self.known.offset]
            short = definition if len(definition) <= 40 else definition[:40].rstrip() + "..."
            text += f" [{short}]"
        return text


@functools.lru_cache(maxsize=4)
def _source(labels: tuple[str, ...]) -> _Source:
    """The (read-only) :class:`_Source` of ``labels``, built once: a 21k-row set takes about a second."""
    return _Source(labels)


def _names_match(forms: set[str], names: Iterable[str]) -> bool:
    return any(name_forms(n) & forms for n in names)


def _single_level(target: str, source: _Source) -> tuple[str, list[int]] | None:
    """Levels 1-4; returns (kind, candidate rows) of the first level with any match."""
    norm = normalize_label(target)
    if not norm:
        return None
    forms = name_forms(norm)
    variants = set().union(*(name_forms(v) for v in number_variants(norm)))
    levels = [
        ("exact", source.lookup(source.whole_index, forms)),
        ("synonym", source.lookup(source.syn_index, forms)),
        ("plural", source.lookup(source.syn_index, variants)),
    ]
    for kind, rows in levels:
        if rows:
            return kind, rows
    synset = target.strip()
    if SYNSET_RE.match(synset) and synset in source.synset_row:
        row = source.synset_row[synset]
        if row not in source.background:
            return "synset", [row]
    return None


def _many_level(target: str, source: _Source) -> tuple[str, list[int], str] | None:
    """Levels 5-6 (head + definition); returns (kind, rows, note) or None."""
    norm = normalize_label(target)
    if not norm:
        return None
    words = {norm} | number_variants(norm)
    head_rows = sorted({row for word in words for row, s in source.last_word.get(word, ()) if s not in words})
    def_rows: list[int] = []
    vetoed: list[int] = []
    sense_rows: list[int] = []  # reached through a synonym of the target (automobile -> car)
    open_words: dict[str, tuple[str, ...]] = {}  # ambiguous genus word -> its senses, for the note
    sense = target_sense(words) if source.offset is not None else None
    if source.offset is not None:
        for i in source.rows():
            synset = source.row_synset.get(i)
            if synset is None:
                continue
            chain = genus_chain_of(synset)
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
            lemmas = wordnet()[0]
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
            forms = name_forms(normalize_label(target))
            first = [i for i in rows if source.syns[i] and name_forms(source.syns[i][0]) & forms]
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
    if SYNSET_RE.match(text) and text in source.synset_row:
        return source.synset_row[text]
    forms = name_forms(normalize_label(text))
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
    source = _source(tuple(str(s) for s in source_labels))
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
    name = source.known.label_set.name if source.known is not None else None
    return LabelMappingReport(matches, len(source.labels), source.offset, label_set=name)


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
                if other.source_indices and name_forms(normalize_label(other.target)) & name_forms(inner):
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
