"""text_vectorization: Keras TextVectorization's standardize, split, lookup and pad, without TensorFlow."""
import re

import numpy as np

# tf.strings.lower without an encoding maps only ASCII A-Z.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Keras's DEFAULT_STRIP_REGEX: [!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']
_PUNCTUATION = "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~'"
_STRIP = str.maketrans("", "", _PUNCTUATION)
# tf.strings.split() with no separator splits on ASCII whitespace only (not NBSP, \x1c, \x85 ...).
_WHITESPACE = re.compile(r"[ \t\n\v\f\r]+")


def standardize(text, mode):
    """Apply one of Keras's named standardize modes to a str."""
    if mode in ("lower", "lower_and_strip_punctuation"):
        text = text.translate(_ASCII_LOWER)
    if mode in ("strip_punctuation", "lower_and_strip_punctuation"):
        text = text.translate(_STRIP)
    return text


def split(text, mode):
    """Apply one of Keras's named split modes to a str, returning tokens."""
    if mode == "whitespace":
        return [t for t in _WHITESPACE.split(text) if t]
    if mode == "character":
        return list(text)
    return [text]


def tokenize(texts, attrs, vocabulary_index):
    """Token ids (B, L) int32 for a sequence of str; unknown tokens map to oov_index."""
    oov = attrs["oov_index"]
    ids = []
    for text in texts:  # string processing is per text by nature; the lookups are dict hits
        tokens = split(standardize(text, attrs["standardize"]), attrs["split"])
        ids.append([vocabulary_index.get(tok, oov) for tok in tokens])
    length = attrs["output_sequence_length"]
    if length is None:
        length = max((len(row) for row in ids), default=0)
    out = np.full((len(ids), length), attrs["pad_index"], dtype=np.int32)
    for row, seq in zip(out, ids):
        seq = seq[:length]
        row[:len(seq)] = seq
    return out


def text_vectorization(texts, attrs, weights, mask=None, vocabulary_index=None):
    """Strings (B,) or (B, 1) -> ids (B, L)."""
    texts = np.asarray(texts, dtype=object)
    texts = texts[:, 0] if texts.ndim == 2 else texts
    return tokenize([str(t) for t in texts], attrs, vocabulary_index)
