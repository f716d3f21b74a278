"""Exact deduplication (hash of normalised text) and near-duplicate removal with MinHash LSH.

The first example of a group is kept; later ones are removed and listed with the one they repeat, so
the report can show each cluster. Near duplicates: Jaccard similarity of word n-gram shingles of the
case-folded words (punctuation dropped) of the non-system turns. Candidates come from MinHash locality-sensitive hashing
(datasketch), so the cost grows with the number of examples, not with its square; each candidate's
similarity is then computed exactly, since the MinHash estimate has a standard error of ~0.035 there.
"""

from __future__ import annotations

import hashlib
import re
import sys
import zlib

from datasketch import LeanMinHash, MinHash, MinHashLSH
from tqdm import tqdm

from hone.data.curate.steps import StepReport, example_text, excerpt
from hone.data.formats import Example

MAX_CLUSTERS_SHOWN = 200  # the report lists this many clusters; counts always cover all of them
# LSH banded for the threshold itself misses ~60% of pairs right at it; banding lower finds ~99% of them.
CANDIDATE_FACTOR = 0.75
ESTIMATE_MARGIN = 0.1  # ~3 standard errors: a pair estimated this far below the threshold is not checked exactly
_WORD = re.compile(r"\w+")


def normalised_text(example: Example) -> str:
    """Roles and contents, case-folded, with punctuation-insensitive single spacing."""
    return "\n".join(f"{m['role']}: {' '.join(_WORD.findall(m['content'].casefold()))}" for m in example.messages)


def compared_text(example: Example) -> str:
    """What near-duplicate detection compares: the conversation without its system turns, which examples share by
    design (a long shared system prompt would make every short example a near duplicate of every other)."""
    return "\n".join(m["content"] for m in example.messages if m["role"] != "system")


def _text_key(example: Example) -> bytes:
    return hashlib.blake2b(normalised_text(example).encode(), digest_size=16).digest()


def _where(example: Example, **extra) -> dict:
    return {"source": example.source, "line": example.line, "excerpt": excerpt(example_text(example)), **extra}


class _Clusters:
    """Kept example -> the examples removed as its duplicates, in input order."""

    def __init__(self) -> None:
        self.groups: dict[int, dict] = {}

    def add(self, kept: Example, removed: Example, **extra) -> None:
        group = self.groups.setdefault(id(kept), {"kept": _where(kept), "removed": []})
        group["removed"].append(_where(removed, **extra))

    def summary(self) -> dict:
        groups = list(self.groups.values())
        return {"clusters_total": len(groups), "clusters": groups[:MAX_CLUSTERS_SHOWN]}


def exact_dedup(examples: list[Example]) -> tuple[list[Example], StepReport]:
    """Remove examples whose normalised text equals an earlier example's."""
    report = StepReport("exact_dedup", params={"normalisation": "case-folded words, roles kept"})
    first_seen: dict[bytes, Example] = {}
    clusters = _Clusters()
    kept = []
    for example in examples:
        original = first_seen.setdefault(_text_key(example), example)
        if original is example:
            kept.append(example)
            continue
        report.remove(example, "exact_duplicate", f"same text as {original.source}:{original.line}")
        clusters.add(original, example)
    report.count("kept", len(kept))
    report.extra = clusters.summary()
    return kept, report


def _hash32(data: bytes) -> int:
    """A fast, stable 32-bit hash (the same on every run, unlike Python's salted hash())."""
    return zlib.crc32(data)


def shingles(text: str, size: int) -> set[bytes]:
    """Word n-grams of the case-folded words, punctuation dropped; a text shorter than n words is one shingle."""
    words = _WORD.findall(text.casefold())
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + size]).encode() for i in range(len(words) - size + 1)}


class _Signer:
    """MinHash signatures with shared permutations; hashing is vectorised over all shingles at once."""

    def __init__(self, num_perm: int, seed: int = 1):
        self.template = MinHash(num_perm=num_perm, seed=seed, hashfunc=_hash32)

    def sign(self, grams: set[bytes]) -> LeanMinHash:
        minhash = self.template.copy()
        minhash.update_batch(list(grams))
        return LeanMinHash(minhash)


