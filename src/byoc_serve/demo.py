"""The bundled demo model: an iris classifier trained at start-up (no pickle shipped, so it always
matches the installed scikit-learn)."""

from __future__ import annotations

from pathlib import Path

SAMPLE_CSV = "5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"


def build_demo_model(target: Path) -> Path:
    """Train and save the demo model into ``target``; return the model directory."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    target = Path(target)
    (target / "code").mkdir(parents=True, exist_ok=True)
    features, labels = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(features, labels)
    joblib.dump(model, target / "model.joblib")
    (target / "code" / "warmup.csv").write_text(SAMPLE_CSV)
    return target
