"""XGBoost boosted decision trees on the FlowCam features: the study's metadata classifier, its search and SHAP."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from scipy.stats import loguniform, randint, uniform
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import RandomizedSearchCV, StratifiedKFold
from tqdm.auto import tqdm

from ..evaluate import label_codes
from ..files import atomic_path
from ..nn.device import resolve_device
from ..schema import FLOWCAM_FEATURES

# Randomized-search space; keys are BDTClassifier parameters.
SEARCH_SPACE: dict[str, Any] = {
    "eta": loguniform(0.02, 0.4),
    "max_depth": randint(3, 15),
    "n_estimators": randint(50, 401),
    "subsample": uniform(0.6, 0.4),
    "colsample_bytree": uniform(0.5, 0.5),
    "min_child_weight": loguniform(0.5, 10.0),
    "reg_lambda": loguniform(0.1, 10.0),
}

_MODEL_ATTR = "icecore_bdt"


def xgb_device(device: str = "auto") -> str:
    """The XGBoost device string: 'auto' picks CUDA when available; a named device must exist."""
    return str(resolve_device(device))


class _ProgressCallback(xgb.callback.TrainingCallback):
    """A tqdm bar over boosting rounds that shows the last validation metric."""

    def __init__(self, total: int, enabled: bool) -> None:
        super().__init__()
        self._bar = tqdm(total=total, desc="BDT rounds", disable=not enabled, leave=False)

    def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, dict[str, list[float]]]) -> bool:
        """Advance the bar by one round, showing the latest validation metrics."""
        latest = {f"{data}-{name}": f"{values[-1]:.4f}" for data, metrics in evals_log.items()
                  for name, values in metrics.items()}
        self._bar.set_postfix(latest, refresh=False)
        self._bar.update(1)
        return False

    def after_training(self, model: Any) -> Any:
        """Close the bar."""
        self._bar.close()
        return model


class BDTClassifier(ClassifierMixin, BaseEstimator):
    """Multi-class XGBoost (multi:softprob) on named feature columns; defaults are the study's optimum.

    Validation merror is recorded, but early stopping watches the validation mlogloss: merror is a step
    function that plateaus within a few rounds and would stop training almost at once.
    """

    def __init__(
        self,
        eta: float = 0.296,
        max_depth: int = 14,
        n_estimators: int = 200,
        early_stopping_rounds: int = 20,
        subsample: float = 1.0,
        colsample_bytree: float = 1.0,
        min_child_weight: float = 1.0,
        reg_lambda: float = 1.0,
        features: Sequence[str] | None = None,
        device: str = "auto",
        seed: int = 0,
        n_jobs: int | None = None,
    ) -> None:
        self.eta = eta
        self.max_depth = max_depth
        self.n_estimators = n_estimators
        self.early_stopping_rounds = early_stopping_rounds
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.features = features
        self.device = device
        self.seed = seed
        self.n_jobs = n_jobs

    def _xgb_params(self, n_classes: int) -> dict[str, Any]:
        """The booster parameters for ``n_classes`` classes."""
        params: dict[str, Any] = {
            "objective": "multi:softprob",
            "num_class": n_classes,
            "eval_metric": ["merror", "mlogloss"],
            "eta": self.eta,
            "max_depth": self.max_depth,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight,
            "lambda": self.reg_lambda,
            "tree_method": "hist",
            "device": xgb_device(self.device),
            "seed": self.seed,
        }
        if self.n_jobs is not None:
            params["nthread"] = self.n_jobs
        return params

    def fit(
        self,
        X: pd.DataFrame | np.ndarray,
        y: Sequence[Any] | np.ndarray | pd.Series,
        eval_set: tuple[pd.DataFrame | np.ndarray, Sequence[Any]] | None = None,
        sample_weight: np.ndarray | None = None,
        progress: bool = False,
    ) -> BDTClassifier:
        """Fit on (X, y); with ``eval_set=(X_val, y_val)`` stop early on the validation log-loss."""
        self.feature_names_in_ = np.asarray(
            list(FLOWCAM_FEATURES if self.features is None else self.features), dtype=object
        )
        self.n_features_in_ = len(self.feature_names_in_)
        codes, self.classes_ = _encode_fit(y)
        if len(self.classes_) < 2:
            raise ValueError(f"need at least two classes to fit, got {list(self.classes_)}")
        dtrain = self._dmatrix(X, codes, sample_weight)
        evals: list[tuple[xgb.DMatrix, str]] = []
        stopping = None
        if eval_set is not None:
            evals = [(self._dmatrix(eval_set[0], label_codes(eval_set[1], self.classes_)), "val")]
            stopping = self.early_stopping_rounds or None
        self.evals_result_: dict[str, dict[str, list[float]]] = {}
        booster = xgb.train(
            self._xgb_params(len(self.classes_)),
            dtrain,
            num_boost_round=self.n_estimators,
            evals=evals,
            early_stopping_rounds=stopping,
            evals_result=self.evals_result_,
            verbose_eval=False,
            callbacks=[_ProgressCallback(self.n_estimators, progress)],
        )
        if stopping is not None:
            booster = booster[: booster.best_iteration + 1]
        self._set_booster(booster)
        return self

    def _set_booster(self, booster: xgb.Booster) -> None:
        """Keep the booster and its last round index (the best round after early stopping)."""
        self.booster_ = booster
        self.best_iteration_ = booster.num_boosted_rounds() - 1

    def _dmatrix(self, X: pd.DataFrame | np.ndarray, label: np.ndarray | None = None,
                 weight: np.ndarray | None = None) -> xgb.DMatrix:
        """A DMatrix of the model's feature columns, validated."""
        matrix = _feature_matrix(X, list(self.feature_names_in_))
        if label is not None and len(label) != len(matrix):
            raise ValueError(f"{len(matrix)} feature rows but {len(label)} labels")
        return xgb.DMatrix(matrix, label=label, weight=weight, feature_names=list(self.feature_names_in_))

    def predict_logits(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Raw per-class margins (softmax gives predict_proba): the input of temperature scaling."""
        return self.booster_.predict(self._dmatrix(X), output_margin=True).reshape(-1, len(self.classes_))

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order; each row sums to 1."""
        return self.booster_.predict(self._dmatrix(X)).reshape(-1, len(self.classes_))

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """The most probable class key of each row."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def predict_proba_frame(self, X: pd.DataFrame) -> pd.DataFrame:
        """Class probabilities as a DataFrame indexed like X (particle_id), one column per class."""
        return pd.DataFrame(self.predict_proba(X), index=X.index, columns=list(self.classes_))

    def feature_importance(self, kind: str = "gain") -> pd.Series:
        """Normalised per-feature importance (gain, weight, cover, total_gain or total_cover), largest first."""
        scores = self.booster_.get_score(importance_type=kind)
        series = pd.Series({name: float(scores.get(name, 0.0)) for name in self.feature_names_in_}, name=kind)
        total = series.sum()
        return (series / total if total > 0 else series).sort_values(ascending=False)

    @property
    def feature_importances_(self) -> np.ndarray:
        """Normalised gain importance aligned with ``feature_names_in_`` (scikit-learn convention)."""
        return self.feature_importance("gain").reindex(self.feature_names_in_).to_numpy()

    def shap_values(self, X: pd.DataFrame | np.ndarray, max_samples: int = 500, seed: int = 0) -> Any:
        """SHAP values (shap.Explanation, values shape (n, features, classes)) on at most ``max_samples`` rows."""
        import shap

        frame = pd.DataFrame(_feature_matrix(X, list(self.feature_names_in_)), columns=list(self.feature_names_in_),
                             index=X.index if isinstance(X, pd.DataFrame) else None)
        if len(frame) > max_samples:
            frame = frame.sample(n=max_samples, random_state=seed)
        explanation = shap.TreeExplainer(self.booster_)(frame)
        explanation.output_names = [str(c) for c in self.classes_]
        return explanation

    def save(self, path: Path | str) -> Path:
        """Write the model (XGBoost JSON with the class list and parameters) atomically."""
        meta = {"classes": self.classes_.tolist(), "params": _plain_params(self.get_params())}
        self.booster_.set_attr(**{_MODEL_ATTR: json.dumps(meta)})
        with atomic_path(path) as tmp:
            tmp.write_bytes(bytes(self.booster_.save_raw(raw_format="json")))
        return Path(path)

    @classmethod
    def load(cls, path: Path | str, device: str = "auto") -> BDTClassifier:
        """Read a model written by :meth:`save`, placed on ``device``."""
        path = Path(path)
        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(path.read_bytes()))
        except xgb.core.XGBoostError as err:
            raise ValueError(f"{path}: not an XGBoost JSON model ({err})") from err
        meta = booster.attr(_MODEL_ATTR)
        if meta is None:
            raise ValueError(f"{path}: an XGBoost model without icecore's class list; save it with BDTClassifier.save")
        meta = json.loads(meta)
        model = cls(**{**meta["params"], "device": device})
        booster.set_param({"device": xgb_device(device)})
        model.classes_ = np.asarray(meta["classes"], dtype=object)
        model.feature_names_in_ = np.asarray(booster.feature_names, dtype=object)
        model.n_features_in_ = len(model.feature_names_in_)
        model.evals_result_ = {}
        model._set_booster(booster)
        return model


def _plain_params(params: dict[str, Any]) -> dict[str, Any]:
    """Estimator parameters as JSON values (feature tuples become lists)."""
    return {k: list(v) if isinstance(v, (tuple, np.ndarray)) else v for k, v in params.items()}


def _feature_matrix(X: pd.DataFrame | np.ndarray, features: list[str]) -> np.ndarray:
    """The float32 feature matrix; a missing, non-numeric or infinite column is named in the error."""
    if isinstance(X, pd.DataFrame):
        missing = [c for c in features if c not in X.columns]
        if missing:
            raise ValueError(f"feature column(s) missing from the table: {missing}")
        table = X[features]
        bad = [c for c in features if not pd.api.types.is_numeric_dtype(table[c])]
        if bad:
            raise ValueError(f"feature column(s) are not numeric: {bad}")
        matrix = table.to_numpy(dtype=np.float32)
    else:
        matrix = np.asarray(X, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != len(features):
            raise ValueError(f"expected a 2-D array with {len(features)} feature columns, got shape {matrix.shape}")
    rows, cols = np.nonzero(np.isinf(matrix))
    if len(rows):
        index = X.index[rows[0]] if isinstance(X, pd.DataFrame) else rows[0]
        raise ValueError(f"infinite value in column {features[cols[0]]!r}, row {index!r}")
    return matrix


def _encode_fit(y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and the sorted class keys of training labels; missing labels are named by row."""
    series = pd.Series(y) if not isinstance(y, pd.Series) else y
    if series.isna().any():
        raise ValueError(f"missing label in row(s) {series.index[series.isna()][:5].tolist()}")
    codes, uniques = pd.factorize(series, sort=True)
    return codes.astype(np.int32), np.asarray(uniques.to_numpy(), dtype=object)


def _python_scalar(value: Any) -> Any:
    """A numpy scalar as the plain Python value (for JSON and YAML)."""
    return value.item() if isinstance(value, np.generic) else value


def search(
    X: pd.DataFrame,
    y: Sequence[Any] | np.ndarray | pd.Series,
    n_iter: int = 10,
    cv: int = 3,
    seed: int = 0,
    space: dict[str, Any] | None = None,
    base: BDTClassifier | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """scikit-learn's randomized search, stratified k-fold CV accuracy: best parameters and every candidate's scores."""
    searcher = RandomizedSearchCV(
        BDTClassifier(seed=seed) if base is None else base, SEARCH_SPACE if space is None else space, n_iter=n_iter,
        scoring="accuracy", cv=StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed), refit=False,
        random_state=seed, error_score="raise", verbose=int(progress),
    ).fit(X, np.asarray(pd.Series(y).to_numpy(), dtype=object))
    found = searcher.cv_results_
    rows = pd.DataFrame([{k: _python_scalar(v) for k, v in p.items()} for p in found["params"]])
    results = rows.assign(mean_accuracy=found["mean_test_score"], std_accuracy=found["std_test_score"])
    results = results.sort_values("mean_accuracy", ascending=False, kind="stable").reset_index(drop=True)
    return {k: _python_scalar(v) for k, v in searcher.best_params_.items()}, results