def jaccard(a: set[bytes], b: set[bytes]) -> float:
    """Exact Jaccard similarity of two shingle sets."""
    return len(a & b) / len(a | b)


def near_dedup(examples: list[Example], threshold: float = 0.8, shingle_words: int = 5,
               num_perm: int = 128) -> tuple[list[Example], StepReport]:
    """Remove examples whose Jaccard similarity (of word shingles) to a kept example is >= threshold."""
    report = StepReport("near_dedup", params={"threshold": threshold, "shingle_words": shingle_words,
                                              "num_perm": num_perm,
                                              "method": "MinHash LSH candidates (datasketch), exact Jaccard"})
    lsh = MinHashLSH(threshold=threshold * CANDIDATE_FACTOR, num_perm=num_perm)
    signer = _Signer(num_perm)
    signatures: dict[int, LeanMinHash] = {}
    clusters = _Clusters()
    kept = []
    progress = tqdm(examples, desc="near-duplicates", unit="ex", file=sys.stderr, disable=None)
    for index, example in enumerate(progress):
        signature, match, similarity = _near_match(example, examples, lsh, signatures, signer, threshold,
                                                   shingle_words)
        if match is None:
            lsh.insert(index, signature, check_duplication=False)
            signatures[index] = signature
            kept.append(example)
            continue
        original = examples[match]
        report.remove(example, "near_duplicate", f"{similarity:.2f} similar to {original.source}:{original.line}")
        clusters.add(original, example, similarity=round(similarity, 3))
    report.count("kept", len(kept))
    report.extra = clusters.summary()
    return kept, report


def _near_match(example: Example, pool: list[Example], lsh: MinHashLSH, signatures: dict, signer: _Signer,
                threshold: float, size: int) -> tuple[LeanMinHash, int | None, float]:
    """The example's signature and the most similar example of `pool` indexed in `lsh` at or above the
    threshold (its index and similarity; None when there is none)."""
    grams = shingles(compared_text(example), size)
    signature = signer.sign(grams)
    candidates = [c for c in lsh.query(signature) if signatures[c].jaccard(signature) >= threshold - ESTIMATE_MARGIN]
    match, similarity = _best_match(pool, candidates, grams, threshold, size)
    return signature, match, similarity


def _best_match(examples: list[Example], candidates: list[int], grams: set[bytes], threshold: float,
                size: int) -> tuple[int | None, float]:
    """The most similar kept example among the LSH candidates whose exact similarity reaches the threshold."""
    best, best_similarity = None, 0.0
    for candidate in candidates:
        similarity = jaccard(shingles(compared_text(examples[candidate]), size), grams)
        if similarity >= threshold and (similarity > best_similarity or
                                        (similarity == best_similarity and candidate < best)):
            best, best_similarity = candidate, similarity
    return best, best_similarity


def dedup_against(examples: list[Example], existing: list[Example], threshold: float = 0.8, shingle_words: int = 5,
                  num_perm: int = 128) -> tuple[list[Example], StepReport]:
    """Remove examples that repeat one of `existing` (data the model already has): the same normalised text, or a
    Jaccard similarity of word shingles >= threshold."""
    report = StepReport("dedup_against_existing", params={"existing_examples": len(existing), "threshold": threshold,
                                                          "shingle_words": shingle_words, "num_perm": num_perm})
    exact = {_text_key(e): e for e in existing}
    lsh = MinHashLSH(threshold=threshold * CANDIDATE_FACTOR, num_perm=num_perm)
    signer = _Signer(num_perm)
    signatures = {}
    for index, example in enumerate(existing):
        signatures[index] = signer.sign(shingles(compared_text(example), shingle_words))
        lsh.insert(index, signatures[index], check_duplication=False)
    kept = []
    for example in examples:
        same = exact.get(_text_key(example))
        if same is not None:
            report.remove(example, "duplicate_of_existing", f"the same text as {same.source}:{same.line}")
            continue
        _, match, similarity = _near_match(example, existing, lsh, signatures, signer, threshold, shingle_words)
        if match is None:
            kept.append(example)
            continue
        original = existing[match]
        report.remove(example, "near_duplicate_of_existing",
                      f"{similarity:.2f} similar to {original.source}:{original.line}")
    report.count("kept", len(kept))
    return kept, report
