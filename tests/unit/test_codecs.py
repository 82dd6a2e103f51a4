"""Codecs: decoding request bodies, encoding predictions, Accept negotiation."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import orjson
import pytest

from harness import sparse_npz

from byoc_serve import codecs
from byoc_serve.codecs import (
    DECODABLE,
    ENCODABLE,
    decode,
    encode,
    encode_records,
    negotiate,
    parse_media_type,
    to_jsonable,
)
from byoc_serve.errors import BadRequest, ModelFailure, NotAcceptable, PayloadTooLarge, UnsupportedContentType


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz_bytes(*args: np.ndarray, **kwargs: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *args, **kwargs)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ registries


def test_registries_list_the_supported_media_types():
    assert DECODABLE == (
        "application/json",
        "text/csv",
        "application/jsonlines",
        "application/x-npy",
        "application/x-npz",
        "text/plain",
    )
    assert ENCODABLE == ("application/json", "text/csv", "application/jsonlines", "application/x-npy")


def test_import_pulls_in_neither_scipy_nor_pandas():
    probe = "import sys, byoc_serve.codecs; print('scipy' in sys.modules, 'pandas' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------- parse_media_type


@pytest.mark.parametrize(
    "value, expected",
    [
        ("text/csv", "text/csv"),
        ("Text/CSV; charset=utf-8", "text/csv"),
        ("  application/JSON ;q=1", "application/json"),
        ("application/x-jsonlines", "application/jsonlines"),
        ("application/json-lines", "application/jsonlines"),
        ("application/jsonl", "application/jsonlines"),
        ("application/x-ndjson", "application/jsonlines"),
        ("application/x-npy", "application/x-npy"),
        (None, None),
        ("", None),
        ("   ", None),
        ("; charset=utf-8", None),
    ],
)
def test_parse_media_type_ignores_case_parameters_and_resolves_aliases(value, expected):
    assert parse_media_type(value) == expected


# ------------------------------------------------------------------------------ decode: errors


@pytest.mark.parametrize("content_type", [None, "", "  "])
def test_missing_content_type_is_415_listing_decodable_types(content_type):
    with pytest.raises(UnsupportedContentType) as caught:
        decode(b"[1, 2]", content_type)
    assert caught.value.status == 415
    assert "missing" in caught.value.message
    for media in DECODABLE:
        assert media in caught.value.message


def test_unknown_content_type_is_415_naming_it_and_listing_decodable_types():
    with pytest.raises(UnsupportedContentType) as caught:
        decode(b"\x89PNG", "image/png")
    assert "'image/png'" in caught.value.message
    for media in DECODABLE:
        assert media in caught.value.message


@pytest.mark.parametrize(
    "body, content_type, fragment",
    [
        (b"{not json", "application/json", "not valid JSON"),
        (b"", "application/json", "not valid JSON"),
        (b'"\xff\xfe"', "application/json", "not valid JSON"),
        (b"[1]\n{oops\n", "application/jsonlines", "record 2 is not valid JSON"),
        (b"\n \n", "application/jsonlines", "no records"),
        (b"1,2\n3\n", "text/csv", "different lengths"),
        (b"a,b\nc\n", "text/csv", "row 2 has 1"),
        (b"", "text/csv", "no rows"),
        (b" \r\n \n", "text/csv", "no rows"),
        (b"\xff\xfe,a", "text/csv", "not valid UTF-8"),
        (b"definitely not npy", "application/x-npy", "not a valid .npy"),
        (b"PK\x03\x04 broken zip", "application/x-npz", "not a valid .npz"),
        (b"\xff\xfe", "text/plain", "not valid UTF-8"),
    ],
)
def test_malformed_body_is_400_with_a_short_message(body, content_type, fragment):
    with pytest.raises(BadRequest) as caught:
        decode(body, content_type)
    assert caught.value.status == 400
    assert fragment in caught.value.message
    assert "Traceback" not in caught.value.message


def test_truncated_npy_is_400():
    body = npy_bytes(np.arange(100.0))
    with pytest.raises(BadRequest):
        decode(body[:-10], "application/x-npy")


def test_npy_with_pickled_objects_is_400_not_unpickled():
    body = npy_bytes(np.array([{"a": 1}], dtype=object))
    with pytest.raises(BadRequest) as caught:
        decode(body, "application/x-npy")
    assert "pickle" in caught.value.message


def test_npz_expanding_past_the_limit_is_413_before_it_is_inflated(monkeypatch):
    zeros = np.zeros(1000)  # 8,000 bytes of array, ~50 bytes deflated
    buffer = io.BytesIO()
    np.savez_compressed(buffer, zeros)
    monkeypatch.setattr(codecs, "MAX_NPZ_EXPANDED_BYTES", 8000)  # the member is 8,128 bytes with its .npy header
    with pytest.raises(PayloadTooLarge) as caught:
        decode(buffer.getvalue(), "application/x-npz")
    assert "expands to 8128 bytes" in caught.value.message and caught.value.status == 413
    monkeypatch.setattr(codecs, "MAX_NPZ_EXPANDED_BYTES", 8128)
    assert np.array_equal(decode(buffer.getvalue(), "application/x-npz"), zeros)


@pytest.mark.parametrize("form", ["npy", "npz"])
def test_more_strings_than_the_limit_are_413(monkeypatch, form):
    # The real limit is 10**6: a string model makes each element a Python object.
    monkeypatch.setattr(codecs, "MAX_DECODED_STRINGS", 1000)
    at_limit, over = np.zeros(1000, "S1"), np.array(["ab"] * 1001)
    body = {"npy": npy_bytes, "npz": lambda array: npz_bytes(a=array[:500], b=array[500:])}[form]
    content_type = f"application/x-{form}"
    assert len(decode(body(at_limit), content_type)) == {"npy": 1000, "npz": 2}[form]
    with pytest.raises(PayloadTooLarge) as caught:
        decode(body(over), content_type)
    assert caught.value.message == "the body holds 1001 strings; at most 1000 are decoded from one request"
    numbers = np.zeros(5000)
    assert len(decode(npy_bytes(numbers), "application/x-npy")) == 5000  # only strings count


def test_empty_npz_is_400():
    with pytest.raises(BadRequest) as caught:
        decode(npz_bytes(), "application/x-npz")
    assert "no arrays" in caught.value.message


# -------------------------------------------------------------------------------- decode: JSON


def test_json_numeric_list_becomes_array():
    result = decode(b"[[1.5, 2], [3, 4]]", "application/json")
    assert isinstance(result, np.ndarray)
    assert result.shape == (2, 2)
    np.testing.assert_array_equal(result, [[1.5, 2.0], [3.0, 4.0]])


def test_json_decode_accepts_charset_parameter_and_str_body():
    result = decode("[1, 2, 3]", "Application/JSON; charset=UTF-8")
    np.testing.assert_array_equal(result, [1, 2, 3])


@pytest.mark.parametrize("body", [b'["a", "b"]', b"[[1, 2], [3]]", b'[1, "x"]', b'[{"a": 1}]', b"[1, null]"])
def test_json_non_numeric_or_ragged_list_stays_a_list(body):
    assert decode(body, "application/json") == orjson.loads(body)


def test_json_instances_are_unwrapped():
    result = decode(b'{"instances": [[1, 2, 3]]}', "application/json")
    assert isinstance(result, np.ndarray) and result.shape == (1, 3)


def test_json_inputs_list_is_unwrapped():
    result = decode(b'{"inputs": [0.5, 1.5]}', "application/json")
    np.testing.assert_array_equal(result, [0.5, 1.5])


def test_json_named_inputs_become_dict_of_arrays():
    result = decode(b'{"inputs": {"ids": [[1, 2]], "mask": [[1, 1]], "text": ["hi"]}}', "application/json")
    assert set(result) == {"ids", "mask", "text"}
    assert isinstance(result["ids"], np.ndarray) and result["ids"].shape == (1, 2)
    assert result["text"] == ["hi"]


@pytest.mark.parametrize("body", [b'{"a": 1, "b": [1, 2]}', b'{"instances": [1], "parameters": {"k": 2}}'])
def test_json_other_dicts_are_returned_as_is(body):
    assert decode(body, "application/json") == orjson.loads(body)


def test_json_scalar_is_returned_as_is():
    assert decode(b"42", "application/json") == 42
    assert decode(b'"hello"', "application/json") == "hello"


# --------------------------------------------------------------------------------- decode: CSV


def test_csv_single_line_gives_one_row_2d_array():
    result = decode(b"1,2,3,4,5,6,7,8,9,10", "text/csv")
    assert result.shape == (1, 10)
    assert result.dtype == np.float64
    np.testing.assert_array_equal(result[0], np.arange(1, 11))


@pytest.mark.parametrize(
    "body",
    [
        b"0.5,1e-3,-2\n3,4,5\n",
        b"0.5,1e-3,-2\r\n3,4,5\r\n",
        b"  0.5 , 1e-3,-2 \n 3,4,5",
        b"\n0.5,1e-3,-2\n\n3,4,5\n\n",
        b"0.5,.001,-2.\n+3,4,5",
    ],
)
def test_csv_numeric_rows_tolerate_newline_styles_spaces_and_blank_lines(body):
    result = decode(body, "text/csv; charset=utf-8")
    assert result.dtype == np.float64
    np.testing.assert_array_equal(result, [[0.5, 0.001, -2.0], [3.0, 4.0, 5.0]])


def test_csv_single_column_gives_one_column_per_row():
    assert decode(b"1\n2\n3\n", "text/csv").shape == (3, 1)


def test_csv_full_precision_floats_round_trip_exactly():
    values = np.random.default_rng(0).random((5, 4)) * 1e-3
    body = "\n".join(",".join(repr(x) for x in row) for row in values.tolist()).encode()
    np.testing.assert_array_equal(decode(body, "text/csv"), values)


def test_csv_empty_cells_and_nan_names_become_nan():
    result = decode(b"1,,3\nnan,inf,-inf\n", "text/csv")
    assert result.dtype == np.float64
    assert np.isnan(result[0, 1]) and np.isnan(result[1, 0])
    assert result[1, 1] == np.inf and result[1, 2] == -np.inf


def test_csv_with_header_falls_back_to_string_array_keeping_every_row():
    result = decode(b"age,city\n31,Paris\n45,Lima\n", "text/csv")
    assert result.dtype == object
    assert result.shape == (3, 2)
    assert result.tolist() == [["age", "city"], ["31", "Paris"], ["45", "Lima"]]


def test_csv_text_features_with_quotes_are_parsed_not_rejected():
    result = decode(b'1.5,"red, dark",yes\n2.5,blue,"say ""hi"""\n', "text/csv")
    assert result.shape == (2, 3)
    assert result[0, 1] == "red, dark"
    assert result[1, 2] == 'say "hi"'


