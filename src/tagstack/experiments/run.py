"""The one orchestrator: every entry point (``run``, the per-stage commands, ``reproduce``,
the demo, the shipped model's script, the Python API) drives an :class:`Experiment`.

A run directory mirrors the stages::

    RUN/
      config.toml            the resolved ExperimentConfig
      dataset.txt            clips and positives per tag per split
      1-local/<frames>/      stage 1: last.pt (resume point), best.pt, history.json
      2-aggregate/           stage 2: features.npy (all layers, all scales), local_probs_<frames>.npy, layout.json, inputs.json
      3-global/...           stage 3: one folder per global model (last.pt, best.pt, history.json)
      4-joint/               joint fine-tuning, when asked for
      model.safetensors      the whole tagger as one self-describing file
      metrics.json           local and global test metrics (macro, per tag, per group)
      report.md, plots/      the report and its figures

Every stage reuses what is on disk and says so, so an interrupted run
started again with the same command continues where it stopped. What a
stage stored records what it was made from (:mod:`tagstack.provenance`):
run again with another schedule, other clips or labels, or other CNNs
(``local_from``), a stage stops with one line naming its folder and what
changed rather than mixing the two. Another slice of scales or layers is
read from the stored features (``tagstack global --scales 27,108``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import PAPER_SCALES, FrontEndConfig, tagstack_home
from ..datasets import ClipSet, load_dataset
from ..datasets.melcache import MelCache
from ..errors import DatasetError, ParameterError
from ..evaluation.metrics import binary_targets, bootstrap_ci, evaluate, group_metrics, scorable_tags, test_summary
from ..fileio import atomic_save_npy, atomic_write_json, atomic_write_text, remove_leftovers
from ..models.aggregation import FeatureBlock, select_columns
from ..models.classifier import GlobalArch, GlobalMLP
from ..models.file import load_model, save_model
from ..models.local import build_local_cnn
from ..models.tagging_model import Branch, TaggingModel
from ..models.zoo import resolve_model
from ..provenance import data_digest, differences, weights_digest
from ..runtime import choose_device, rank_zero_first
from ..train.stages import extract_features, finetune_joint, model_clip_probs, train_global, train_local
from .experiment_config import ExperimentConfig, order_scales, save_config

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A dataset with its mel cache, restricted to the clips whose frames are cached.

    Stages address clips only through :meth:`rows` (their rows in ``mels``)
    and :meth:`labels` (aligned with those rows), so no caller juggles two
    index spaces.
    """

    clips: ClipSet
    mels: np.ndarray
    mel_rows: np.ndarray  # row in ``mels`` of each clip of ``clips``
    frames: np.ndarray  # frames of audio of every row of ``mels`` (the rest of a short clip is padding)
    report: dict
    digest: str  # of the clips, splits, labels and front end: part of every stored result's key
    frontend: FrontEndConfig  # of ``mels``
    other: dict[FrontEndConfig, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)  # other front ends' caches

    def rows(self, split: str) -> np.ndarray:
        """The rows in :attr:`mels` of the clips of ``split`` (train, valid, test)."""
        return self.mel_rows[self.clips.indices(split)]

    def inputs(self, model: TaggingModel) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The mel caches and audio frames of ``model``'s front ends, in :attr:`TaggingModel.frontends` order."""
        pairs = [(self.mels, self.frames) if fe == self.frontend else self.other[fe] for fe in model.frontends]
        return [m for m, _ in pairs], [f for _, f in pairs]

    def labels(self, split: str) -> np.ndarray:
        """The labels of the clips of ``split``, aligned with :meth:`rows`."""
        return self.clips.labels[self.clips.indices(split)]


