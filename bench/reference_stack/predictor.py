"""The scikit_bring_your_own example's Flask app: lazy pickled model, pandas CSV in, CSV out.

Kept deliberately close to the example (class-attribute model loaded on first use in every worker,
pandas on the hot path) because it is the reference the benchmark compares against. The only
changes: the model directory comes from REFERENCE_MODEL_DIR, and the predict method (the example
calls ``predict``) from REFERENCE_PREDICT_METHOD so both stacks can run ``predict_proba``.
"""

import io
import os
import pickle

import flask
import pandas as pd

model_path = os.environ.get("REFERENCE_MODEL_DIR", "/opt/ml/model")
predict_method = os.environ.get("REFERENCE_PREDICT_METHOD", "predict")


class ScoringService(object):
    model = None  # Where we keep the model when it's loaded

    @classmethod
    def get_model(cls):
        """Get the model object for this instance, loading it if it's not already loaded."""
        if cls.model is None:
            with open(os.path.join(model_path, "model.pkl"), "rb") as inp:
                cls.model = pickle.load(inp)
        return cls.model

    @classmethod
    def predict(cls, input):
        """For the input, do the predictions and return them."""
        clf = cls.get_model()
        return getattr(clf, predict_method)(input)


app = flask.Flask(__name__)


@app.route("/ping", methods=["GET"])
def ping():
    """Healthy if the model can be loaded."""
    health = ScoringService.get_model() is not None
    status = 200 if health else 404
    return flask.Response(response="\n", status=status, mimetype="application/json")


@app.route("/invocations", methods=["POST"])
def transformation():
    """Read a CSV batch with pandas, predict, and return the predictions as CSV."""
    data = None
    if flask.request.content_type == "text/csv":
        data = flask.request.data.decode("utf-8")
        s = io.StringIO(data)
        data = pd.read_csv(s, header=None)
    else:
        return flask.Response(
            response="This predictor only supports CSV data", status=415, mimetype="text/plain"
        )

    print("Invoked with {} records".format(data.shape[0]))

    predictions = ScoringService.predict(data)

    out = io.StringIO()
    pd.DataFrame(predictions).to_csv(out, header=False, index=False)
    result = out.getvalue()

    return flask.Response(response=result, status=200, mimetype="text/csv")