def test_csv_large_integers_fall_back_to_float_parsing():
    result = decode(b"123456789012345678901234567890,1\n", "text/csv")
    assert result[0, 0] == 1.2345678901234568e29


# -------------------------------------------------------------------------- decode: JSON Lines


def test_jsonlines_numeric_records_become_2d_array():
    result = decode(b"[1, 2]\n[3, 4]\n", "application/jsonlines")
    assert isinstance(result, np.ndarray)
    np.testing.assert_array_equal(result, [[1, 2], [3, 4]])


def test_jsonlines_features_records_are_unwrapped_like_sagemaker_xgboost():
    body = b'{"features": [1, 2]}\r\n\n{"features": [3, 4]}\n'
    result = decode(body, "application/x-jsonlines")
    np.testing.assert_array_equal(result, [[1, 2], [3, 4]])


def test_jsonlines_object_records_stay_a_list_in_order():
    body = b'{"text": "a"}\n{"text": "b", "id": 2}\n'
    assert decode(body, "application/jsonlines") == [{"text": "a"}, {"text": "b", "id": 2}]


# ------------------------------------------------------------------------------ decode: binary


def test_npy_round_trips_dtype_and_shape():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = decode(npy_bytes(array), "application/x-npy")
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, array)


def test_npz_with_one_array_gives_that_array():
    result = decode(npz_bytes(np.arange(3)), "application/x-npz")
    np.testing.assert_array_equal(result, [0, 1, 2])


