"""Diagnosis from connectivity across sites: roiset beside the classic baselines, one command.

``symprep train BIDS_DIR DERIVATIVES_DIR --model roiset`` (or on an ABIDE Preprocessed folder)
runs leave-site-out cross-validation (every site held out once). Inside each training fold:

1. Fisher-z Pearson FC of each subject's ROI series (:func:`~pipeline.models.roi_data.fc_matrices`);
2. ComBat on the FC edges (:func:`pipeline.gauge.build_harmonizer`), **fitted on the training
   fold only**; the held-out site, unseen in that fit, gets its own location/scale from its
   own FC with everything else frozen (:meth:`~pipeline.gauge.ComBat.add_sites`: no labels are
   used), also when it has fewer subjects than ComBat's unseen-site minimum (the demo's 4; see
   :func:`harmonize_fold`);
3. models, all on the same split:

   - ``roiset``: :class:`~pipeline.models.roiset.RoiSet` on the (harmonized) FC matrix (plus ROI
     coordinates with ``hparams.coords``), trained by the one engine
     (:func:`~pipeline.models.training.run_training`) with the engine's early stopping on a
     validation split of the training fold (the epoch of lowest validation loss is kept;
     ``patience`` stops early, ``lr_schedule`` sets the learning rate);
   - ``tangent_logreg``: tangent-space FC (nilearn ``ConnectivityMeasure(kind="tangent")``,
     reference fitted on the training fold, harmonized the same way) and l2 logistic
     regression, Abraham et al. 2017's best pipeline;
   - ``flat_mlp``: :class:`~pipeline.models.roiset.FlatMLP` on the flattened FC.

``metrics.json`` holds per fold and overall (pooled over every held-out subject) accuracy,
balanced accuracy and AUC per model; ``predictions.tsv`` every held-out prediction.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from pipeline.errors import ConfigError
from pipeline.io import write_json, write_text
from pipeline.models.options import ModelOptions
from pipeline.models.roi_data import RoiData, fc_matrices
from pipeline.models.training import (
    TrainingTask,
    run_training,
    seed_everything,
    stratified_holdout,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "RoiExperiment",
    "add_arguments",
    "classification_metrics",
    "edges_to_matrices",
    "fit_torch_classifier",
    "harmonize_fold",
    "run_from_args",
    "run_roi_experiment",
    "stratified_holdout",
]

BASELINES = ("tangent_logreg", "flat_mlp")
#: defaults of the ROI models where the volume models' defaults do not fit
ROI_DEFAULTS = {
    "epochs": 60,
    "batch_size": 32,
    "learning_rate": 2e-3,
    "weight_decay": 1e-2,
    "lr_schedule": "cosine",  # the engine's recipe: cosine decay, early stopping on validation
    "patience": 20,
}


@dataclass
class RoiExperiment:
    """Settings of :func:`run_roi_experiment` beside the :class:`ModelOptions`.

    Attributes
    ----------
    harmonize : bool
        ComBat on the FC (and tangent) features, fitted per training fold.
    baselines : tuple of str
        Of :data:`BASELINES`.
    val_fraction : float
        Share of each training fold (stratified by class) used for early stopping.
    folds : list of str
        Held-out sites (default: every site).
    """

    harmonize: bool = True
    baselines: tuple[str, ...] = BASELINES
    val_fraction: float = 0.2
    folds: list[str] = field(default_factory=list)


def _triu(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


def edges_to_matrices(edges: np.ndarray, n: int) -> np.ndarray:
    """Symmetric ``(S, n, n)`` matrices (diagonal 0) from upper-triangle edges ``(S, n(n-1)/2)``."""
    iu = _triu(n)
    out = np.zeros((len(edges), n, n))
    out[:, iu[0], iu[1]] = edges
    return out + out.transpose(0, 2, 1)


#: fewest subjects of a held-out site whose ComBat location and scale are estimated in a fold
#: (two: a variance needs two); see :func:`harmonize_fold`
MIN_HELD_OUT_SUBJECTS = 2


def harmonize_fold(
    train: np.ndarray,
    train_sites: np.ndarray,
    test: np.ndarray,
    test_sites: np.ndarray,
    covariates: pd.DataFrame | None = None,
    train_idx: np.ndarray | None = None,
    test_idx: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """ComBat fitted on ``train`` (n_train, p) only; applied to both.

    Test subjects of sites unseen in the fit are mapped with :meth:`ComBat.add_sites`: their own
    location/scale, shrunk by empirical Bayes with the site's own hyperparameters (estimated over
    the p features, as ComBat does for a training site), the fitted model frozen, no labels used.

    A held-out site smaller than ComBat's unseen-site minimum
    (:attr:`GaugeOptions.min_new_site_subjects`, 5; the demo has 4 subjects per site) is
    estimated anyway, down to :data:`MIN_HELD_OUT_SUBJECTS`, with a logged warning and its
    name in ``info["below_minimum"]``. This is sound because the shrinkage that ComBat relies on
    for small sites does not depend on the site's subject count: the prior of its locations and
    scales is estimated over thousands of FC edges, and each edge's estimate is pulled towards it
    in proportion to its noise (a few subjects: strongly). The alternative is worse. A test site
    left in raw units, while the model was trained on harmonized features, moves every held-out
    subject by that site's whole offset. Only a site of one subject (no variance) stays
    unharmonized; then ``info["test_harmonized"]`` is False. As with any unseen-site ComBat, the
    site's mean includes its diagnosis mix, so a site of few, unbalanced subjects loses some of
    its effect.
    """
    from pipeline.gauge import CovariateError, GaugeOptions, UnseenSiteError, build_harmonizer

    options = GaugeOptions(min_new_site_subjects=MIN_HELD_OUT_SUBJECTS)
    cov_tr = cov_te = None
    if covariates is not None and train_idx is not None and test_idx is not None:
        cov_tr = covariates.iloc[train_idx].reset_index(drop=True)
        cov_te = covariates.iloc[test_idx].reset_index(drop=True)
    combat = build_harmonizer(options)
    try:
        combat.fit(train, train_sites, cov_tr)
    except CovariateError as exc:
        logger.warning("ComBat without covariates in this fold: %s", exc)
        cov_tr = cov_te = None
        combat = build_harmonizer(options).fit(train, train_sites)
    out_train = combat.transform(train, train_sites, cov_tr)
    info: dict[str, Any] = {"fitted_sites": [str(s) for s in combat.sites_]}
    unseen = sorted(set(map(str, test_sites)) - set(map(str, combat.sites_)))
    minimum = GaugeOptions().min_new_site_subjects
    small = {s: int((test_sites.astype(str) == s).sum()) for s in unseen}
    small = {s: n for s, n in small.items() if MIN_HELD_OUT_SUBJECTS <= n < minimum}
    if small:
        info["below_minimum"] = sorted(small)
        logger.warning(
            "held-out site(s) %s below ComBat's unseen-site minimum of %d subjects: location "
            "and scale estimated anyway, shrunk by empirical Bayes",
            ", ".join(f"{s} ({n})" for s, n in small.items()),
            minimum,
        )
    try:
        if unseen:
            mask = np.isin(test_sites.astype(str), unseen)
            combat.add_sites(
                test[mask],
                test_sites[mask],
                None if cov_te is None else cov_te[mask].reset_index(drop=True),
                priors="site",  # its own EB hyperparameters, as ComBat gives a training site
            )
        out_test = combat.transform(test, test_sites, cov_te)
        info["test_harmonized"] = True
    except UnseenSiteError as exc:
        logger.warning("held-out site left unharmonized: %s", exc)
        out_test, info["test_harmonized"] = test.copy(), False
    return np.asarray(out_train), np.asarray(out_test), info


def classification_metrics(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and (two classes) AUC of class probabilities ``prob``."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    pred = prob.argmax(1)
    out = {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
    }
    if prob.shape[1] == 2 and len(np.unique(y)) == 2:
        out["auc"] = float(roc_auc_score(y, prob[:, 1]))
    return out


def fit_torch_classifier(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
    options: ModelOptions,
    out_dir: str | os.PathLike[str] | None = None,
    permute: bool = False,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train a classifier of ROI inputs with :func:`~pipeline.models.training.run_training`.

    Cross-entropy (plus the model's ``symmetry_penalty()`` when it has one); with ``permute``,
    every item of every batch is relabelled by a random ROI permutation (augmentation). The
    validation set is the engine's early-stopping split: the weights of the epoch of lowest
    validation loss are kept (``best_epoch`` in every history row), ``options.patience`` stops
    early and ``options.lr_schedule`` sets the learning rate per epoch. With ``out_dir`` None
    the checkpoint goes to a temporary folder.
    """
    from pipeline.models.roiset import permute_rois

    matrix = getattr(model, "matrix", False)

    def step(model, batch, rng, noise, device, amp):
        x, y = (t.to(device) for t in batch)
        if permute:
            perm = torch.as_tensor(
                np.argsort(rng.random((len(x), x.shape[1])), axis=1), device=device
            )
            x = permute_rois(x, perm, matrix)
        with amp():
            loss = nn.functional.cross_entropy(model(x).float(), y)
        if hasattr(model, "symmetry_penalty"):
            loss = loss + model.symmetry_penalty()
        return {"loss": loss}

    def validate(model, device):
        model.eval()
        with torch.no_grad():
            out = model(x_val.to(device)).float()
            loss = float(nn.functional.cross_entropy(out, y_val.to(device)))
            acc = float((out.argmax(1).cpu() == y_val).float().mean())
        return {"loss": loss, "accuracy": acc}

    has_val = x_val is not None and len(x_val) > 0
    task_kw: dict[str, Any] = {"step": step, "validate": validate if has_val else None}
    if hasattr(model, "symmetry_defect"):
        task_kw["epoch_extra"] = lambda m: {"symmetry_defect": float(m.symmetry_defect().detach())}
    opts = options.model_copy(update={"resume": False})
    with tempfile.TemporaryDirectory() as tmp:
        history, _, _ = run_training(
            model, TensorDataset(x_train, y_train), out_dir or tmp, opts, TrainingTask(**task_kw)
        )
    model.eval()
    return model, history


