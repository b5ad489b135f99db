"""What the rules vocabulary adds to a zoo search: the spellings a stored modality may have,
and the modalities a free-text query names directly or through an anatomy.

Cards store the modality as the uploader wrote it, so a filter on the canonical `xray`
must also find `X-Ray` or `cxr`. And a query such as "chest" or "thorax" should find chest
X-ray encoders although no card says "chest": the vocabulary links anatomies to the
modalities that image them (fixed anatomies, `modality:anatomy` defaults, and aliases
such as `chest_xray`). Pure Python over the vocabulary; the SQL stays in the registry.
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


def query_modalities(vocab: Vocabulary, q: str) -> set[str]:
    """Canonical modalities that the whole query names: a modality or one of its aliases
    ("cxr", "x-ray"), or an anatomy or alias ("chest", "thorax") those modalities show."""
    key = canonical_key(q)
    found: set[str] = set()
    modality = vocab.aliases["modality"].get(key)
    if modality:
        found.add(modality)
    anatomy = vocab.aliases["anatomy"].get(key)
    if anatomy:
        found |= {m for m in vocab.raw["modalities"] if anatomy in _anatomies_of(vocab, m)}
    return found