class Experiment:
    """One configuration, one run directory; each stage computed once and reused.

    Parameters
    ----------
    config : ExperimentConfig
        Already validated; saved as ``config.toml`` in ``run_dir`` when the first stage starts.
    run_dir : str or Path
        The run directory (created when needed); what an earlier run of the same configuration stored there is
        reused, so an interrupted run continues where it stopped.
    clips : ClipSet, optional
        The dataset, when the caller has it in memory (else ``config`` names it).

    Examples
    --------
    >>> exp = Experiment(ExperimentConfig(dataset="gtzan", root="data/gtzan"), "runs/gtzan")  # doctest: +SKIP
    >>> metrics = exp.run()                            # the three stages, the model file and the report
    >>> model = exp.train_head(scales=("27", "54"))    # another global model on the stored features
    """

    def __init__(self, config: ExperimentConfig, run_dir: str | Path, *, clips: ClipSet | None = None) -> None:
        self.config = config
        # Under torchrun every process runs the whole experiment (training is shared through DDP) in
        # this same directory; only rank 0 writes files (fileio.writes_here).
        self.dir = Path(run_dir)
        self.device = choose_device(config.device)
        self._clips = clips
        self._prepared = False
        self._data: Prepared | None = None
        self._local: dict[str, nn.Module] | None = None
        self._branches: list[Branch] = []
        self._outputs: dict[str, list[str]] = {}  # what each local network outputs: this dataset's tags, or another vocabulary
        self._features: dict | None = None
        self._cnn_digests: dict[str, str] = {}  # scale -> digest of its CNN, set by features()

    def prepare(self) -> None:
        """Create the run directory, remove what an interrupted run left half-written, and record the configuration
        (kept as it is when stages of an earlier attempt are stored). Every stage calls it first; it runs once."""
        if self._prepared:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ParameterError(f"{self.dir}: cannot create the run directory ({e.strerror})") from None
        removed = remove_leftovers(self.dir)
        if removed:
            log.info("removed %d unfinished temporary files an interrupted run left in %s", removed, self.dir)
        stages = ("1-local", "2-aggregate", "3-global", "4-joint")
        if not (self.dir / "config.toml").exists() or not any((self.dir / x).exists() for x in stages):
            self.save_config()  # a new directory, or one where an earlier attempt stopped before any stage stored a result
        self._prepared = True

    def save_config(self) -> None:
        """Record this experiment's configuration as the run directory's ``config.toml``."""
        save_config(self.config, self.dir / "config.toml")

    # ------------------------------------------------------------ data
    @property
    def data(self) -> Prepared:
        """The dataset and its mel cache (built or resumed on first use)."""
        self.prepare()
        if self._data is None:
            c = self.config
            clips = self._clips or load_dataset(c.dataset, c.root, split=c.split, split_dir=c.split_dir, merge=c.merge_synonyms)
            frontend = self._main_frontend()
            cache = MelCache(clips, cache_dir=c.cache_dir or tagstack_home() / "mels", frontend=frontend)
            with rank_zero_first():  # under torchrun the first process builds the cache, the others then open it
                report = cache.build(workers=c.workers, device=self.device, engine=c.engine, ray_address=c.ray_address)
            kept = clips.subset(cache.valid)
            for split in ("train", "valid", "test"):
                if len(kept.indices(split)) < 2:
                    raise DatasetError(f"{clips.root}: only {len(kept.indices(split))} usable clips in split '{split}'")
            self._data = Prepared(
                clips=kept,
                mels=cache.mels,
                mel_rows=np.flatnonzero(cache.valid),
                frames=cache.frames,
                report=report,
                digest=data_digest(kept.paths, splits=kept.splits, labels=kept.labels, tags=kept.tags, frontend=frontend),
                frontend=frontend,
            )
            self._all_clips = clips
            atomic_write_text(self.dir / "dataset.txt", kept.summary() + "\n")
        return self._data

    def _main_frontend(self) -> FrontEndConfig:
        """The front end of the mel cache every stage reads: the paper's CNNs' when the experiment has any (they are
        trained on it), else the first pretrained network's, so that no cache is built for frames nothing reads."""
        c = self.config
        if any(s.isdigit() for s in c.scales):
            return c.frontend
        first = self.branches[0]
        return self.local_models()[first.network].frontend or c.frontend

    def _cache_frontends(self, model: TaggingModel) -> None:
        """Build (or resume) the mel caches of the front ends ``model`` reads besides the experiment's own."""
        d, c = self.data, self.config
        for fe in model.frontends:
            if fe == d.frontend or fe in d.other:
                continue
            cache = MelCache(self._all_clips, cache_dir=c.cache_dir or tagstack_home() / "mels", frontend=fe)
            with rank_zero_first():
                cache.build(workers=c.workers, device=self.device, engine=c.engine, ray_address=c.ray_address)
            if not cache.valid[d.mel_rows].all():
                raise DatasetError(f"{self._all_clips.root}: some clips decoded for one front end and not for another")
            d.other[fe] = (cache.mels, cache.frames)

    def check_scorable(self) -> None:
        """Before any training: every split must have a tag with positive and negative clips, or validation and the
        test scores could not be computed (found now, not after three stages)."""
        clips = self.data.clips
        for split in ("train", "valid", "test"):
            if not scorable_tags(clips.labels[clips.indices(split)]).any():
                raise DatasetError(
                    f"{clips.root}: no tag has both positive and negative clips in split '{split}', "
                    "so it cannot be scored; give it more varied clips"
                )

    # ------------------------------------------------------------ stage 1
    def local_models(self) -> dict[str, nn.Module]:
        """Stage 1: the local networks by name: the paper's CNNs trained here (or resumed, or reused), and
        networks taken from ``local_from`` (transfer learning; pretrained backbones)."""
        if self._local is not None:
            return self._local
        self.prepare()
        c = self.config
        networks, branches, outputs = {}, {}, {}
        for ref in c.local_from:
            source = load_model(resolve_model(ref))
            for name, net in source.local_models.items():
                if net.frontend is None and source.frontend != c.frontend:
                    raise ParameterError(f"{ref}: its CNNs read the front end {source.frontend}, not this experiment's {c.frontend}")
                if net.frontend is not None:  # a backbone reads its own front end, over this experiment's clips
                    net.frontend = net.frontend.over_window(c.frontend.clip_seconds)
                networks[name] = net
                outputs[name] = list(source.tags) if net.n_outputs == len(source.tags) else []
            branches.update({b.name: b for b in source.branches})
        trained = [s for s in c.scales if s not in branches and "/" not in s]
        self._branches = [
            branches[s] if s in branches else Branch(s.split("/")[0], int(s.split("/")[1])) if "/" in s else Branch(s, int(s))
            for s in c.scales
        ]
        if c.local_from:
            log.info(
                "stage 1: local networks of %s taken from %s (transfer learning)",
                [s for s in c.scales if s not in trained],
                ", ".join(c.local_from),
            )
        if trained:
            d = self.data
            self.check_scorable()
            for i, scale in enumerate(trained, 1):
                log.info("stage 1: local CNN %d of %d (%s frames)", i, len(trained), scale)
                torch.manual_seed(c.local.seed)
                model = build_local_cnn(int(scale), n_tags=len(d.clips.tags), n_mels=c.frontend.n_mels)
                train_local(
                    model,
                    d.mels,
                    train_rows=d.rows("train"),
                    valid_rows=d.rows("valid"),
                    train_labels=d.labels("train"),
                    valid_labels=d.labels("valid"),
                    config=c.local,
                    workdir=self.dir / "1-local" / scale,
                    device=self.device,
                    inputs={"data": d.digest, "outputs": len(d.clips.tags)},
                    frames=d.frames,
                )
                networks[scale], outputs[scale] = model.cpu(), list(d.clips.tags)
        used = {b.network for b in self._branches}
        self._local = {n: m for n, m in networks.items() if n in used}
        self._outputs = {n: outputs[n] for n in self._local}
        return self._local

    @property
    def branches(self) -> list[Branch]:
        """The scales of this experiment as (network, segment length) pairs, in feature order."""
        self.local_models()
        return self._branches

    def shell(self, *, scales=None, layers=None, head: GlobalMLP | None = None, **extra) -> TaggingModel:
        """The experiment's networks and branches as a :class:`TaggingModel` (with ``head`` when given)."""
        return TaggingModel(
            self.local_models(),
            head,
            tags=self.data.clips.tags,
            frontend=self.config.frontend,
            branches=self.branches,
            scales=scales,
            layers=layers,
            **extra,
        )

    def own_outputs(self) -> dict[str, list[str]]:
        """The names of each scale's network's own outputs (empty for a network without outputs)."""
        return {b.name: self._outputs[b.network] for b in self.branches}

    @property
    def local_scored(self) -> list[str]:
        """The scales whose networks output this dataset's tags, so that their own predictions can be scored on it
        (not so for networks from ``local_from`` with another vocabulary, as in the paper's transfer learning)."""
        tags = list(self.data.clips.tags)
        return [b.name for b in self.branches if self._outputs[b.network] == tags]

    # ------------------------------------------------------------ stage 2
    def features(self) -> dict:
        """Stage 2: every layer of every scale for every clip, extracted once and stored.

        Returns ``features`` (clips x all features of this experiment's scales,
        in clip order of ``data.clips``) and ``local_probs`` (scale -> clips x
        tags). Stored features of more scales are sliced; features of other
        clips or other CNNs are refused.
        """
        if self._features is not None:
            return self._features
        out = self.dir / "2-aggregate"
        f_path = out / "features.npy"
        extractor = self.shell()
        d = self.data
        scales = extractor.local_scales
        key = {"data": d.digest, "cnns": {s: weights_digest(extractor.network_of(s)) for s in scales}}
        if f_path.exists():
            feats = self._stored_features(out, key, extractor)
            probs = {s: np.load(out / f"local_probs_{_file_name(s)}.npy") for s in scales}
            log.info("stage 2: features reused from %s", f_path)
        else:
            log.info("stage 2: aggregating every layer of %d branches over %d clips", len(scales), len(d.mel_rows))
            self._cache_frontends(extractor)
            mels, frames = d.inputs(extractor)
            feats, probs = extract_features(extractor.to(self.device).eval(), mels, rows=d.mel_rows, frames=frames, device=self.device)
            for s, p in probs.items():
                atomic_save_npy(out / f"local_probs_{_file_name(s)}.npy", p)
            atomic_write_json(out / "layout.json", [b.__dict__ for b in extractor.layout])
            atomic_write_json(out / "inputs.json", key)
            atomic_save_npy(f_path, feats)  # last: its presence says the stage is complete
        self._cnn_digests = key["cnns"]
        self._features = {"features": feats, "local_probs": {s: probs[s] for s in scales}}
        return self._features

    def _stored_features(self, out: Path, key: dict, extractor: TaggingModel) -> np.ndarray:
        """The stored features of ``models``' scales, after checking they were extracted from these clips and CNNs."""
        if not (out / "inputs.json").exists():  # an earlier tagstack's, which also averaged short clips' padding
            raise ParameterError(
                f"{out}: features extracted by an earlier tagstack, which did not record their inputs; "
                "delete that folder to extract them again, or use another run folder"
            )
        stored = json.loads((out / "inputs.json").read_text())
        both = [s for s in key["cnns"] if s in stored["cnns"]]  # a scale it lacks is named by the layout check below
        changed = differences(
            {"data": stored["data"], "cnns": {s: stored["cnns"][s] for s in both}},
            {"data": key["data"], "cnns": {s: key["cnns"][s] for s in both}},
        )
        if changed:
            raise ParameterError(
                f"{out}: features extracted from other {', '.join(changed)}; run the same command as "
                "before, or use another run folder (or delete this one's 2-aggregate to extract them again)"
            )
        layout = [FeatureBlock(**b) for b in json.loads((out / "layout.json").read_text())]
        scales = extractor.local_scales
        shape = [(b.scale, b.layer, b.stop - b.start) for b in extractor.layout]
        if [(b.scale, b.layer, b.stop - b.start) for b in layout if b.scale in scales] != shape:
            raise ParameterError(
                f"{out}: the stored features are of scales {list(dict.fromkeys(b.scale for b in layout))}, not of "
                f"the networks of scales {list(scales)}; use another run folder (or delete this one's 2-aggregate)"
            )
        cols = select_columns(layout, scales=scales)
        feats = np.load(out / "features.npy")
        return feats if len(cols) == feats.shape[1] else feats[:, cols]

    # ------------------------------------------------------------ stage 3
    def train_head(
        self,
        *,
        scales: tuple[str | int, ...] | None = None,
        layers: tuple[int, ...] | None = None,
        seed: int | None = None,
        name: str = "3-global",
    ) -> TaggingModel:
        """Stage 3: a global classifier on the chosen slice of the stored features, as a whole tagger."""
        c = self.config
        self.check_scorable()
        d, feats = self.data, self.features()["features"]
        if scales is None and layers is None:  # the configured model; otherwise exactly the slice asked for
            scales, layers = c.scales, c.layers
        scales = c.scales if scales is None else tuple(str(s) for s in scales)
        cols = self.shell(scales=scales, layers=layers).columns.numpy()
        schedule = c.global_ if seed is None else dataclasses.replace(c.global_, seed=seed)
        log.info("stage 3: global classifier %s on %d features", name, len(cols))
        torch.manual_seed(schedule.seed)
        head = GlobalMLP(GlobalArch(n_features=len(cols), n_outputs=len(d.clips.tags), hidden=c.global_hidden, task=d.clips.task))
        x = feats[:, cols]
        tr, va = d.clips.indices("train"), d.clips.indices("valid")
        inputs = {
            "data": d.digest,
            "cnns": {str(s): self._cnn_digests[str(s)] for s in scales},
            "columns": cols.tolist(),
            "hidden": c.global_hidden,
        }
        train_global(
            head,
            x_train=x[tr],
            y_train=d.clips.labels[tr],
            x_valid=x[va],
            y_valid=d.clips.labels[va],
            config=schedule,
            workdir=self.dir / name,
            device=self.device,
            inputs=inputs,
        )
        return self.shell(scales=scales, layers=layers, head=head.cpu(), info={"dataset": d.clips.name}, groups=d.clips.groups)

    def test_probs(self, model: TaggingModel) -> np.ndarray:
        """Test-set probabilities of a staged tagger, from the stored features (the same head as inference)."""
        test = self.data.clips.indices("test")
        with torch.inference_mode():
            return model.cpu().eval().proba_from_features(torch.from_numpy(self.features()["features"][test])).numpy()

    def global_model(self, *, scales: tuple[str, ...], layers: tuple[int, ...] | None) -> tuple[str, dict]:
        """Stage 3 as ``tagstack global`` runs it: the configured global classifier, trained (or reused) in a folder
        named after the slice ``scales`` and ``layers`` as the command line gave them, and its test metrics.

        The paper's scales with every layer are :meth:`run`'s own ``3-global``;
        any other slice gets a folder of its own (``3-global-s27-54-l1-3``), so
        that slices tried one after another live side by side in one run
        directory. The name follows the flags as typed, not as the
        configuration orders them, so that the same command finds its folder
        again.

        Returns
        -------
        name, metrics : str, dict
            The folder under the run directory, and the test metrics as :func:`~tagstack.evaluation.metrics.evaluate`
            gives them.
        """
        default = tuple(scales) == order_scales(PAPER_SCALES) and layers is None
        name = "3-global" if default else f"3-global-s{'-'.join(scales).replace('/', '@')}-l{'-'.join(map(str, layers or ['all']))}"
        model = self.train_head(name=name)
        clips = self.data.clips
        return name, evaluate(binary_targets(clips.labels[clips.indices("test")]), self.test_probs(model), task=clips.task)

    # ------------------------------------------------------------ joint fine-tuning
    def finetune(self, staged: TaggingModel, *, name: str = "4-joint") -> tuple[TaggingModel, np.ndarray]:
        """Joint fine-tuning of a copy of ``staged`` end to end; returns it and its test probabilities."""
        if self.config.joint is None:
            raise ParameterError("this experiment has no joint schedule (config.joint)")
        d = self.data
        model = copy.deepcopy(staged).to(self.device)
        log.info("joint fine-tuning of the whole tagger (%d epochs at most)", self.config.joint.max_epochs)
        self._cache_frontends(model)
        mels, frames = d.inputs(model)
        finetune_joint(
            model,
            mels,
            train_rows=d.rows("train"),
            valid_rows=d.rows("valid"),
            train_labels=d.labels("train"),
            valid_labels=d.labels("valid"),
            config=self.config.joint,
            workdir=self.dir / name,
            device=self.device,
            inputs={"data": d.digest, "start": weights_digest(staged)},
            frames=frames,
        )
        return model.cpu().eval(), model_clip_probs(model, mels, rows=d.rows("test"), device=self.device, frames=frames)

    # ------------------------------------------------------------ the standard run
    def run(self) -> dict:
        """All three stages, test metrics, the model file and the report; returns the metrics.

        Returns
        -------
        metrics : dict
            As :func:`run_experiment` returns them (also written to ``metrics.json``).
        """
        from ..report import write_report

        d = self.data
        model = self.train_head()
        probs = self.test_probs(model)
        metrics = self.metrics(model, probs)
        model.info.update({"config": _portable(self.config), "test": test_summary(d.clips.tags, metrics["global"])})
        save_model(model, self.dir / "model.safetensors")
        atomic_write_json(self.dir / "metrics.json", metrics)
        self.save_config()
        write_report(self.dir, metrics, clips=d.clips)
        return metrics

    def metrics(self, model: TaggingModel, global_probs: np.ndarray) -> dict:
        """Test metrics of every local CNN (when it outputs these tags) and of the global model, with per-group means and
        a bootstrap interval."""
        d = self.data
        test = d.clips.indices("test")
        y = binary_targets(d.clips.labels[test])
        out = {
            "dataset": d.clips.name,
            "n_clips": {s: int(len(d.clips.indices(s))) for s in ("train", "valid", "test")},
            "tags": d.clips.tags,
            "skipped_files": d.report["skipped"],
            "local": {},
            "global": {},
        }
        scored = self.local_scored
        for s, p in self.features()["local_probs"].items():
            if s not in scored:
                continue
            m = evaluate(y, p[test], task="multilabel")
            m["groups"] = group_metrics(d.clips, m["per_tag"]["roc_auc"])
            out["local"][str(s)] = m
        g = evaluate(y, global_probs, task=d.clips.task)
        g["groups"] = group_metrics(d.clips, g["per_tag"]["roc_auc"])
        g["roc_auc_ci95"] = bootstrap_ci(y, global_probs, n_boot=self.config.n_boot)
        out["global"] = g
        return out


