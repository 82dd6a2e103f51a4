"""The start-up floor for bench/serving.py: the least any server of an sklearn model does before its
/ping can say 200 — start Python, load the model (which imports scikit-learn), predict once, listen.

One process, no framework: after that it answers every request with an empty 200 and closes.

    python bench/startup_floor.py PORT MODEL_FILE
"""

from __future__ import annotations

import socket
import sys

import joblib
import numpy as np


def main() -> None:
    port, model_file = int(sys.argv[1]), sys.argv[2]
    model = joblib.load(model_file)
    model.predict_proba(np.zeros((1, model.n_features_in_)))
    listener = socket.create_server(("127.0.0.1", port))
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


if __name__ == "__main__":
    main()
