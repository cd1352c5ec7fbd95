"""Class names: one set of rules for typed text, files and the model; linear time."""

from __future__ import annotations

import time

import pytest

from ovseg.vocabulary import (
    VocabularyError,
    name_key,
    parse_class_names,
    parse_vocabulary,
    read_vocabulary_file,
    validate_class_names,
)


def test_repeats_that_differ_in_case_or_spacing_are_one_class():
    vocab = parse_vocabulary("sky, Sky;  tree\nSKY , big   dog, Big Dog")
    assert vocab.names == ["sky", "tree", "big dog"]
    assert vocab.merged == [("Sky", "sky"), ("SKY", "sky"), ("Big Dog", "big dog")]
    assert "merged 3 repeated class name(s)" in vocab.notice and "'Sky' = 'sky'" in vocab.notice
    assert parse_vocabulary("a, b").notice is None


def test_the_parser_and_the_model_agree():
    """Whatever the parser returns, the model takes; what the model calls a repeat, the
    parser merged."""
    text = "sky, Sky, straße, STRASSE, tree ,  Tree, ǅ, ǆ"
    names = parse_class_names(text)
    assert validate_class_names(names) == names
    assert len({name_key(n) for n in names}) == len(names)
    with pytest.raises(VocabularyError, match="'Sky' repeats 'sky'"):
        validate_class_names(["sky", "Sky"])
    with pytest.raises(VocabularyError, match="repeats"):
        validate_class_names(["big dog", " big  dog "])


def test_files_follow_the_same_rules(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# comment\nbuilding, edifice\n\nSky\nsky\nBuilding,  edifice\n")
    vocab = read_vocabulary_file(path)
    assert vocab.names == ["building, edifice", "Sky"]
    assert vocab.merged == [("sky", "Sky"), ("Building, edifice", "building, edifice")]


def test_parsing_is_linear():
    """110k distinct names (the 0.9 MB field that took 69.5 s) and 110k repeats."""
    distinct = ", ".join(f"c{i}" for i in range(110_000))
    repeats = ", ".join("C0" if i % 2 else "c0" for i in range(110_000))
    for text in (distinct, repeats):
        start = time.perf_counter()
        parse_vocabulary(text)
        assert time.perf_counter() - start < 2.0  # quadratic de-dup took over a minute


@pytest.mark.parametrize(
    "text, words", [("", "empty vocabulary"), (" ,;\n", "empty vocabulary"), ("x" * 201, "longer")]
)
def test_unusable_text_is_a_vocabulary_error(text, words):
    with pytest.raises(VocabularyError, match=words):
        parse_vocabulary(text)
    assert issubclass(VocabularyError, ValueError)


def test_others_alone_in_demo_mode_is_a_vocabulary_error(tiny_model):
    """Demo mode appends 'others' to a single name, so 'others' alone (any case) cannot be
    segmented there; it is the user's own class in eval mode or beside other names."""
    import numpy as np

    import ovseg

    predictor = ovseg.Predictor(tiny_model)
    predictor.set_image(np.zeros((32, 48, 3), np.uint8))
    for names in (["others"], ["Others"]):
        with pytest.raises(VocabularyError, match="'others' alone cannot be segmented"):
            predictor.predict(names, mode="demo")
    assert predictor.predict(["others"], mode="eval").class_names == ["others"]
    assert predictor.predict(["sky", "others"], mode="demo").class_names == ["sky", "others"]