def test_npz_with_several_arrays_gives_named_dict():
    result = decode(npz_bytes(ids=np.arange(3), mask=np.ones(3)), "application/x-npz")
    assert set(result) == {"ids", "mask"}
    np.testing.assert_array_equal(result["mask"], [1.0, 1.0, 1.0])


def test_sparse_npz_gives_scipy_sparse_matrix():
    scipy_sparse = pytest.importorskip("scipy.sparse")
    matrix = scipy_sparse.random(5, 7, density=0.3, format="csr", random_state=0)
    buffer = io.BytesIO()
    scipy_sparse.save_npz(buffer, matrix)
    result = decode(buffer.getvalue(), "application/x-npz")
    assert scipy_sparse.issparse(result)
    np.testing.assert_array_equal(result.toarray(), matrix.toarray())


I32 = np.int32
OUT_OF_RANGE_SPARSE = {
    "csr-index-past-the-columns": ("csr", (1, 4), dict(data=[1.0], indices=np.array([10**8], I32), indptr=np.array([0, 1], I32))),
    "csr-negative-index": ("csr", (1, 4), dict(data=[1.0], indices=np.array([-5], I32), indptr=np.array([0, 1], I32))),
    "csr-indptr-past-the-data": ("csr", (2, 4), dict(data=[1.0], indices=np.array([1], I32), indptr=np.array([0, 5, 1], I32))),
    "csc-index-past-the-rows": ("csc", (1, 4), dict(data=[1.0], indices=np.array([10**8], I32), indptr=np.array([0, 1, 1, 1, 1], I32))),
    "bsr-block-past-the-columns": ("bsr", (2, 4), dict(data=np.ones((1, 2, 2)), indices=np.array([50], I32), indptr=np.array([0, 1], I32))),
    "coo-negative-column": ("coo", (1, 4), dict(data=[1.0], row=[0], col=[-3])),
}