def _predict(model: nn.Module, x: torch.Tensor, device: torch.device) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(b.to(device)).float().cpu() for b in x.split(256)])
    return torch.softmax(out, 1).numpy()


def _tangent_logreg(
    ts: list[np.ndarray],
    y: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    harmonize: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None,
    seed: int,
) -> np.ndarray:
    """Tangent-space FC (reference on the training fold) + l2 logistic regression."""
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.linear_model import LogisticRegression

    measure = ConnectivityMeasure(
        kind="tangent", vectorize=True, discard_diagonal=True, standardize="zscore_sample"
    )
    train = measure.fit_transform([ts[i] for i in train_idx])
    test = measure.transform([ts[i] for i in test_idx])
    if harmonize is not None:
        train, test = harmonize(train, test)
    clf = LogisticRegression(C=1.0, max_iter=5000, random_state=seed)
    clf.fit(train, y[train_idx])
    return clf.predict_proba(test)


def run_roi_experiment(
    data: RoiData,
    out_dir: str | os.PathLike[str],
    options: ModelOptions | None = None,
    experiment: RoiExperiment | None = None,
) -> dict[str, Any]:
    """Leave-site-out CV of roiset and the baselines on ``data``; write the results.

    Writes ``metrics.json`` (per fold and overall, per model), ``predictions.tsv`` and
    ``split.tsv`` into ``out_dir``, and each fold's roiset ``log.csv``/checkpoint under
    ``fold-<site>/roiset``.

    Returns
    -------
    dict
        The metrics.
    """
    from pipeline.models._registry import build_model
    from pipeline.models.data import encode_labels
    from pipeline.models.device import select_device
    from pipeline.models.roiset import FlatMLP, permutation_error

    opts = options or ModelOptions(model="roiset", **ROI_DEFAULTS)
    exp = experiment or RoiExperiment()
    unknown = sorted(set(exp.baselines) - set(BASELINES))
    if unknown:
        raise ConfigError(f"baselines must be among {', '.join(BASELINES)}; got {unknown}")
    y, task, classes = encode_labels(data.target, "classification")
    if len(classes) < 2:
        raise ConfigError(f"target needs at least two classes; got {classes}")
    sites = data.sites.astype(str)
    folds = exp.folds or sorted(set(sites))
    if len(set(sites)) < 2:
        raise ConfigError("leave-site-out cross-validation needs at least two sites")
    hp = dict(opts.hparams)
    use_coords = bool(hp.get("coords", False))
    if use_coords and data.coords is None:
        raise ConfigError(f"hparams coords=true but the atlas has no coordinates ({data.source})")
    device = select_device(opts.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fc = fc_matrices(data.timeseries)
    n = fc.shape[1]
    iu = _triu(n)
    edges = fc[:, iu[0], iu[1]]
    logger.info(
        "%d subjects, %d sites, %d ROIs (%s); %d folds", len(y), len(set(sites)), n,
        data.source, len(folds),
    )  # fmt: skip
    models = ["roiset", *exp.baselines]
    probs = {m: np.full((len(y), len(classes)), np.nan) for m in models}
    fold_of = np.full(len(y), "", dtype=object)
    per_fold: list[dict[str, Any]] = []
    for k, site in enumerate(tqdm(folds, desc="leave-site-out", disable=not opts.progress)):
        test_idx = np.flatnonzero(sites == site)
        train_idx = np.flatnonzero(sites != site)
        if len(np.unique(y[train_idx])) < 2 or not len(test_idx):
            logger.warning("fold %s skipped: training fold has one class or no test subjects", site)
            continue
        fold_of[test_idx] = site
        info: dict[str, Any] = {"site": site, "n_train": len(train_idx), "n_test": len(test_idx)}

        def harmonize(tr, te, train_idx=train_idx, test_idx=test_idx, info=info):
            a, b, i = harmonize_fold(
                tr, sites[train_idx], te, sites[test_idx], data.covariates, train_idx, test_idx
            )
            info.setdefault("harmonization", i)
            return a, b

        e_tr, e_te = edges[train_idx], edges[test_idx]
        if exp.harmonize:
            e_tr, e_te = harmonize(e_tr, e_te)
        x = np.empty((len(y), n, n))
        x[train_idx], x[test_idx] = edges_to_matrices(e_tr, n), edges_to_matrices(e_te, n)
        if use_coords:
            x = np.concatenate([x, np.broadcast_to(data.coords, (len(y), n, 3))], axis=2)
        xt = torch.as_tensor(x, dtype=torch.float32)
        yt = torch.as_tensor(y)
        fit_pos, val_pos = stratified_holdout(y[train_idx], exp.val_fraction, opts.seed + k)
        fit_idx, val_idx = train_idx[fit_pos], train_idx[val_pos]
        seed_everything(opts.seed + k)
        model = build_model("roiset", 3 if use_coords else 0, len(classes), matrix=True, **hp)
        model, history = fit_torch_classifier(
            model, xt[fit_idx], yt[fit_idx], xt[val_idx], yt[val_idx], opts,
            out / f"fold-{site}" / "roiset",
        )  # fmt: skip
        model.to(device)
        probs["roiset"][test_idx] = _predict(model, xt[test_idx], device)
        info["roiset"] = {
            "best_epoch": history[-1].get("best_epoch", len(history) - 1) if history else None,
            "permutation_error": permutation_error(model, xt[test_idx][:16].to(device)),
            "symmetry_defect": float(model.symmetry_defect().detach()),
        }
        if "flat_mlp" in exp.baselines:
            seed_everything(opts.seed + k)
            mlp, _ = fit_torch_classifier(
                FlatMLP(n, len(classes)), xt[fit_idx], yt[fit_idx], xt[val_idx], yt[val_idx], opts
            )
            probs["flat_mlp"][test_idx] = _predict(mlp.to(device), xt[test_idx], device)
        if "tangent_logreg" in exp.baselines:
            probs["tangent_logreg"][test_idx] = _tangent_logreg(
                data.timeseries, y, train_idx, test_idx,
                harmonize if exp.harmonize else None, opts.seed,
            )  # fmt: skip
        for m in models:
            info[m] = {**info.get(m, {}), **classification_metrics(y[test_idx], probs[m][test_idx])}
        per_fold.append(info)
        logger.info(
            "fold %s: %s", site,
            ", ".join(f"{m} {info[m]['accuracy']:.3f}" for m in models),
        )  # fmt: skip
    tested = fold_of != ""
    if not tested.any():
        raise ConfigError("no fold could be run (each training fold needs two classes)")
    overall = {}
    for m in models:
        accs = [f[m]["accuracy"] for f in per_fold]
        overall[m] = {
            **classification_metrics(y[tested], probs[m][tested]),
            "fold_accuracy_mean": float(np.mean(accs)),
            "fold_accuracy_sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        }
    metrics: dict[str, Any] = {
        "model": "roiset",
        "task": task,
        "classes": [str(c) for c in classes],
        "source": data.source,
        "n_subjects": len(y),
        "n_rois": n,
        "sites": sorted(set(sites)),
        "split": "leave-site-out",
        "harmonize": exp.harmonize,
        "hparams": hp,
        "options": {k: opts.model_dump()[k] for k in ("epochs", "batch_size", "learning_rate",
                                                     "weight_decay", "lr_schedule", "patience",
                                                     "seed")},
        "chance": float(np.bincount(y[tested]).max() / tested.sum()),
        "folds": per_fold,
        "overall": overall,
        "test": overall["roiset"],
    }  # fmt: skip
    write_json(out / "metrics.json", metrics)
    rows = ["participant_id\tsite\ttarget\tfold\tmodel\tprediction\tprobability"]
    for m in models:
        for i in np.flatnonzero(tested):
            rows.append(
                f"{data.subjects[i]}\t{sites[i]}\t{classes[y[i]]}\t{fold_of[i]}\t{m}\t"
                f"{classes[int(probs[m][i].argmax())]}\t{probs[m][i].max():.6g}"
            )
    write_text(out / "predictions.tsv", "\n".join(rows) + "\n")
    split = ["participant_id\tsite\ttarget\tfold"] + [
        f"{s}\t{site}\t{t}\t{f or 'n/a'}"
        for s, site, t, f in zip(data.subjects, sites, data.target, fold_of, strict=True)
    ]
    write_text(out / "split.tsv", "\n".join(split) + "\n")
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``symprep train`` flags of ``--model roiset``."""
    g = parser.add_argument_group("ROI models (--model roiset)")
    g.add_argument(
        "--roi-source",
        choices=["auto", "symprep", "abide"],
        default="auto",
        help="ROI series from symprep's derivatives or an ABIDE Preprocessed folder "
        "(auto: ABIDE when DERIVATIVES_DIR holds its phenotypic CSV)",
    )
    g.add_argument(
        "--atlas",
        default=None,
        help="atlas: symprep's (power2011, dosenbach2010, seitzman2018 or a BIDS atlas label; "
        "default power2011) or ABIDE's (cc200, aal, ho, …; default cc200)",
    )
    g.add_argument(
        "--denoise",
        default=None,
        help="denoising preset / ABIDE strategy (filt_global, filt_noglobal, nofilt_global, "
        "nofilt_noglobal, minimal; default filt_noglobal, for ABIDE nofilt_noglobal as fetched)",
    )
    g.add_argument("--abide-pipeline", default="cpac", help="ABIDE Preprocessed pipeline")
    g.add_argument(
        "--no-harmonize", action="store_true", help="no ComBat on FC inside the training folds"
    )
    g.add_argument(
        "--baselines",
        nargs="*",
        default=list(BASELINES),
        help=f"baselines run on the same folds (default: {' '.join(BASELINES)})",
    )


def run_from_args(args: argparse.Namespace, opts: ModelOptions) -> dict[str, Any]:
    """``symprep train --model roiset``: load the ROI series and run the experiment."""
    from pipeline.models.roi_data import load_rois

    # ROI_DEFAULTS replace the volume models' defaults, not what the flags or the run set
    explicit = set(getattr(args, "run_overrides", ()))
    updates = {
        k: v
        for k, v in ROI_DEFAULTS.items()
        if getattr(args, k, None) is None and k not in explicit
    }
    opts = opts.model_copy(update=updates)
    data = load_rois(
        args.bids_dir,
        args.derivatives_dir,
        getattr(args, "roi_source", "auto"),
        getattr(args, "atlas", None),
        getattr(args, "denoise", None),
        opts.target,
        getattr(args, "abide_pipeline", "cpac"),
    )
    exp = RoiExperiment(
        harmonize=not getattr(args, "no_harmonize", False),
        baselines=tuple(getattr(args, "baselines", BASELINES)),
    )
    out = args.output_dir or Path(args.derivatives_dir) / "group" / "models" / "roiset"
    return run_roi_experiment(data, out, opts, exp)
