"""Generalizability scores for classification: accuracy, balanced accuracy, sensitivity, confusion, ROC AUC.

pred and y are integer class labels of the same shape (usually (N,)); num_classes is K. Scores are plain floats
in [0, 1], nan where undefined (no samples, no class present).
"""

from __future__ import annotations

import math
from typing import cast

import torch


def _labels(pred: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    pred, y = torch.as_tensor(pred), torch.as_tensor(y)
    if pred.shape != y.shape:
        raise ValueError(f"pred and y must have the same shape, got {tuple(pred.shape)} and {tuple(y.shape)}")
    pred, y = pred.reshape(-1).long(), y.reshape(-1).long().to(pred.device)
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r} must be an integer >= 1")
        for name, t in (("pred", pred), ("y", y)):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
                raise ValueError(
                    f"{name} ranges over [{int(t.min())}, {int(t.max())}]; expected labels in [0, {num_classes - 1}]"
                )
    return pred, y


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of samples with pred == y, in [0, 1]; nan for no samples. Per-sample correctness is pred == y."""
    pred, y = _labels(pred, y)
    if y.numel() == 0:
        return math.nan
    return float((pred == y).double().mean())


def confusion_matrix(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (K, K), int64: entry [i, j] = number of samples of true class i predicted as j (rows sum to support)."""
    pred, y = _labels(pred, y, num_classes)
    index = y * num_classes + pred
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def quadratic_kappa(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights for ordinal labels (graded retinopathy, tumour grades): 1 - sum(W O) /
    sum(W E), W[i, j] = (i - j)^2 / (K - 1)^2, O the confusion matrix, E the outer product of its marginals over
    N. 1 is perfect agreement, 0 chance level, negative worse than chance; nan without samples or when every
    true and predicted label is the same class (kappa is undefined)."""
    cm = confusion_matrix(pred, y, num_classes).double()
    n = cm.sum()
    if n == 0 or num_classes < 2:
        return math.nan
    k = torch.arange(num_classes, dtype=torch.float64)
    weights = (k[:, None] - k[None, :]) ** 2 / (num_classes - 1) ** 2
    expected = cm.sum(1)[:, None] * cm.sum(0)[None, :] / n
    denominator = float((weights * expected).sum())
    return 1.0 - float((weights * cm).sum()) / denominator if denominator > 0 else math.nan


def mean_absolute_error(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Mean |predicted grade - true grade| for ordinal labels, in classes; nan without samples."""
    if y.numel() == 0:
        return math.nan
    return float((pred.long() - y.long()).abs().double().mean())


def per_class_sensitivity(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Recall of each class, TP_k / (number of samples with y == k): float64 (K,), nan for classes absent from y."""
    cm = confusion_matrix(pred, y, num_classes).double()
    support = cm.sum(dim=1)
    sens = cm.diagonal() / support
    return torch.where(support > 0, sens, torch.full_like(sens, math.nan))


def balanced_accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """Mean per-class sensitivity over the classes present in y, in [0, 1]; nan (undefined) when fewer than two
    classes are present.

    Classes absent from y are left out of the mean (as scikit-learn's ``balanced_accuracy_score``), so a
    test set without any sample of a rare class is not penalised for it. With one class only there is nothing
    to balance: the mean would be that class's sensitivity, i.e. the accuracy, and a constant model would score
    1.0, so it is undefined instead.
    """
    sens = per_class_sensitivity(pred, y, num_classes)
    present = ~torch.isnan(sens)
    if int(present.sum()) < 2:
        return math.nan
    return float(sens[present].mean())


def auc_ovr(probs: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """Macro one-vs-rest ROC AUC, in [0, 1]; nan when no class can be scored.

    probs: scores (N, K) (probabilities, or any score monotone in the class's likelihood); for K = 2 also
    (N,) = score of class 1. y: labels (N,) in [0, K).
    For K = 2 this is the usual binary AUC of class 1 against class 0 using probs[:, 1] (scikit-learn's
    convention). For K > 2 it is the unweighted mean over classes k of AUC(probs[:, k], y == k), each computed
    by ``monai.metrics.compute_roc_auc`` (the Mann-Whitney statistic, ties counted 1/2). Classes absent from y
    (or classes that are every sample) have no AUC and are left out of the mean.
    """
    probs, y = torch.as_tensor(probs), torch.as_tensor(y).reshape(-1).long()
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2")
    n = y.shape[0]
    scores: torch.Tensor | None
    if num_classes == 2 and probs.shape == (n,):
        scores = probs
    elif probs.shape == (n, num_classes):
        scores = probs[:, 1] if num_classes == 2 else None
    else:
        raise ValueError(
            f"probs of shape {tuple(probs.shape)} does not match y {tuple(y.shape)} and num_classes={num_classes}; "
            f"expected ({n}, {num_classes})" + (f" or ({n},)" if num_classes == 2 else "")
        )
    _labels(y, y, num_classes)
    from monai.metrics import compute_roc_auc  # MONAI on first use: `import medrobust` stays light

    probs, y = probs.detach().double().cpu(), y.cpu()
    columns = [(1, scores.detach().double().cpu())] if scores is not None else list(enumerate(probs.T))
    values = []
    for k, column in columns:
        positive = y == k
        if 0 < int(positive.sum()) < n:  # AUC needs both positives and negatives
            auc = cast(float, compute_roc_auc(column, positive.long()))  # 1D scores: one plain float
            values.append(float(auc))
    return float(sum(values) / len(values)) if values else math.nan