@pytest.mark.parametrize("layout, shape, arrays", OUT_OF_RANGE_SPARSE.values(), ids=OUT_OF_RANGE_SPARSE.keys())
def test_a_sparse_npz_whose_indices_leave_the_matrix_is_400(layout, shape, arrays):
    # Unchecked, a model reading such a CSR reads memory outside it: a worker died of SIGSEGV.
    pytest.importorskip("scipy.sparse")
    with pytest.raises(BadRequest) as caught:
        decode(sparse_npz(layout, shape, **arrays), "application/x-npz")
    assert caught.value.message.startswith("body is not a valid sparse .npz archive: ")


def test_text_plain_gives_the_utf8_string():
    assert decode("héllo wörld".encode(), "text/plain; charset=utf-8") == "héllo wörld"


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"\xef\xbb\xbf1,2\n3,4", "text/csv"),  # Excel's "CSV UTF-8"
        (b"\xef\xbb\xbf[[1, 2], [3, 4]]", "application/json"),
        (b"\xef\xbb\xbf[1, 2]\n[3, 4]\n", "application/jsonlines"),
        ("1,2\r\n3,4".encode("utf-16"), "text/csv; charset=UTF-16"),  # PowerShell's default
        ("[[1, 2], [3, 4]]".encode("utf-16-le"), 'application/json; charset="utf-16le"'),
        ("1,2\n3,4".encode("latin-1"), "text/csv; Charset=ISO-8859-1"),
    ],
    ids=["csv-bom", "json-bom", "jsonl-bom", "csv-utf16", "json-utf16le-quoted", "csv-latin1"],
)
def test_text_bodies_may_carry_a_bom_or_declare_their_charset(body, content_type):
    np.testing.assert_array_equal(decode(body, content_type), [[1, 2], [3, 4]])


def test_text_in_a_declared_charset_keeps_its_characters():
    assert decode("prénom".encode("latin-1"), "text/plain; charset=latin-1") == "prénom"
    assert decode('["prénom"]'.encode("cp1252"), "application/json; charset=windows-1252") == ["prénom"]


@pytest.mark.parametrize("charset", ["klingon", "base64", "rot13"])
def test_an_unknown_or_non_text_charset_is_415(charset):
    with pytest.raises(UnsupportedContentType) as caught:
        decode(b"1,2", f"text/csv; charset={charset}")
    assert caught.value.status == 415 and charset in caught.value.message


