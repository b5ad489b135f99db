"""What the rules vocabulary adds to a zoo search: the spellings a stored modality may have,
and the modalities a free-text query names directly or through an anatomy.

Cards store the modality as the uploader wrote it, so a filter on the canonical `xray`
must also find `X-Ray` or `cxr`. And a query such as "chest" or "thorax" should find chest
X-ray encoders although no card says "chest": the vocabulary links anatomies to the
modalities that image them (fixed anatomies, `modality:anatomy` defaults, and aliases
such as `chest_xray`). Pure Python over the vocabulary; the SQL stays in the registry.

A query of several words ("chest ct", "pneumonia x-ray") finds an encoder that matches
it as a phrase or that matches each of its words on its own: every word narrows the
result, as in any search box.
"""

from __future__ import annotations

from rules.vocabulary import Vocabulary, canonical_key


def spellings(vocab: Vocabulary, modality: str) -> set[str]:
    """Lower-case forms under which `modality` (canonical or not) may be stored."""
    entry = vocab.raw["modalities"].get(modality) or {}
    words = {modality, *(str(a) for a in entry.get("aliases", []))}
    out: set[str] = set()
    for word in words:
        low = word.strip().lower()
        key = canonical_key(low)
        out |= {low, key, key.replace("_", "-"), key.replace("_", " "), key.replace("_", "")}
    return out


def _anatomies_of(vocab: Vocabulary, modality: str) -> set[str]:
    """Anatomies the vocabulary ties to a modality (not every anatomy it could show)."""
    entry = vocab.raw["modalities"][modality]
    found = {str(a) for a in entry.get("anatomies") or []}
    found |= {key.partition(":")[2] for key in vocab.raw.get("pair_defaults", {})
              if key.partition(":")[0] == modality}
    anatomy_words = vocab.aliases["anatomy"]
    for alias in entry.get("aliases", []):
        for part in canonical_key(str(alias)).split("_"):
            if part in anatomy_words:
                found.add(anatomy_words[part])
    return found


def _lookup(table: dict[str, str], key: str) -> str | None:
    """An alias table entry, also when the query splits a compound ("chest x-ray" for the
    alias chest_xray)."""
    if key in table:
        return table[key]
    squeezed = key.replace("_", "")
    return next((v for k, v in table.items() if k.replace("_", "") == squeezed), None)


def query_anatomy(vocab: Vocabulary, q: str) -> str | None:
    """The canonical anatomy a query word names ("thorax" -> chest), if any."""
    return _lookup(vocab.aliases["anatomy"], canonical_key(q))


def anatomy_words(vocab: Vocabulary, anatomy: str) -> set[str]:
    """Lower-case words under which free text may mention an anatomy."""
    entry = vocab.raw["anatomies"].get(anatomy) or {}
    words = {anatomy, *(str(a) for a in entry.get("aliases") or [])}
    return {w.lower().replace("_", " ") for w in words}


def query_modalities(vocab: Vocabulary, q: str) -> set[str]:
    """Canonical modalities that the whole query names: a modality or one of its aliases
    ("cxr", "x-ray"), or an anatomy or alias ("chest", "thorax") those modalities show."""
    key = canonical_key(q)
    found: set[str] = set()
    modality = _lookup(vocab.aliases["modality"], key)
    if modality:
        found.add(modality)
    anatomy = query_anatomy(vocab, q)
    if anatomy:
        found |= {m for m in vocab.raw["modalities"] if anatomy in _anatomies_of(vocab, m)}
    return found


def query_words(q: str) -> list[str]:
    """The words of a query, in order and without repeats; a single word gives []: it is
    already the whole query."""
    words = list(dict.fromkeys(w for w in q.replace(",", " ").split() if w))
    return words if len(words) > 1 else []
