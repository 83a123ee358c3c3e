"""Retrain a model that ships inside tagstack (src/tagstack/pretrained/) and write its model card.

    python scripts/train_default_model.py real --data /path/to/realdata [--out runs/real-model]
    python scripts/train_default_model.py corpus [--out runs/corpus-model]

``real`` (the default model, ``tagstack-real.safetensors``) trains on real
recordings: the 4Q Audio Emotion Dataset's clips with their AllMusic moods,
genres and emotion quadrant (split by artist), plus the 50 MagnaTagATune tags
of a teacher (musicnn's MTT model) as soft labels on those clips and on
windows of the Debian game soundtracks, as ``scripts/build_teacher_data.py``
writes them (``DATA/teacher/manifest.csv``). ``--labels human`` trains
``tagstack-real-4q.safetensors`` on the 4Q clips and their human labels alone
(``DATA/4q/manifest.csv``), as the first real model did. ``--distill`` trains
the five CNNs on ``DATA/teacher/manifest-distill.csv`` instead (the same
clips and tags plus a teacher's penultimate-layer features as soft labels,
``scripts/build_teacher_data.py --penultimate``), and then the global MLP
on ``manifest.csv``'s tags alone, with those CNNs (``local_from``): the
features shape the embedding but never become tags.
``corpus`` (``tagstack-corpus.safetensors``) trains on the score-rendered
default corpus. Both use the paper's five CNNs, all layers and the global
MLP, through the same orchestrator as ``tagstack run``; the weights are
stored as float16 and the card (data, licences, command, per-tag test
scores) is written beside the model.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tagstack.config import global_schedule, local_schedule, tagstack_home
from tagstack.evaluation.metrics import test_summary
from tagstack.experiments.experiment_config import ExperimentConfig
from tagstack.experiments.run import Experiment
from tagstack.fileio import atomic_write_text
from tagstack.models.file import save_model
from tagstack.report import model_card

from tagstack.models.zoo import PRETRAINED_DIR as PRETRAINED

TEACHER_DATA = (
    "Real recordings: the 900 clips (about 30 s each, 7.5 hours) of the 4Q Audio Emotion Dataset (Panda, Malheiro & "
    "Paiva, IEEE Trans. Affective Computing 2018), AllMusic previews of commercial music, with AllMusic's moods and genres "
    "and the Russell quadrant (q1-q4) as tags (the 152 with at least 20 clips; split by artist), plus 29.1 s windows of "
    "the Debian game-soundtrack packages (GPL / CC-BY(-SA) per file; split by track). Every clip also carries the 50 "
    "MagnaTagATune tags of a teacher, musicnn's MTT model (Pons & Serra 2019, ISC licence), as soft labels (its "
    "probabilities averaged over the clip); where a teacher tag has the name of a 4Q tag, the human label wins on 4Q "
    "clips. Debian windows were never annotated with 4Q's moods, genres and quadrants: those labels are unknown there "
    "and take no part in training or scoring (not negatives). Test scores of the teacher's tags measure agreement with musicnn (its probability >= 0.5 counted as "
    "present), not human judgement. Licence of the 4Q audio: none stated; AllMusic previews, research use only, not "
    "redistributable (the weights learned from them are shipped for research use). Emotify is held out for evaluation "
    "and GTZAN is never used. Built by scripts/build_real_data.py and scripts/build_teacher_data.py "
    "(docs/data/real_sources.md)."
)

DATA = {
    "real": (
        "Real recordings with human labels: the 900 clips (about 30 s each, 7.5 hours) of the 4Q Audio Emotion Dataset "
        "(Panda, Malheiro & Paiva, IEEE Trans. Affective Computing 2018), AllMusic previews of commercial music, with "
        "AllMusic's moods and genres and the Russell quadrant (q1-q4) as tags: the 152 tags with at least 20 clips. "
        "Split by artist (629 / 90 / 181). Licence: none stated; AllMusic previews, research use only, not "
        "redistributable (the weights learned from them are shipped for research use). Emotify is held out for "
        "evaluation and GTZAN is never used. Built by scripts/build_real_data.py (docs/data/real_sources.md)."
    ),
    "corpus": (
        "The default score-rendered corpus (`tagstack corpus build --size default`, seed 0): General-MIDI renderings of "
        "music21 scores, split by piece; 40 tags in 7 groups. It only knows this kind of audio: its tags on recorded music "
        "are not meaningful."
    ),
}


#: The models on pretrained backbones: which networks, at which segment lengths (frames), are aggregated
#: (chosen by the Emotify linear probe, docs/pretrained/README.md: `pretrained-xl` is every network trained on tags,
#: each at its segment length, all levels); a global MLP on the teacher manifest's tags.
PRETRAINED_RECIPES = {
    "pretrained": ("musicnn-mtt/187",),
    "pretrained-large": ("musicnn-mtt/187", "musicnn-msd/187"),
    "pretrained-xl": ("musicnn-mtt/187", "musicnn-msd/187", "won-msd-fcn/376", "won-msd-crnn/188"),
}
#: Units of each hidden layer of a recipe's global MLP where not the paper's 512: for `pretrained`, 1024 (the paper's
#: other width) scored 0.803 on the 4Q validation clips' human tags against 0.780 for 512 (docs/pretrained/README.md).
HIDDEN = {"pretrained": 1024}

PRETRAINED_DATA = (
    " Local networks: {networks}, pretrained by their authors and not trained here (their cards say on what: copyrighted "
    "audio previews of the Million Song Dataset and MagnaTagATune's Magnatune clips); every level of each is aggregated "
    "over segments of {scales} frames as the paper aggregates its CNNs, and only the global MLP was trained here."
)

DISTILL = (
    " Distillation: the five CNNs were trained on these tags plus the 200 penultimate-layer features of musicnn's {teacher} "
    "model on every clip, each feature replaced by its quantile over the clips, as soft labels, so that the CNNs order clips "
    "as the teacher's embedding does; the global MLP was then trained on the tags alone, on those CNNs' features (the "
    "feature labels are not outputs of this model)."
)


def distilled_cnns(cfg: ExperimentConfig, manifest: Path, out: Path) -> tuple[ExperimentConfig, str]:
    """Stage 1 on the distillation manifest (in ``out/distill``, resumable), its CNNs saved as a model file without a
    global model; returns ``cfg`` taking its CNNs from that file, and the card's sentence naming the teacher."""
    from tagstack.datasets.manifest import read_manifest

    tags_only, distill = read_manifest(cfg.root), read_manifest(manifest)
    if dict(zip(tags_only.paths, tags_only.splits)) != dict(zip(distill.paths, distill.splits)):
        raise SystemExit(f"{manifest} and {cfg.root} list different clips or splits: rerun scripts/build_teacher_data.py --penultimate ...")
    if not any(" penultimate " in t for t in distill.tags):
        raise SystemExit(f"{manifest} has no teacher features (tags named '... penultimate NNN')")
    cnns = out / "distilled-cnns.safetensors"
    if not cnns.is_file():
        first = Experiment(cfg.replace(root=str(manifest)), out / "distill")
        save_model(first.shell(), cnns)
    teachers = sorted({t.split()[0].upper() for t in distill.tags if " penultimate " in t})
    return cfg.replace(local_from=(str(cnns),)), DISTILL.format(teacher=" and ".join(teachers))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument(
        "which",
        choices=sorted([*DATA, *PRETRAINED_RECIPES]),
        help="pretrained: the default (musicnn MTT's levels and a global MLP); pretrained-large: musicnn MTT and MSD; "
        "pretrained-xl: the most accurate (musicnn MTT and MSD, Won et al.'s MSD FCN and CRNN); "
        "real: the paper's CNNs trained here on real music; corpus: on the rendered corpus",
    )
    p.add_argument("--scales", help="pretrained*: the branches to aggregate instead of the recipe's, e.g. musicnn-mtt/187,artist/516")
    p.add_argument("--data", type=Path, help="real: the folder scripts/build_real_data.py wrote (holding 4q/manifest.csv)")
    p.add_argument(
        "--out",
        type=Path,
        help="run directory (default: runs/real-model, runs/real-distill-model with --distill, runs/real-4q-model or runs/corpus-model)",
    )
    p.add_argument("--local-epochs", type=int, default=12, help="maximum epochs per local CNN (default: 12)")
    p.add_argument("--lr-stages", type=int, default=2, help="learning rates of the local CNNs (default: 2)")
    p.add_argument(
        "--labels",
        choices=("teacher", "human"),
        default="teacher",
        help="real: 4Q's human labels plus the teacher's on 4Q and Debian clips (default), or 4Q's human labels alone",
    )
    p.add_argument(
        "--mixup",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="mix the CNNs' training segments in pairs, weights ~ Beta(ALPHA, ALPHA) (default: 0, never)",
    )
    p.add_argument(
        "--distill",
        action="store_true",
        help="real: train the CNNs on DATA/teacher/manifest-distill.csv (tags plus a teacher's embedding as soft "
        "labels) and the global model on the tags alone",
    )
    p.add_argument("--hidden", type=int, help="units of each hidden layer of the global MLP (default: 1024 for pretrained, else 512)")
    p.add_argument("--dest", type=Path, default=PRETRAINED, help=f"folder for the model and its card (default: {PRETRAINED})")
    p.add_argument("--device", default="auto", help="torch device (default: auto)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.distill and a.which != "real":
        p.error("--distill is for the real model")
    # each recipe its own run folder: a run folder resumes, and must not mix stages of two recipes
    out = a.out or Path("runs") / (
        "real-4q-model" if a.which == "real" and a.labels == "human" else "real-distill-model" if a.distill else f"{a.which}-model"
    )
    if a.scales and a.which not in PRETRAINED_RECIPES:
        p.error("--scales is for the pretrained models")
    pretrained = a.which in PRETRAINED_RECIPES
    if a.which == "real" or pretrained:
        if a.data is None:
            p.error("real needs --data (the folder scripts/build_real_data.py wrote)")
        manifest = a.data / ("teacher" if a.labels == "teacher" else "4q") / "manifest.csv"
        if not manifest.is_file():
            p.error(
                f"{manifest} not found: run scripts/build_real_data.py"
                + (" and scripts/build_teacher_data.py" if a.labels == "teacher" else "")
            )
        dataset, root = "manifest", str(manifest)
        name = f"tagstack-{a.which}" if pretrained else "tagstack-real" if a.labels == "teacher" else "tagstack-real-4q"
        distill_manifest = manifest.with_name("manifest-distill.csv")
        if a.distill and (a.labels != "teacher" or not distill_manifest.is_file()):
            p.error("--distill needs --labels teacher and DATA/teacher/manifest-distill.csv (scripts/build_teacher_data.py --penultimate)")
    else:
        from tagstack.corpus import build_corpus

        corpus = tagstack_home() / "corpus" / "default"
        if not (corpus / "manifest.csv").exists():
            build_corpus(corpus, size="default")
        dataset, root, name = "corpus", str(corpus), "tagstack-corpus"
    scales = tuple(a.scales.split(",")) if a.scales else PRETRAINED_RECIPES.get(a.which)
    extra = dict(scales=scales, local_from=tuple(dict.fromkeys(x.split("/")[0] for x in scales))) if pretrained else {}
    hidden = a.hidden or HIDDEN.get(a.which, 512)
    cfg = ExperimentConfig(
        dataset=dataset,
        root=root,
        device=a.device,
        global_hidden=hidden,
        local=local_schedule(max_epochs=a.local_epochs, lr_stages=a.lr_stages, patience=3, mixup=a.mixup),
        global_=global_schedule(lr_stages=3, patience=6),
        **extra,
    )
    data_text = TEACHER_DATA if (a.which == "real" or pretrained) and a.labels == "teacher" else DATA[a.which]
    if pretrained:
        data_text += PRETRAINED_DATA.format(networks=", ".join(cfg.local_from), scales=", ".join(cfg.scales))
    if a.distill:
        cfg, sentence = distilled_cnns(cfg, distill_manifest, out)
        data_text += sentence
    exp = Experiment(cfg, out)
    model = exp.train_head(name="3-global" if hidden == 512 else f"3-global-{hidden}")  # widths tried in one run folder don't clash
    metrics = exp.metrics(model, exp.test_probs(model))
    command = (
        f"python scripts/train_default_model.py {a.which}"
        + (" --data DATA" if a.which == "real" or pretrained else "")
        + (f" --scales {a.scales}" if a.scales else "")
        + (f" --hidden {a.hidden}" if a.hidden else "")
        + (" --labels human" if a.which == "real" and a.labels == "human" else "")
        + (f" --local-epochs {a.local_epochs}" if a.local_epochs != 12 else "")
        + (f" --lr-stages {a.lr_stages}" if a.lr_stages != 2 else "")
        + (f" --mixup {a.mixup:g}" if a.mixup else "")
        + (" --distill" if a.distill else "")
    )
    model.info.update({"name": name, "data": data_text, "command": command, "test": test_summary(metrics["tags"], metrics["global"])})
    a.dest.mkdir(parents=True, exist_ok=True)
    save_model(model, a.dest / f"{name}.safetensors", half=not pretrained)  # converted weights stay as their authors' float32
    card = a.dest / f"{name}.md"
    docs = Path(__file__).resolve().parents[1] / "docs"
    tables = sorted((docs / "pretrained").glob("transfer*/results.md")) if pretrained else [docs / "transfer" / "results.md"]
    atomic_write_text(
        card,
        model_card(
            name,
            data=data_text,
            command=command,
            config=cfg,
            metrics=metrics,
            transfer_md="\n\n".join(t.read_text() for t in tables if t.exists()),
            transfer_doc="docs/pretrained/README.md" if pretrained else "docs/transfer/README.md",
        ),
    )
    print(f"{name}.safetensors and its card written to {a.dest}")


if __name__ == "__main__":
    main()