@pytest.mark.parametrize("body, charset", [(b"\xff\xfe\x00", "utf-16"), (b"0.5,1.0", "punycode"), (b"1,2", "undefined")])
def test_a_body_not_in_its_declared_charset_is_400(body, charset):
    # punycode and undefined raise UnicodeError itself, not UnicodeDecodeError.
    with pytest.raises(BadRequest) as caught:
        decode(body, f"text/csv; charset={charset}")
    assert caught.value.status == 400 and charset in caught.value.message


# -------------------------------------------------------------------------------- encode: JSON


def test_json_encodes_arrays_as_plain_lists():
    assert orjson.loads(encode(np.array([[1.0, 2.5], [3.0, 4.0]]), "application/json")) == [[1.0, 2.5], [3.0, 4.0]]


def test_json_encodes_float32_in_shortest_form():
    assert encode(np.array([0.1, 0.25], dtype=np.float32), "application/json") == b"[0.1,0.25]"


def test_json_encodes_dict_of_arrays_tuples_and_numpy_scalars():
    prediction = {"label": np.int64(1), "proba": np.array([0.25, 0.75]), "pair": (np.float32(0.5), "x")}
    assert orjson.loads(encode(prediction, "application/json")) == {
        "label": 1,
        "proba": [0.25, 0.75],
        "pair": [0.5, "x"],
    }


def test_json_encodes_scalar_as_value():
    assert encode(np.float64(2.5), "application/json") == b"2.5"


def test_json_encodes_non_contiguous_big_endian_and_object_arrays():
    proba = np.arange(6.0).reshape(3, 2)
    assert orjson.loads(encode(proba[:, 1], "application/json")) == [1.0, 3.0, 5.0]
    assert orjson.loads(encode(np.array([1.5, 2.5], dtype=">f8"), "application/json")) == [1.5, 2.5]
    assert orjson.loads(encode(np.array(["a", 1], dtype=object), "application/json")) == ["a", 1]
    assert orjson.loads(encode(np.array(["cat", "dog"]), "application/json")) == ["cat", "dog"]


def test_json_encodes_integer_class_keys_and_nan_as_null():
    assert orjson.loads(encode({np.int64(0): 0.5, 1: float("nan")}, "application/json")) == {"0": 0.5, "1": None}


def test_json_encodes_torch_tensors_even_with_grad():
    torch = pytest.importorskip("torch")
    tensor = torch.tensor([[0.5, 1.5]], requires_grad=True) * 2
    assert orjson.loads(encode({"logits": tensor}, "application/json")) == {"logits": [[1.0, 3.0]]}
    assert encode(tensor, "text/csv") == b"1.0,3.0\n"


def test_unencodable_prediction_is_500_naming_the_type():
    with pytest.raises(ModelFailure) as caught:
        encode({"model": object()}, "application/json")
    assert caught.value.status == 500
    assert "dict" in caught.value.message


def test_to_jsonable_converts_to_plain_python():
    class TensorLike:
        def numpy(self):
            return np.array([1, 2], dtype=np.int32)

    result = to_jsonable({"a": (np.float32(0.5), np.array([[1]])), "t": TensorLike(), np.int64(3): [np.bool_(True)]})
    assert result == {"a": [0.5, [[1]]], "t": [1, 2], 3: [True]}
    assert type(result["a"][0]) is float and type(result["t"][0]) is int
    assert to_jsonable(np.array([np.float32(1.5), "x"], dtype=object)) == [1.5, "x"]


# --------------------------------------------------------------------------------- encode: CSV


def test_csv_encodes_1d_as_one_value_per_line():
    assert encode(np.array([1, 0, 1]), "text/csv") == b"1\n0\n1\n"


def test_csv_encodes_2d_as_rows():
    assert encode(np.array([[0.25, 0.75], [1.0, 0.0]]), "text/csv") == b"0.25,0.75\n1.0,0.0\n"


def test_csv_floats_use_shortest_round_trip_form():
    values = np.random.default_rng(1).random((20, 3))
    body = encode(values, "text/csv")
    np.testing.assert_array_equal(decode(body, "text/csv"), values)
    assert encode(np.array([0.1], dtype=np.float32), "text/csv") == b"0.1\n"


