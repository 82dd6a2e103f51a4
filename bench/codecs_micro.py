"""Microbenchmark of the codecs hot path against the SageMaker inference toolkit's way of doing it.

Prints µs per call (best of several timeit repeats) for byoc_serve.codecs and, in the same run, for
the toolkit's decoders/encoders (np.genfromtxt / np.savetxt for CSV, json + np.array for JSON),
re-implemented here with numpy + json so the toolkit need not be installed. The ratio is the number
to quote; absolute µs move with machine load.

Run: .venv/bin/python bench/codecs_micro.py
"""

from __future__ import annotations

import io
import json
import timeit
from typing import Any, Callable

import numpy as np

from byoc_serve.codecs import decode, encode, encode_records, negotiate

FEATURES = 10


def toolkit_csv_decode(body: bytes) -> np.ndarray:
    return np.genfromtxt(io.StringIO(body.decode("utf-8")), delimiter=",")


def toolkit_csv_encode(array: np.ndarray) -> str:
    stream = io.StringIO()
    np.savetxt(stream, array, delimiter=",", fmt="%s")
    return stream.getvalue()


def toolkit_json_decode(body: bytes) -> np.ndarray:
    return np.array(json.loads(body.decode("utf-8")))


def toolkit_json_encode(array: np.ndarray) -> str:
    return json.dumps(array.tolist())


def best_us(call: Callable[[], Any], repeat: int = 7) -> float:
    number, _ = timeit.Timer(call).autorange()
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def cases(rows: int, rng: np.random.Generator) -> list[tuple[str, Callable[[], Any], Callable[[], Any] | None]]:
    matrix = rng.random((rows, FEATURES))
    scores = rng.random(rows)  # one score per row, what a regressor or binary classifier returns
    csv_in = "".join(",".join(repr(x) for x in row) + "\n" for row in matrix.tolist()).encode()
    json_in = encode(matrix, "application/json")
    return [
        (
            f"csv  decode {rows}x{FEATURES} + encode {rows} scores",
            lambda: (decode(csv_in, "text/csv"), encode(scores, "text/csv")),
            lambda: (toolkit_csv_decode(csv_in), toolkit_csv_encode(scores)),
        ),
        (
            f"csv  decode {rows}x{FEATURES} + encode it back",
            lambda: encode(decode(csv_in, "text/csv"), "text/csv"),
            lambda: toolkit_csv_encode(toolkit_csv_decode(csv_in)),
        ),
        (
            f"json decode {rows}x{FEATURES} + encode {rows} scores",
            lambda: (decode(json_in, "application/json"), encode(scores, "application/json")),
            lambda: (toolkit_json_decode(json_in), toolkit_json_encode(scores)),
        ),
        (
            f"json decode {rows}x{FEATURES} + encode it back",
            lambda: encode(decode(json_in, "application/json"), "application/json"),
            lambda: toolkit_json_encode(toolkit_json_decode(json_in)),
        ),
        (f"batch json-lines encode {rows}x{FEATURES}", lambda: encode_records(matrix, "application/json"), None),
    ]


def main() -> None:
    rng = np.random.default_rng(0)
    table = cases(1, rng) + cases(100, rng)
    header = "text/csv;q=0.5, application/json"
    table.append((f"negotiate {header!r}", lambda: negotiate(header, "text/csv"), None))
    print(f"{'case':46s} {'byoc µs':>9s} {'toolkit µs':>11s} {'speed-up':>9s}")
    for name, ours, toolkit in table:
        ours_us = best_us(ours)
        if toolkit is None:
            print(f"{name:46s} {ours_us:9.2f}")
            continue
        toolkit_us = best_us(toolkit)
        print(f"{name:46s} {ours_us:9.2f} {toolkit_us:11.2f} {toolkit_us / ours_us:8.1f}x")


if __name__ == "__main__":
    main()
