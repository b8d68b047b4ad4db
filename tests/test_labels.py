"""Tests of hf_finetune.labels.matching: which pretrained classifier rows start each target class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_MODELS
from timm.data import ImageNetInfo

from hf_finetune.errors import ConfigError
from hf_finetune.labels.genus import definition_genus
from hf_finetune.labels.imagenet import imagenet_offset
from hf_finetune.labels.mapping_file import parse_label_mapping
from hf_finetune.labels.matching import match_labels
from hf_finetune.labels.names import normalize_label
from hf_finetune.labels.report import MATCH_KINDS, LabelMappingReport, LabelMatch

INFO = ImageNetInfo()
TIMM_NAMES = [INFO.index_to_description(i) for i in range(1000)]
BG_NAMES = ["background", *TIMM_NAMES]
HOTDOG = 934
MOBILENET_CONFIG = SHARED_MODELS / "hf-mobilenet_v2_1.0_224" / "config.json"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def one(target: str, source=TIMM_NAMES, **kw) -> LabelMatch:
    report = match_labels([target], source, **kw)
    assert len(report.matches) == 1
    return report.matches[0]


# ---------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hot_Dog", "hot dog"),
        ("  Hot-Dog  ", "hot dog"),
        ("not_hotdog", "not hotdog"),
        ("Not Hotdog", "not hotdog"),
        ("cat-o'-nine-tails", "cat o nine tails"),
        ("hotdog, hot dog,  red hot", "hotdog hot dog red hot"),
        ("ÉCLAIR", "éclair"),
        ("", ""),
    ],
)
def test_normalize_label(raw, expected):
    assert normalize_label(raw) == expected


def test_match_kinds_are_the_documented_ones():
    assert MATCH_KINDS == (
        "explicit",
        "exact",
        "synonym",
        "plural",
        "synset",
        "head",
        "definition",
        "complement",
        "none",
    )


# ------------------------------------------------------------------------------ ImageNet detection
def test_imagenet_offset_detection():
    assert imagenet_offset(TIMM_NAMES) == 0
    assert imagenet_offset(BG_NAMES) == 1
    assert imagenet_offset(INFO.label_names()) == 0  # synset ids as labels
    assert imagenet_offset(TIMM_NAMES[:999]) is None
    assert imagenet_offset(["background", *TIMM_NAMES[:999], "x"]) == 1  # 999 of 1000 agree
    assert imagenet_offset(["background", "x", *TIMM_NAMES[:999]]) is None  # shifted: none agree
    tweaked = list(TIMM_NAMES)
    for i in range(0, 1000, 50):  # 20 differently spelt classes (2%) still count as ImageNet
        tweaked[i] = tweaked[i].upper() + " (variant)"
    assert imagenet_offset(tweaked) == 0
    assert imagenet_offset([f"class {i}" for i in range(1000)]) is None


# ------------------------------------------------------------------------------ single-row levels
@pytest.mark.parametrize("target", ["hotdog", "hot dog", "Hot_Dog", "HOT-DOG", "red hot"])
def test_hotdog_synonym_on_timm_names(target):
    m = one(target)
    assert (m.kind, m.source_indices, m.source_names) == ("synonym", [HOTDOG], ["hotdog, hot dog, red hot"])
    assert m.note == ""


def test_hotdog_on_synthetic_1001_labels_uses_background_offset():
    report = match_labels(["hotdog", "not_hotdog"], BG_NAMES)
    assert report.imagenet_offset == 1
    assert report.num_source_labels == 1001
    assert report.matches[0].source_indices == [HOTDOG + 1]
    complement = report.matches[1]
    assert complement.kind == "complement"
    assert complement.source_indices == [i for i in range(1, 1001) if i != HOTDOG + 1]  # background excluded


@pytest.mark.skipif(not MOBILENET_CONFIG.is_file(), reason=f"{MOBILENET_CONFIG} not found (../shared)")
def test_hotdog_on_real_mobilenet_labels():
    id2label = json.loads(MOBILENET_CONFIG.read_text())["id2label"]
    labels = [id2label[str(i)] for i in range(len(id2label))]
    report = match_labels(["hotdog", "not_hotdog"], labels)
    assert report.imagenet_offset == 1
    assert report.matches[0].source_indices == [935]
    assert report.matches[0].kind == "synonym"
    assert report.matches[1].kind == "complement" and 935 not in report.matches[1].source_indices
    assert len(report.matches[1].source_indices) == 999


def test_complement_for_not_x_and_other():
    names = [ImageNetInfo().index_to_description(i) for i in range(1000)]
    report = match_labels(["hotdog", "not_hotdog"], names)
    assert report.matches[1].kind == "complement"
    assert report.matches[1].source_indices == [i for i in range(1000) if i != HOTDOG]
    # "not X" where X is not a target but a source label
    alone = match_labels(["Non-Hotdog"], names).matches[0]
    assert (
        alone.kind == "complement" and HOTDOG not in alone.source_indices and len(alone.source_indices) == 999
    )
    rest = match_labels(["goldfish", "tench", "other"], names).matches[2]
    assert (
        rest.kind == "complement"
        and {0, 1}.isdisjoint(rest.source_indices)
        and len(rest.source_indices) == 998
    )
    # no matched target: "other" stays a fresh row
    assert match_labels(["other"], names).matches[0].kind == "none"
    # explicit none wins
    assert match_labels(["hotdog", "not_hotdog"], names, {"not_hotdog": None}).matches[1].kind == "none"


def test_exact_synonym_plural_none():
    assert one("hotdog, hot dog, red hot").kind == "exact"
    ant = one("ant")
    assert (ant.kind, ant.source_names) == ("synonym", ["ant, emmet, pismire"])
    ants = one("ants")
    assert (ants.kind, ants.source_indices) == ("plural", ant.source_indices)
    assert one("daisies").source_names == ["daisy"]
    none = one("zebra crossing sign")
    assert (none.kind, none.source_indices, none.candidates) == ("none", [], [])


def test_synset_id_and_background_offset():
    synsets = INFO.label_names()
    assert synsets[HOTDOG] == "n07697537"
    m = one("n07697537")
    assert (m.kind, m.source_indices) == ("synset", [HOTDOG])
    assert one("n07697537", BG_NAMES).source_indices == [HOTDOG + 1]
    assert one("n07697537", ["a", "b"]).kind == "none"  # not ImageNet: synset ids mean nothing


def test_synset_id_labels_match_by_name():
    synsets = list(INFO.label_names())
    m = one("hot dog", synsets)
    assert (m.kind, m.source_indices) == ("synonym", [HOTDOG])


def test_ambiguous_crane_merges_both_and_says_so():
    m = one("crane")
    assert m.kind == "exact"
    assert m.source_indices == m.candidates == [134, 517]
    assert m.note.startswith("ambiguous: 2 candidates (134: crane [")
    assert "517: crane [" in m.note and "bird" in m.note and "merged all 2" in m.note


def test_ambiguous_first_synonym_wins():
    m = one("bat", ["bat, chiroptera", "cricket bat, bat", "ball"])
    assert (m.kind, m.source_indices, m.candidates) == ("synonym", [0], [0, 1])
    assert "chose 0 (first synonym)" in m.note
    # maillot is a whole ImageNet label (row 638) and a synonym of 639: the exact level wins alone
    assert one("maillot").source_indices == [638]


def test_background_never_matches_automatically():
    assert one("background", BG_NAMES).kind == "none"
    assert one("background", ["background", "cat"]).kind == "none"
    forced = one("background", ["background", "cat"], mapping={"background": "background"})
    assert (forced.kind, forced.source_indices) == ("explicit", [0])


def test_two_targets_may_share_a_row():
    report = match_labels(["hotdog", "hot dog"], TIMM_NAMES)
    assert [m.source_indices for m in report.matches] == [[HOTDOG], [HOTDOG]]


# ------------------------------------------------------------------------------- many-to-one levels
CATS = {
    281: "tabby, tabby cat",
    282: "tiger cat",
    283: "Persian cat",
    284: "Siamese cat, Siamese",
    285: "Egyptian cat",
}


def test_head_match_for_cat_on_imagenet():
    m = one("cat")
    assert m.kind in ("head", "definition")
    assert set(CATS) <= set(m.source_indices)
    assert m.candidates == m.source_indices
    assert 383 not in m.source_indices  # "Madagascar cat" is a lemur: its definition vetoes the head match
    assert "not confirmed" in m.note
    assert set(CATS) <= set(one("cats").source_indices)


def test_head_match_on_plain_labels():
    labels = ["tabby cat", "tiger cat", "hot dog", "dog sled", "cat"]
    m = one("kitty", labels)
    assert m.kind == "none"
    dog = one("dogs", labels)  # no ImageNet definitions here: any compound ending in "dog" counts
    assert (dog.kind, dog.source_indices) == ("head", [2])
    cats = one("cats", labels)
    assert (cats.kind, cats.source_indices) == ("plural", [4])  # single-row levels come first


@pytest.mark.parametrize(
    ("row", "genus"),
    [(151, "dog"), (281, "cat"), (404, "airplane"), (510, "ship"), (537, "sled"), (934, "frankfurter")],
)
def test_definition_genus_examples(row, genus):
    definition = INFO.index_to_description(row, detailed=True).split(": ", 1)[1]
    assert definition_genus(definition) == genus


def test_definition_genus_heuristic_details():
    assert definition_genus("any of several breeds of small to medium-sized gun dogs") == "dog"
    assert definition_genus("an English breed having a plumed tail") == ""  # no genus named
    assert definition_genus("large long-necked wading bird of marshes") == "bird"
    assert definition_genus("") == ""


def test_definition_level_dog():
    m = one("dog")
    assert m.kind == "definition"
    assert 151 in m.source_indices and 162 in m.source_indices  # Chihuahua, beagle (beagle -> hound -> dog)
    assert HOTDOG not in m.source_indices  # "hot dog" is a frankfurter
    assert 537 not in m.source_indices  # dogsled is a sled
    shifted = one("dog", ["x", *TIMM_NAMES[:999]])  # not ImageNet: no definitions, compounds only
    assert shifted.kind == "head" and HOTDOG + 1 in shifted.source_indices
    sled = one("sled")
    assert 537 in sled.source_indices


CAR_ROWS = {
    436,
    468,
    511,
    609,
    627,
    661,
    751,
    817,
}  # beach wagon, cab, convertible, jeep, limo, Model T, racer, sports car


def test_synonym_of_a_genus_reaches_its_classes():
    # "automobile" is a synonym of WordNet's "car, auto, automobile, machine, motorcar"; ImageNet defines
    # a sports car as "a small low car ...", and "car" also names a railcar and an elevator car.
    m = one("automobile")
    assert m.kind == "definition"
    assert set(m.source_indices) == CAR_ROWS
    assert 565 not in m.source_indices and 705 not in m.source_indices  # freight car, passenger car
    assert "through the synonyms 'car, auto, automobile, machine, motorcar'" in m.note
    assert "may also mean: car, railcar; car, elevator car" in m.note  # the ambiguity is said, not hidden
    assert set(one("motorcar").source_indices) == CAR_ROWS
    # a target that names no single WordNet sense gains nothing from it
    assert one("jet").kind == "none"


def test_cifar10_rows_per_class_table():
    report = match_labels(CIFAR10, TIMM_NAMES)
    print()
    print(f"{'target':<11}{'kind':<12}{'rows':>5}  examples")
    for m in report.matches:
        names = "; ".join(n.split(",")[0] for n in m.source_names[:4])
        print(f"{m.target:<11}{m.kind:<12}{len(m.source_indices):>5}  {names}")
    print(report.table())
    counts = {m.target: len(m.source_indices) for m in report.matches}
    # lower bounds observed with timm 1.0.31's WordNet data (dog 89, bird 43, cat 7, ship 6, truck 5, ...)
    assert counts["dog"] >= 85
    assert counts["bird"] >= 40
    assert counts["cat"] >= 5 and counts["ship"] >= 5 and counts["truck"] >= 5
    assert counts["frog"] >= 3 and counts["airplane"] >= 1 and counts["horse"] >= 1
    assert counts["automobile"] == 8  # the car rows, through WordNet's "car, auto, automobile, ..."
    assert counts["deer"] == 0  # ImageNet-1k has no deer
    kinds = {m.target: m.kind for m in report.matches}
    assert kinds["deer"] == "none"
    assert all(m.kind in ("head", "definition") for m in report.reused)
    assert set(report.matches[5].source_indices) <= set(range(151, 281))  # dog rows are dogs


# --------------------------------------------------------------------------------- explicit mapping
def test_explicit_mapping_wins_and_lists_and_none():
    mapping = {"hotdog": "hotdog, hot dog, red hot", "dog": ["n02085620", "beagle"], "other": None}
    report = match_labels(["dog", "hotdog", "other", "ant"], TIMM_NAMES, mapping=mapping)
    dog, hotdog, other, ant = report.matches
    assert (dog.kind, dog.source_indices, dog.source_names) == (
        "explicit",
        [151, 162],
        ["Chihuahua", "beagle"],
    )
    assert (hotdog.kind, hotdog.source_indices) == ("explicit", [HOTDOG])
    assert (other.kind, other.source_indices, other.note) == ("none", [], "explicit: none")
    assert ant.kind == "synonym"
    for value in ("none", [], "off"):
        assert one("hotdog", mapping={"hotdog": value}).note == "explicit: none"
    assert one("hotdog", mapping={"hotdog": "red hot"}).source_indices == [HOTDOG]
    keyed = one("Hot Dog", mapping={"hot_dog": "red hot"})  # keys match targets after normalization too
    assert (keyed.kind, keyed.source_indices) == ("explicit", [HOTDOG])


def test_explicit_mapping_errors():
    with pytest.raises(ConfigError, match=r"key 'hotdgo' is not one of .*did you mean 'hotdog'"):
        match_labels(["hotdog", "not_hotdog"], TIMM_NAMES, mapping={"hotdgo": "hotdog"})
    with pytest.raises(ConfigError, match=r"'hot dgo' is not a source label.*did you mean 'hot dog'"):
        match_labels(["hotdog"], TIMM_NAMES, mapping={"hotdog": "hot dgo"})
    with pytest.raises(ConfigError, match=r"'crane' is ambiguous.*134: 'crane'.*517: 'crane'"):
        match_labels(["bird"], TIMM_NAMES, mapping={"bird": "crane"})
    with pytest.raises(ConfigError, match=r"label_mapping\['bird'\]"):
        match_labels(["bird"], TIMM_NAMES, mapping={"bird": 3})
    with pytest.raises(ConfigError) as info:
        match_labels(["x"], ["a", "b"], mapping={"x": "c"})
    assert "is not a source label" in str(info.value) and "\n" not in str(info.value)


def test_auto_false_maps_only_explicit_entries():
    report = match_labels(["hotdog", "ant"], TIMM_NAMES, mapping={"ant": "ant"}, auto=False)
    assert [m.kind for m in report.matches] == ["none", "explicit"]
    assert report.reused == [report.matches[1]]


# ------------------------------------------------------------------------------------------ report
def test_report_round_trip_and_table():
    report = match_labels(["hotdog", "crane", "cat", "not_hotdog", "dog"], BG_NAMES)
    data = json.loads(json.dumps(report.to_dict()))
    again = LabelMappingReport.from_dict(data)
    assert again == report
    assert again.imagenet_offset == 1 and again.num_source_labels == 1001
    table = report.table(max_sources=2)
    for target in ("hotdog", "crane", "cat", "not_hotdog", "dog"):
        assert target in table
    assert "935: hotdog, hot dog, red hot" in table
    assert "more" in table  # the cat and dog rows are truncated
    lines = table.splitlines()
    assert len(lines) == 2 + 5
    assert len({line.index("|") for line in lines if "|" in line}) == 1  # aligned columns
    assert [m.target for m in report.reused] == ["hotdog", "crane", "cat", "not_hotdog", "dog"]


# ------------------------------------------------------------------------------- recipe values
def test_parse_label_mapping(tmp_path: Path):
    assert parse_label_mapping(None) == (True, None)
    assert parse_label_mapping("auto") == (True, None)
    assert parse_label_mapping("AUTO") == (True, None)
    assert parse_label_mapping("none") == (False, None)
    assert parse_label_mapping("off") == (False, None)
    assert parse_label_mapping(False) == (False, None)
    assert parse_label_mapping({"dog": ["beagle"], "x": None}) == (True, {"dog": ["beagle"], "x": None})
    assert parse_label_mapping('{"hotdog": "hot dog"}') == (True, {"hotdog": "hot dog"})
    yaml_file = tmp_path / "map.yaml"
    yaml_file.write_text("hotdog: hot dog\nother: null\ndog: [n02085620, beagle]\n")
    assert parse_label_mapping(str(yaml_file)) == (
        True,
        {"hotdog": "hot dog", "other": None, "dog": ["n02085620", "beagle"]},
    )
    json_file = tmp_path / "map.json"
    json_file.write_text('{"a": "b"}')
    assert parse_label_mapping(json_file) == (True, {"a": "b"})


@pytest.mark.parametrize("bad", [3, "sometimes", "[1, 2]", '{"a": ', ["a"], "missing.yaml", {"a": 3}])
def test_parse_label_mapping_errors(bad, tmp_path):
    with pytest.raises(ConfigError, match="label_mapping") as info:
        parse_label_mapping(bad)
    assert "\n" not in str(info.value)


def test_parse_label_mapping_file_not_holding_a_dict(tmp_path):
    f = tmp_path / "list.yml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        parse_label_mapping(str(f))


def test_number_words_are_never_a_genus():
    """`sandwich`'s definition starts "two or more slices of bread": digits named `two` must not map to
    cheeseburger through it (found by `hf-finetune map-labels` on the demo's digits)."""
    names = [INFO.index_to_description(i) for i in range(1000)]
    report = match_labels(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"], names
    )
    assert [m.kind for m in report.matches] == ["none"] * 10