def _file_name(scale: str) -> str:
    """A scale's name as part of a file name (``musicnn-msd/187`` -> ``musicnn-msd@187``)."""
    return scale.replace("/", "@")


def _portable(config: ExperimentConfig) -> dict:
    """The configuration for a model file, without what belongs to this machine (paths, device, workers, engine)."""
    from ..config import to_dict

    d = to_dict(config)
    for key in ("root", "cache_dir", "split_dir", "local_from", "device", "workers", "engine", "ray_address"):
        d.pop(key, None)
    return d


def run_experiment(config: ExperimentConfig, run_dir: str | Path, *, clips: ClipSet | None = None) -> dict:
    """All three stages of ``config`` into ``run_dir``; the metrics also written to ``metrics.json``.

    The run directory then holds the whole tagger (``model.safetensors``, for :class:`~tagstack.Tagger`),
    ``report.md`` with its figures, and every stage's results, reused when the same command runs again.

    Parameters
    ----------
    config : ExperimentConfig
        The dataset, scales, layers, schedules and seeds (validated when it was built).
    run_dir : str or Path
        The run directory (created when needed; an interrupted run there continues).
    clips : ClipSet, optional
        The dataset, when the caller has it in memory (else ``config`` names it).

    Returns
    -------
    metrics : dict
        Test metrics: ``dataset``, ``n_clips`` (per split), ``tags``, ``skipped_files``, ``local`` (scale ->
        the local network's own scores, for networks that output these tags) and ``global``; each with
        ``roc_auc``, ``pr_auc`` (macro, over ``n_tags_evaluated`` tags), ``per_tag`` (``roc_auc`` and ``pr_auc``
        lists in tag order; NaN, ``null`` in the file, for a tag with one class in the test split) and ``groups``
        (tag group -> mean ROC-AUC); ``global`` adds
        ``roc_auc_ci95`` (95% bootstrap interval) and, for single-label data, ``accuracy``.

    Raises
    ------
    ParameterError
        A run directory that holds results of other settings, data or networks (it names what differs).
    DatasetError
        A dataset that cannot be read, or splits too small or too uniform to score.
    """
    return Experiment(config, run_dir, clips=clips).run()