def test_csv_writes_nan_and_infinity_by_name():
    body = encode(np.array([[1.0, np.nan], [np.inf, -np.inf]]), "text/csv")
    assert body == b"1.0,nan\ninf,-inf\n"


def test_csv_quotes_strings_only_when_needed():
    prediction = np.array([["plain", "has,comma"], ["has \"quote\"", "x"]], dtype=object)
    assert encode(prediction, "text/csv") == b'plain,"has,comma"\n"has ""quote""",x\n'


def test_csv_encodes_lists_scalars_and_single_output_dicts():
    assert encode([[1, "a"], [2, "b"]], "text/csv") == b"1,a\n2,b\n"
    assert encode(np.float64(0.5), "text/csv") == b"0.5\n"
    assert encode({"predictions": np.array([3, 4])}, "text/csv") == b"3\n4\n"
    assert encode(np.array([], dtype=np.float64), "text/csv") == b""


@pytest.mark.parametrize(
    "prediction",
    [
        {"label": np.array([1]), "proba": np.array([0.5])},
        np.zeros((2, 2, 2)),
        [{"label": "cat", "score": 0.9}],
    ],
)
def test_csv_cannot_carry_several_outputs_deep_arrays_or_nested_values(prediction):
    with pytest.raises(NotAcceptable) as caught:
        encode(prediction, "text/csv")
    assert caught.value.status == 406
    assert "application/json" in caught.value.message


# -------------------------------------------------------------------------- encode: JSON Lines


def test_jsonlines_encodes_one_row_per_line():
    assert encode(np.array([[1, 2], [3, 4]]), "application/jsonlines") == b"[1,2]\n[3,4]\n"
    assert encode(np.array([0.5, 1.5]), "application/jsonlines") == b"0.5\n1.5\n"


def test_jsonlines_encodes_lists_of_objects_and_single_dicts():
    records = [{"label": "cat"}, {"label": "dog"}]
    assert encode(records, "application/jsonlines") == b'{"label":"cat"}\n{"label":"dog"}\n'
    assert encode({"a": np.array([1, 2])}, "application/jsonlines") == b'{"a":[1,2]}\n'
    assert encode(np.zeros((0, 3)), "application/jsonlines") == b""


# --------------------------------------------------------------------------------- encode: NPY


def test_npy_round_trips_through_np_load():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = np.load(io.BytesIO(encode(array, "application/x-npy")), allow_pickle=False)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, array)


def test_npy_takes_the_array_of_a_single_output_dict_or_a_list():
    result = np.load(io.BytesIO(encode({"y": [1.5, 2.5]}, "application/x-npy")))
    np.testing.assert_array_equal(result, [1.5, 2.5])


@pytest.mark.parametrize(
    "prediction",
    [{"a": np.zeros(2), "b": np.ones(2)}, [{"label": "cat"}], [[1, 2], [3]]],
)
def test_npy_refuses_several_outputs_and_object_data_with_406(prediction):
    with pytest.raises(NotAcceptable) as caught:
        encode(prediction, "application/x-npy")
    assert "application/json" in caught.value.message


def test_encode_unknown_accept_is_406_listing_encodable_types():
    with pytest.raises(NotAcceptable) as caught:
        encode([1], "application/x-npz")
    for media in ENCODABLE:
        assert media in caught.value.message


def test_encode_accepts_parameters_on_the_media_type():
    assert encode([1, 2], "Application/JSON; charset=utf-8") == b"[1,2]"


# ------------------------------------------------------------------------------ encode_records


@pytest.mark.parametrize("rows", [1, 3, 100])
@pytest.mark.parametrize("accept", ["application/json", "text/csv", "application/jsonlines"])
def test_batch_output_has_exactly_one_line_per_record_in_order(rows, accept):
    prediction = np.column_stack([np.arange(rows), np.arange(rows) * 0.5])
    lines = encode_records(prediction, accept).decode().splitlines()
    assert len(lines) == rows
    assert [float(line.strip("[]").split(",")[0]) for line in lines] == list(range(rows))


