"""Draw docs/sklearn_curves.png: fastnn.sklearn.MLPClassifier with early stopping on the
bundled digits (the picture in the README's scikit-learn section)."""
import sys
import warnings

from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import fastnn as fn
from fastnn.sklearn import MLPClassifier

X, y = fn.datasets.load_digits()
clf = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(100,), early_stopping=True,
                                                    validation_fraction=0.15, random_state=0,
                                                    max_iter=60, n_iter_no_change=60))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    clf.fit(X, y)
mlp = clf[-1]
mlp.plot_loss_curve(sys.argv[1] if len(sys.argv) > 1 else "docs/sklearn_curves.png",
                    figsize=(8, 3), dpi=80, title="MLPClassifier on digits (early_stopping=True)")
print("epochs", mlp.n_iter_, "best validation accuracy", mlp.best_validation_score_)
