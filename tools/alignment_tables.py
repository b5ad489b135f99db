"""Print markdown tables of the seed zoo's measured evaluations (zoo/seed/*/card.json),
for docs/alignment-study.md. Numbers are copied from the cards, never typed by hand.

    .venv/bin/python tools/alignment_tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

SEED = Path(__file__).resolve().parents[1] / "zoo" / "seed"


def fmt(e: dict | None) -> str:
    if e is None:
        return "-"
    spread = f" ± {e['spread']:.3f}" if e.get("spread") is not None else ""
    return f"{e['value']:.3f}{spread}"


def main() -> None:
    cards = [json.loads(p.read_text()) for p in sorted(SEED.glob("*/card.json"))]
    print("| encoder | family | method | dataset | protocol | 1 % | 10 % | 100 % |")
    print("|---|---|---|---|---|---|---|---|")
    for c in cards:
        for protocol in ("linear_probe", "random_init_linear_probe", "knn", "random_init_knn",
                         "fine_tune", "random_init_fine_tune"):
            row = {e["label_fraction"]: e for e in c["evaluation"]
                   if e["protocol"] == protocol and e["metric"] == "AUC"}
            if not row:
                continue
            print(f"| {c['name']} | {c['pretext']['family']} | {c['pretext']['method_id']} | "
                  f"{c['pretraining_data']['name']} | {protocol} | {fmt(row.get(0.01))} | "
                  f"{fmt(row.get(0.1))} | {fmt(row.get(1.0))} |")
    print()
    print("| encoder | LP 10 % - random-init LP 10 % (AUC) | train minutes | final loss |")
    print("|---|---|---|---|")
    classifiers = [c for c in cards if any(e["metric"] == "AUC" for e in c["evaluation"])]
    for c in classifiers:
        ev = {(e["protocol"], e["label_fraction"]): e["value"] for e in c["evaluation"]
              if e["metric"] == "AUC"}
        gain = ev.get(("linear_probe", 0.1), float("nan")) - ev.get(
            ("random_init_linear_probe", 0.1), float("nan"))
        train = c["pretext"]["hyperparameters"].get("train", {})
        print(f"| {c['name']} | {gain:+.3f} | {train.get('seconds', 0) / 60:.1f} | "
              f"{train.get('final_loss', float('nan')):.3f} |")


def segmentation() -> None:
    """Segmentation encoders: U-Net test Dice (and HD95, surface Dice) from SSL vs random
    weights, over training seeds."""
    cards = [json.loads(p.read_text()) for p in sorted(SEED.glob("*/card.json"))]
    print()
    print("| encoder | dataset | init | masks | Dice | HD95 (mm) | surface Dice |")
    print("|---|---|---|---|---|---|---|")
    for c in cards:
        rows = {(e["protocol"], e["label_fraction"], e["metric"]): e
                for e in c["evaluation"] if e["metric"] == "DICE" or
                e["metric"] in ("HD95_MM", "SURFACE_DICE")}
        for fraction in (0.1, 1.0):
            for protocol, init in (("fine_tune", c["pretext"]["method_id"]),
                                   ("random_init_fine_tune", "random")):
                if (protocol, fraction, "DICE") not in rows:
                    continue
                cells = [fmt(rows.get((protocol, fraction, m)))
                         for m in ("DICE", "HD95_MM", "SURFACE_DICE")]
                print(f"| {c['name']} | {c['pretraining_data']['name']} | {init} | "
                      f"{fraction:.0%} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
    segmentation()
