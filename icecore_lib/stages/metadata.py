"""Notebook 01: the study's metadata classifiers, XGBoost (with its search and SHAP) and the metadata MLP.

Both train on the labelled split's FlowCam features (``cfg.metadata_features``) and end as
:class:`~icecore_lib.train.classifier.ClassifierOutputs`, written into the run for notebook 02's comparison.
The BDT's out-of-fold probabilities also rank the reference set's doubtful labels (cleanlab).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from sklearn.base import clone

from ..data.splits import split_ids
from ..evaluate import metric_scalars
from ..label_issues import out_of_fold_proba, rank_label_issues
from ..models.bdt import BDTClassifier
from ..plots.gallery import top_k_gallery
from ..run.notebook import Skipped, Stage
from ..schema import LABEL
from ..train.classifier import ClassifierOutputs, fit_bdt, fit_torch_classifier
from ..widgets import LabelReview

SHOWN_PARAMETERS = ("eta", "max_depth", "n_estimators")


@dataclass(frozen=True)
class FittedBDT:
    """The fitted XGBoost model, its per-particle outputs and the search's candidates (None without a search)."""

    model: BDTClassifier
    outputs: ClassifierOutputs
    search: pd.DataFrame | None

    def parameters(self) -> dict[str, Any]:
        """The parameters worth reporting: learning rate, depth, rounds."""
        return {k: self.model.get_params()[k] for k in SHOWN_PARAMETERS}


def train_bdt(stage: Stage) -> FittedBDT:
    """XGBoost on the features: the randomized CV search when ``search_iterations`` > 0, else the study's optimum."""
    model, outputs, search = fit_bdt(stage.bundle, stage.cfg, stage.run.folder("model", model="bdt"))
    print("parameters:", FittedBDT(model, outputs, search).parameters(), "| boosting rounds used:",
          model.best_iteration_ + 1)
    return FittedBDT(model, outputs, search)


def search_table(bdt: FittedBDT, top: int = 10) -> pd.DataFrame | Skipped:
    """The best candidates of the search, best first."""
    if bdt.search is None:
        return Skipped("the search", "search_iterations = 0 uses the study's optimum")
    return bdt.search.head(top)


def shap_explanation(stage: Stage, bdt: FittedBDT) -> Any:
    """SHAP values of the BDT on (a sample of) the test split."""
    test = stage.table.loc[split_ids(stage.table, "test")]
    return bdt.model.shap_values(test, max_samples=stage.cfg.shap_sample, seed=stage.cfg.seed)


def hardest_class(test: dict[str, Any]) -> str:
    """The class with the lowest test F1 (its beeswarm shows what the features cannot separate)."""
    return str(test["per_class"]["f1"].idxmin())


@dataclass(frozen=True)
class LabelIssues:
    """The reference set's doubtful labels (cleanlab on out-of-fold BDT probabilities), most doubtful first."""

    issues: pd.DataFrame
    particles: int

    @property
    def summary(self) -> dict[str, Any]:
        """The numbers for metrics.json: how many labels were checked and how many the data contradicts."""
        return {"checked": self.particles, "flagged": len(self.issues),
                "flagged_fraction": len(self.issues) / max(self.particles, 1)}


def find_label_issues(stage: Stage, bdt: FittedBDT) -> LabelIssues:
    """Every labelled particle predicted by a BDT that never saw it (``cv_folds``-fold), ranked by cleanlab."""
    table = stage.table[stage.table[LABEL].isin(bdt.outputs.classes)]
    features = list(bdt.model.feature_names_in_)
    model = clone(bdt.model).set_params(n_estimators=bdt.model.best_iteration_ + 1)
    proba = out_of_fold_proba(model, table[features], table[LABEL], bdt.outputs.classes,
                              folds=max(2, stage.cfg.cv_folds), seed=stage.cfg.seed)
    issues = rank_label_issues(table[LABEL], proba)
    stage.run.write("label_issues", issues)
    print(f"{len(issues):,} of {len(table):,} labels ({len(issues) / len(table):.1%}) are contradicted by the "
          "out-of-fold probabilities; the most doubtful first")
    return LabelIssues(issues, len(table))


def label_issue_gallery(stage: Stage, found: LabelIssues, k: int = 24) -> Figure | Skipped:
    """The ``k`` most doubtful labels, each captioned with its given and its suggested class."""
    if not len(found.issues):
        return Skipped("the label-issue gallery", "no label is contradicted by the out-of-fold probabilities")
    view = found.issues.assign(doubt=1 - found.issues["given_proba"]).reindex(stage.table.index)
    return top_k_gallery(stage.bundle.train.images, view, "doubt", k=k, caption_columns=("given", "suggested"),
                         title="Labels the data doubts most: given -> suggested (look, then relabel or keep)",
                         path=stage.figure("01_label_issues.png"))


def review_labels(stage: Stage, found: LabelIssues) -> LabelReview | Skipped:
    """The doubted labels a page at a time, to keep or correct; verdicts go to the run's ``label_review.csv``."""
    if not len(found.issues):
        return Skipped("the label review", "no label is contradicted by the out-of-fold probabilities")
    return LabelReview(found.issues, stage.table, stage.bundle.train.images, list(stage.bundle.classes), stage.run.path)


def train_mlp(stage: Stage) -> ClassifierOutputs:
    """The study's metadata MLP, trained by the one training loop."""
    return fit_torch_classifier(stage.bundle, stage.cfg, "mlp", stage.run.file("model", model="mlp"))


def save(stage: Stage, bdt: FittedBDT, bdt_test: dict[str, Any], mlp: ClassifierOutputs,
         mlp_test: dict[str, Any], label_issues: LabelIssues) -> None:
    """Both models' per-particle outputs, their test metrics and the label issues' count in metrics.json
    (section ``01_metadata``)."""
    for outputs in (bdt.outputs, mlp):
        outputs.save(stage.run)
    stage.run.update_metrics("01_metadata", {
        "bdt": metric_scalars(bdt_test) | {"params": bdt.parameters()},
        "mlp": metric_scalars(mlp_test) | {"epochs_run": len(mlp.history)},
        "label_issues": label_issues.summary,
    })
