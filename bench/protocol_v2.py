"""Protocol v2 study: a recipe pretrained with several seeds against several random inits,
every choice made on validation, test opened once (zoo/training/protocol.py).

For each recipe: pretrain it with each of `--pretrain-seeds` (the recipe's own budget and
the plan the rules give today), build `--inits` random-init encoders of the same
architecture, then fit a linear probe and kNN at each label fraction and subset seed with
the probe penalty and k chosen on a validation subset scaled like the training subset, and
only then score the test split. Rows go to `results.jsonl`; the summary prints mean ± s.d.
over replicates x subsets and the paired bootstrap interval of SSL - random init (and SSL -
the best init) at each fraction.

    .venv/bin/python bench/protocol_v2.py --recipes moco-breastmnist ijepa-breastmnist
    .venv/bin/python bench/protocol_v2.py --recipes moco-breastmnist --max-steps 5 --smoke
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo.datasets.readers import Dataset, Split, load_dataset  # noqa: E402
from zoo.training.build import (  # noqa: E402
    load_recipes,
    plan_from_rules,
    pretrain_replicates,
    random_inits,
)
from zoo.training.protocol import evaluate_v2  # noqa: E402
from zoo.training.train import TrainConfig  # noqa: E402


def smoke_cut(ds: Dataset, n: int) -> Dataset:
    return Dataset(ds.name, {k: Split(s.images[:n], s.labels[:n]) for k, s in ds.splits.items()},
                   ds.info)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", nargs="+", required=True)
    # Unset: the recipe's own `evaluate` plan (the one `taskalign zoo build` uses).
    ap.add_argument("--pretrain-seeds", nargs="+", type=int, default=None)
    ap.add_argument("--inits", nargs="+", type=int, default=None)
    ap.add_argument("--fractions", nargs="+", type=float, default=None)
    ap.add_argument("--subset-seeds", nargs="+", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=None, help="cap pretraining (smoke)")
    ap.add_argument("--smoke", action="store_true", help="200 images per split")
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "var" / "protocol_v2")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for _, recipe in load_recipes(args.recipes):
        given = {"fractions": args.fractions, "seeds": args.subset_seeds,
                 "pretrain_seeds": args.pretrain_seeds, "inits": args.inits}
        evaluate = recipe.evaluate.model_copy(
            update={k: v for k, v in given.items() if v is not None})
        plan, pretrain_seeds = evaluate.protocol(), evaluate.pretrain_seeds or [0]
        ds = load_dataset(recipe.dataset, args.data_dir)
        if args.smoke:
            ds = smoke_cut(ds, 200)
        steps = plan_from_rules(recipe, ds.channels)
        print(f"{recipe.name}: {recipe.method} on {ds.name}, hyperparameters "
              f"{steps.hyperparameters}, augmentations {sorted(steps.policy.ops)}", flush=True)
        config = TrainConfig(**{**recipe.train, "max_steps": args.max_steps})
        ssl, seconds, _ = pretrain_replicates(recipe, ds, steps, config, pretrain_seeds,
                                              log=lambda line: print(line, flush=True))
        inits = random_inits(recipe.architecture, ds, evaluate.inits)
        rows = evaluate_v2({recipe.method: ssl, "random_init": inits}, ds.splits["train"],
                           ds.splits["val"], lambda ds=ds: ds.splits["test"], ds.num_classes,
                           ds.name, plan, log=lambda line: print(line, flush=True))
        with (args.out / "results.jsonl").open("a") as fh:
            for row in rows:
                fh.write(json.dumps({"recipe": recipe.name, "pretrain_seeds": pretrain_seeds,
                                     "inits": evaluate.inits, "pretrain_seconds": seconds,
                                     "smoke": args.smoke, **row}) + "\n")
        for row in rows:
            vs = row.get("vs_random_init")
            gap = (f"  SSL-init [{vs['diff_lo']:+.3f}, {vs['diff_hi']:+.3f}]  vs best "
                   f"[{vs['vs_best_lo']:+.3f}, {vs['vs_best_hi']:+.3f}]") if vs else ""
            print(f"  {row['arm']:>20s} {row['protocol']:>12s} {row['label_fraction']:>5.0%} "
                  f"AUC {row['auc']:.3f}±{row['auc_sd'] or 0:.3f} ACC {row['acc']:.3f} "
                  f"bal {row['balanced_acc']:.3f} (majority {row['majority_rate']:.3f}){gap}",
                  flush=True)


if __name__ == "__main__":
    main()
