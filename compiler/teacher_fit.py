"""Does the teacher fit the validation images? Then top-1 there is not a test accuracy.

Most users compress with the data they trained on. When compress holds the validation images out
of `--data` and those are the teacher's training images, the teacher scores (nearly) 100 % on them:
a student's "loss" against that memorised 100 % overstates what it loses on new images (ResNet-56,
macs=0.5: -11.3 points on the teacher's training images, -3.5 points on test images). A teacher
that fits the validation images is detected here; compress then judges the budget, the search, the
structure probes and the Pareto front on agreement with the teacher's predictions (which, on any
labels, bounds the top-1 the student loses: every point of top-1 lost is a point of disagreement)
and says which images and which measure every figure is on.

The rule, set from these measurements (onnxruntime, the images compress would validate on: 1,000
held out of the training file with seed 0, or a test set; CE = mean cross-entropy of the labels):

    teacher                        images                              top-1     CE     mean max-softmax
    ResNet-56 (akamaster)          train split (seen)                 100.00 %  0.0011  0.9989
    ResNet-20 (akamaster)          train split (seen)                  99.80 %  0.0093  0.9955
    MNIST-8 (CNTK zoo)             train split (seen)                  99.60 %  0.0846  0.9998
    MNIST-8                        mnist_test 10k (held out)           98.91 %  0.2969  1.0000
    ResNet-56                      cifar10 test first 1000 (held out)  92.60 %  0.3596  0.9821
    ResNet-20                      cifar10 test first 1000 (held out)  91.50 %  0.3842  0.9714
    demo teacher (Fashion-MNIST)   bundled test 2000 (held out)        93.75 %  0.1927  0.9282
    demo teacher                   bundled train split (seen)          95.30 %  0.1445  0.9363
    MLPerf ResNet-8                train split (seen)                  91.90 %  0.2367  0.9199
    SqueezeNet (Keras)             train split (seen)                  83.60 %  0.4784  0.8093

Mean max-softmax does not separate them (MNIST-8 is 1.0000 confident on its *test* images: raw
0..255 inputs make huge logits), the cross-entropy of the labels does (seen and saturated: <= 0.01;
held out: >= 0.19). So the teacher fits the images when its top-1 there is >= 99.5 % (at most one
error in 200: labels then say at most half a point more than the teacher's own predictions, so
agreement loses nothing as a measure), or >= 99 % with a cross-entropy <= 0.02 (confident and
nearly never wrong: the signature of fitted training images; 10x below any held-out set above).
Teachers trained with strong augmentation (ResNet-8, SqueezeNet: 92 % / 84 % on their training
images) do not saturate and are not detected: nothing in their scores tells seen from unseen images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SATURATED_TOP1 = 0.995
CONFIDENT_TOP1 = 0.99
CONFIDENT_CE = 0.02


@dataclass(frozen=True)
class TeacherFit:
    top1: float  # the teacher's top-1 against the labels
    cross_entropy: float  # mean cross-entropy of the labels under the teacher's probabilities (nats)
    fits: bool  # the teacher fits these images: top-1 there is not a test accuracy

    def to_json(self) -> dict:
        return {"teacher_top1": round(self.top1, 6), "teacher_cross_entropy": round(self.cross_entropy, 6)}


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Class probabilities from a classifier's outputs: kept when they already are (a softmax
    head: non-negative rows summing to 1), else a softmax of the logits."""
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if len(s) and (s >= 0).all() and np.allclose(s.sum(1), 1.0, atol=1e-3):
        return s
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def teacher_fit(scores: np.ndarray, labels: np.ndarray | None) -> TeacherFit | None:
    """The teacher's top-1 and cross-entropy on labelled images and whether it fits them (module
    docstring); None without labels (accuracy is already agreement with the teacher)."""
    if labels is None or len(labels) == 0:
        return None
    p = probabilities(scores)
    y = np.asarray(labels, dtype=np.int64)
    top1 = float((p.argmax(1) == y).mean())
    ce = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())
    fits = top1 >= SATURATED_TOP1 or (top1 >= CONFIDENT_TOP1 and ce <= CONFIDENT_CE)
    return TeacherFit(top1, ce, bool(fits))
