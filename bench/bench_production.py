"""Do production (reverb, EQ, compression, noise, level, MP3), performance (drums, humanising) and a larger soundfont make the rendered corpus teach CNNs that hear records?

For every variant (a set of effects of ``tagstack.corpus.production`` and
parts of ``tagstack.corpus.performance``; ``none`` is the plain corpus)
this renders the corpus with the same pieces,
voicing and tags, trains the paper's CNNs and classifier on it with the
demo's budget (the same for every variant), and then probes every model's
features on real recordings with ``bench/bench_transfer.py`` in one run, on
the same clips and folds, beside the untrained baselines. Each step resumes.

    python bench/bench_production.py --eval DATA/emotify/genres.csv \\
        --variants none,all,drums+humanise,all@/usr/share/sounds/sf2/FluidR3_GM.sf2 \\
        --work /tmp/production --cache /tmp/bench-cache --out docs/transfer/production
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--eval", type=Path, required=True, help="CSV 'path,label' of real labelled audio (bench_transfer.py --eval)")
    p.add_argument(
        "--variants",
        default="none,all",
        help="comma-separated variants, each 'none', 'all' (every production effect) or effects and performance "
        "parts joined by '+' (e.g. reverb+eq, drums+humanise), optionally "
        "followed by @SOUNDFONT (a General-MIDI .sf2 to render with instead of TimGM6mb); default: none,all",
    )
    p.add_argument("--size", default="default", help="corpus size per variant (default: default, 100 clips per style)")
    p.add_argument("--work", type=Path, required=True, help="folder for the corpora and training runs")
    p.add_argument("--cache", type=Path, help="embedding cache of bench_transfer.py")
    p.add_argument("--out", type=Path, help="folder for the transfer results (results.md, results.json, transfer.png)")
    p.add_argument("--repeats", type=int, default=10, help="cross-validation repetitions (default: 10)")
    a = p.parse_args()

    from tagstack.corpus import build_corpus
    from tagstack.corpus.performance import PERFORMANCE
    from tagstack.corpus.production import parse_effects
    from tagstack.experiments.experiment_config import demo_config
    from tagstack.experiments.run import Experiment

    models, in_domain = [], {}
    for variant in a.variants.split(","):
        chain, _, font = variant.partition("@")
        parts = chain.split("+")
        performance = tuple(p for p in PERFORMANCE if p in parts)
        effects = parse_effects(",".join(p for p in parts if p not in PERFORMANCE))
        sound = [*performance, *(["all"] if chain == "all" else effects)]
        name = ("+".join(sound) if sound else "plain") + (f"-{Path(font).stem}" if font else "")
        corpus, run = a.work / f"corpus-{name}", a.work / f"run-{name}"
        t = time.time()
        build_corpus(
            corpus, size=int(a.size) if a.size.isdigit() else a.size, production=effects, soundfont=font or None, performance=performance
        )
        print(f"[{name}] corpus in {corpus} ({time.time() - t:.0f} s)", file=sys.stderr)
        t = time.time()
        metrics = Experiment(demo_config(corpus), run).run()
        in_domain[name] = {"roc_auc": metrics["global"]["roc_auc"], "pr_auc": metrics["global"]["pr_auc"]}
        print(f"[{name}] trained in {time.time() - t:.0f} s: corpus test ROC-AUC {in_domain[name]['roc_auc']:.4f}", file=sys.stderr)
        models.append(f"corpus-{name}={run / 'model.safetensors'}")
    cmd = [sys.executable, str(HERE / "bench_transfer.py"), "--eval", str(a.eval), "--repeats", str(a.repeats)]
    cmd += [x for m in models for x in ("--model", m)]
    cmd += (["--cache", str(a.cache)] if a.cache else []) + (["--out", str(a.out)] if a.out else [])
    subprocess.run(cmd, check=True)
    print("in-domain (each variant's own corpus test split, global model):")
    for name, m in in_domain.items():
        print(f"  {name}: ROC-AUC {m['roc_auc']:.4f}, PR-AUC {m['pr_auc']:.4f}")
    if a.out:
        (a.out / "in_domain.json").write_text(json.dumps(in_domain, indent=2) + "\n")


if __name__ == "__main__":
    main()
