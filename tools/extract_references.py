"""Turn the review's bibliography into rules/references.yaml.

Run once when the seed text changes; the YAML it writes is committed so that the
rules package never depends on ../shared at run time.
    python tools/extract_references.py ../shared/seeds/task-aligned-ssl-review.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ENTRY = re.compile(r"^\s*•\s*\[(\d+)\]\s*(.+?)\s*\((\d{4})\)\s*(.+)$")

# Sources the review does not list but which the method catalog needs: the original
# papers of methods named in the issue, and the second seed.
EXTERNAL = [
    {"id": "ext:grill2020", "authors": "J.-B. Grill, F. Strub, F. Altché, et al.", "year": 2020,
     "title": "Bootstrap your own latent: a new approach to self-supervised learning",
     "venue": "NeurIPS 33"},
    {"id": "ext:caron2021", "authors": "M. Caron, H. Touvron, I. Misra, et al.", "year": 2021,
     "title": "Emerging properties in self-supervised vision transformers", "venue": "ICCV"},
    {"id": "ext:zbontar2021", "authors": "J. Zbontar, L. Jing, I. Misra, Y. LeCun, S. Deny",
     "year": 2021,
     "title": "Barlow Twins: self-supervised learning via redundancy reduction", "venue": "ICML"},
    {"id": "ext:chen2021simsiam", "authors": "X. Chen, K. He", "year": 2021,
     "title": "Exploring simple Siamese representation learning", "venue": "CVPR"},
    {"id": "ext:assran2023", "authors": "M. Assran, Q. Duval, I. Misra, et al.", "year": 2023,
     "title": "Self-supervised learning from images with a joint-embedding predictive "
              "architecture", "venue": "CVPR"},
    {"id": "ext:xie2022simmim", "authors": "Z. Xie, Z. Zhang, Y. Cao, et al.", "year": 2022,
     "title": "SimMIM: a simple framework for masked image modeling", "venue": "CVPR"},
    {"id": "ext:chen2020mocov2", "authors": "X. Chen, H. Fan, R. Girshick, K. He", "year": 2020,
     "title": "Improved baselines with momentum contrastive learning", "venue": "arXiv:2003.04297"},
    {"id": "seed2", "authors": "Ivezić, Pleasure, et al.", "year": 2026,
     "title": "Pretext Matters: an empirical study of SSL methods in medical imaging",
     "venue": "arXiv:2603.22649",
     "note": "Second seed: JEA for spatially localised signal, JEPA for globally structured "
             "signal; both more noise-robust than pixel reconstruction."},
    {"id": "ext:2606.13315", "authors": "(3D brain MRI disease-detection study)", "year": 2026,
     "title": "MAE with a spectral-domain loss ahead of JEPA for 3D brain MRI disease detection",
     "venue": "arXiv:2606.13315",
     "note": "Cited by the project's design notes as counter-evidence outside the two "
             "modalities Pretext Matters tested."},
]


def parse(text: str) -> list[dict]:
    refs = []
    in_refs = False
    for line in text.splitlines():
        if line.strip() == "References":
            in_refs = True
            continue
        if not in_refs:
            continue
        m = ENTRY.match(line)
        if not m:
            continue
        number, authors, year, rest = m.groups()
        rest, _, cited = rest.partition("Cited by:")
        parts = re.split(r"(?<=[.?])\s", rest.strip(), maxsplit=1)
        title = parts[0].rstrip(".")
        venue = parts[1].strip().rstrip(".") if len(parts) > 1 else ""
        sections = sorted({s.strip().lstrip("§").rstrip(".") for s in cited.split(",")
                           if s.strip()})
        refs.append({"id": int(number), "authors": authors.strip(), "year": int(year),
                     "title": title, "venue": venue, "cited_in": sections})
    return refs


def main(path: str) -> None:
    refs = parse(Path(path).read_text(encoding="utf-8"))
    numbers = [r["id"] for r in refs]
    assert numbers == list(range(1, len(numbers) + 1)), "bibliography not contiguous"
    out = Path(__file__).resolve().parents[1] / "rules" / "references.yaml"
    doc = {
        "source": "Task-aligned SSL in medical imaging: a review of 75 studies (2026), "
                  f"bibliography [1]-[{len(refs)}]; extra entries are prefixed ext: or named "
                  "seed2.",
        "references": refs + EXTERNAL,
    }
    out.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100),
                   encoding="utf-8")
    print(f"wrote {len(refs)} review references + {len(EXTERNAL)} external to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/seeds/task-aligned-ssl-review.txt")