def test_batch_json_becomes_json_lines_for_1d_and_record_lists():
    assert encode_records(np.array([0, 1, 1]), "application/json") == b"0\n1\n1\n"
    records = [{"label": 0}, {"label": 1}]
    assert encode_records(records, "application/json") == b'{"label":0}\n{"label":1}\n'


def test_batch_json_splits_named_outputs_into_one_object_per_record():
    # A SavedModel with two outputs answers {"label": [...], "scores": [[...], ...]} for two records.
    prediction = {"label": np.array([2, 0]), "scores": np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)}
    for accept in ("application/json", "application/jsonlines"):
        lines = encode_records(prediction, accept).splitlines()
        assert [orjson.loads(line) for line in lines] == [{"label": 2, "scores": [0.1, 0.9]}, {"label": 0, "scores": [0.8, 0.2]}]


@pytest.mark.parametrize("prediction", [{"label": [1, 2], "total": 3}, {"label": [1, 2], "scores": [[1], [2], [3]]}])
def test_batch_named_outputs_without_one_value_per_record_stay_one_line(prediction):
    assert encode_records(prediction, "application/json").count(b"\n") == 1


def test_batch_csv_and_npy_match_the_single_request_form():
    prediction = np.array([[0.5, 1.0], [2.0, 3.0]])
    assert encode_records(prediction, "text/csv") == encode(prediction, "text/csv")
    assert encode_records(prediction, "application/x-npy") == encode(prediction, "application/x-npy")


# ---------------------------------------------------------------------------------- negotiate


@pytest.mark.parametrize("header", [None, "", "  ", "*/*", "*/*; q=0.8"])
def test_missing_or_wildcard_accept_gives_the_default(header):
    assert negotiate(header, "text/csv") == "text/csv"


def test_default_is_itself_parsed_leniently():
    assert negotiate(None, "Text/CSV; charset=utf-8") == "text/csv"
    assert negotiate("*/*", "application/x-jsonlines") == "application/jsonlines"


@pytest.mark.parametrize(
    "header, expected",
    [
        ("application/json", "application/json"),
        ("TEXT/CSV; charset=utf-8", "text/csv"),
        ("application/x-jsonlines", "application/jsonlines"),
        ("image/png, text/csv", "text/csv"),
        ("text/csv, application/json", "text/csv"),
        ("application/json;q=0.5, text/csv", "text/csv"),
        ("text/csv;q=0.2, application/x-npy;q=0.9, application/json;q=0.5", "application/x-npy"),
        ("text/*", "text/csv"),
        ("application/*", "application/json"),
        ("image/png, */*;q=0.1", "application/json"),
        ("image/gif, *; q=.2", "application/json"),
        ("text/csv;q=oops", "text/csv"),
    ],
)
def test_accept_negotiation_honours_order_q_values_and_wildcards(header, expected):
    assert negotiate(header, "application/json") == expected


def test_type_wildcard_prefers_the_default_when_it_matches():
    assert negotiate("application/*", "application/x-npy") == "application/x-npy"


def test_q_zero_excludes_a_type_even_under_a_wildcard():
    assert negotiate("application/json;q=0, */*", "application/json") == "text/csv"


@pytest.mark.parametrize("header", ["image/png", "application/json;q=0", "application/x-npz", "video/*"])
def test_nothing_acceptable_is_406_listing_encodable_types(header):
    with pytest.raises(NotAcceptable) as caught:
        negotiate(header, "application/json")
    assert caught.value.status == 406
    assert repr(header) in caught.value.message
    for media in ENCODABLE:
        assert media in caught.value.message


def test_unsupported_default_is_406_when_the_caller_leaves_accept_open():
    with pytest.raises(NotAcceptable) as caught:
        negotiate(None, "text/plain")
    assert "text/plain" in caught.value.message


def test_npy_body_sent_as_npz_is_still_decoded():
    np.testing.assert_array_equal(decode(npy_bytes(np.arange(3)), "application/x-npz"), [0, 1, 2])


def test_csv_encodes_booleans_and_strings_through_the_csv_writer():
    assert encode(np.array([True, False]), "text/csv") == b"True\nFalse\n"
    assert encode(np.array(["cat", "dog"]), "text/csv") == b"cat\ndog\n"
