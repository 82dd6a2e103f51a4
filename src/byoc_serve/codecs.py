"""Media-type registry: request bodies to model inputs, predictions to response bodies.

One dict per direction maps a media type to its function. Only numpy, orjson and the standard
library are imported here (scipy only when a sparse .npz arrives): this runs on every request.
"""

from __future__ import annotations

import csv
import io
import zipfile
from typing import Any, Callable

import numpy as np
import orjson

from byoc_serve.errors import BadRequest, ModelFailure, NotAcceptable, PayloadTooLarge, UnsupportedContentType

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_NUMERIC_KINDS = "biuf"
# Bytes a plain numeric CSV is made of; anything else (quotes, letters, nan) takes the exact path.
_NUMERIC_CSV_BYTES = b"0123456789.,eE+- \t\r\n"
# What the arrays of one .npz body may expand to: deflate turns 6 MB of zeros into 6 GB.
MAX_NPZ_EXPANDED_BYTES = 256 * 1024 * 1024
# Strings one .npy/.npz body may hold: a string model makes each one a Python object of 40-135 bytes,
# so 30 KB of compressed one-byte strings grew a worker by 1.2 GB.
MAX_DECODED_STRINGS = 1_000_000
_UTF8_BOM = b"\xef\xbb\xbf"  # what Excel and PowerShell put in front of a UTF-8 CSV
_UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
_ALIASES = {
    "application/x-jsonlines": "application/jsonlines",
    "application/json-lines": "application/jsonlines",
    "application/jsonl": "application/jsonlines",
    "application/x-ndjson": "application/jsonlines",
    "application/ndjson": "application/jsonlines",
}


def parse_media_type(value: str | None) -> str | None:
    """'Text/CSV; charset=utf-8' -> 'text/csv'; aliases resolved; None for a missing or blank value."""
    if not value:
        return None
    media = value.split(";", 1)[0].strip().lower()
    if not media:
        return None
    return _ALIASES.get(media, media)


# ---------------------------------------------------------------------------------------- decoding


def decode(body: bytes | str, content_type: str | None) -> Any:
    """Turn a request body into a model input according to its Content-Type (400/415 on failure)."""
    media = parse_media_type(content_type)
    decoder = _DECODERS.get(media or "")
    if decoder is None:
        if media is None:
            raise UnsupportedContentType(f"Content-Type header is missing; send one of: {', '.join(DECODABLE)}")
        raise UnsupportedContentType(
            f"Content-Type {content_type!r} is not supported; send one of: {', '.join(DECODABLE)}"
        )
    if isinstance(body, str):
        body = body.encode()
    if media in _TEXT_MEDIA:
        body = _as_utf8(body, content_type or "")
    return decoder(body)


def as_text(body: bytes, content_type: str | None) -> str:
    """A text body as str, read in its declared charset (else UTF-8), without a byte order mark."""
    try:
        return _as_utf8(body, content_type or "").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8: {exc}") from None


def _as_utf8(body: bytes, content_type: str) -> bytes:
    """A text body as UTF-8 without a byte order mark, whatever charset its Content-Type declares."""
    charset = _charset(content_type)
    if charset is not None and charset not in _UTF8_CHARSETS:
        try:
            body = body.decode(charset).encode("utf-8")
        except LookupError:  # unknown, or not a text encoding (base64, zlib)
            raise UnsupportedContentType(f"charset {charset!r} is not supported; send UTF-8") from None
        except UnicodeError as exc:  # UnicodeDecodeError, and codecs such as punycode raise the base class
            raise BadRequest(f"body is not valid {charset}: {exc}") from None
    return body[len(_UTF8_BOM):] if body.startswith(_UTF8_BOM) else body


def _charset(content_type: str) -> str | None:
    """The charset parameter of a Content-Type, lower-cased, or None."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower() or None
    return None


def _array_or_list(value: Any) -> Any:
    """A numeric rectangular list becomes an ndarray; anything else is returned unchanged."""
    if not isinstance(value, list):
        return value
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError):  # ragged, or ints beyond int64
        return value
    return array if array.dtype.kind in _NUMERIC_KINDS else value


def _decode_json(body: bytes) -> Any:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if isinstance(value, dict) and len(value) == 1:
        if "instances" in value:
            return _array_or_list(value["instances"])
        if "inputs" in value:
            inputs = value["inputs"]
            if isinstance(inputs, dict):
                return {name: _array_or_list(x) for name, x in inputs.items()}
            return _array_or_list(inputs)
    return _array_or_list(value)


def _decode_csv(body: bytes) -> np.ndarray:
    stripped = body.strip()
    if not stripped:
        raise BadRequest("CSV body has no rows")
    if not stripped.translate(None, _NUMERIC_CSV_BYTES):
        # Fast path: plain numbers are valid JSON numbers, so orjson parses the whole body at C speed.
        try:
            return np.array(orjson.loads(b"[[" + stripped.replace(b"\n", b"],[") + b"]]"), dtype=np.float64)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            pass  # '1,,3', '.5', blank lines, ragged rows: the exact path below decides
    return _decode_csv_exact(stripped)


def _decode_csv_exact(body: bytes) -> np.ndarray:
    """csv-module parse: numeric -> float array (empty cell -> nan); text cells -> object array of str."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"CSV body is not valid UTF-8: {exc}") from None
    try:
        reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
        rows = [row for row in reader if row and row != [""]]  # skip blank lines
    except csv.Error as exc:
        raise BadRequest(f"CSV body cannot be parsed: {exc}") from None
    if not rows:
        raise BadRequest("CSV body has no rows")
    width = len(rows[0])
    for number, row in enumerate(rows, 1):
        if len(row) != width:
            raise BadRequest(f"CSV rows have different lengths: row 1 has {width} values, row {number} has {len(row)}")
    try:
        return np.array([[float(cell) if cell.strip() else np.nan for cell in row] for row in rows], dtype=np.float64)
    except ValueError:
        return np.array(rows, dtype=object)  # text features are legitimate model inputs


def _decode_jsonlines(body: bytes) -> Any:
    lines = [line for line in body.splitlines() if line.strip()]
    if not lines:
        raise BadRequest("JSON Lines body has no records")
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"JSON Lines record {number} is not valid JSON: {exc}") from None
        # The SageMaker XGBoost container accepts {"features": [...]} per line.
        if isinstance(record, dict) and len(record) == 1 and isinstance(record.get("features"), list):
            record = record["features"]
        records.append(record)
    return _array_or_list(records)


def _decode_npy(body: bytes) -> np.ndarray:
    try:
        array = np.lib.format.read_array(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # numpy raises several types for truncated or foreign data
        raise BadRequest(f"body is not a valid .npy array: {exc}") from None
    _limit_strings([array])
    return array


def _limit_strings(arrays: list[np.ndarray]) -> None:
    strings = sum(array.size for array in arrays if array.dtype.kind in "SU")
    if strings > MAX_DECODED_STRINGS:
        raise PayloadTooLarge(f"the body holds {strings} strings; at most {MAX_DECODED_STRINGS} are decoded from one request")


def _decode_npz(body: bytes) -> Any:
    """One array -> that array; several -> dict name -> array; a scipy.sparse .npz -> sparse matrix.

    413 before anything is inflated when the members' declared sizes exceed MAX_NPZ_EXPANDED_BYTES
    (zipfile never inflates a member past its declared size).
    """
    if body.startswith(np.lib.format.MAGIC_PREFIX):  # a plain .npy body sent as npz: still unambiguous
        return _decode_npy(body)
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            members = archive.infolist()
            expanded = sum(info.file_size for info in members)
            if expanded > MAX_NPZ_EXPANDED_BYTES:
                raise PayloadTooLarge(
                    f".npz archive expands to {expanded} bytes; at most {MAX_NPZ_EXPANDED_BYTES} bytes of "
                    "arrays are decoded from one request"
                )
            names = [info.filename.removesuffix(".npy") for info in members]
            if {"format", "shape", "data"} <= set(names):
                arrays = None
            else:
                arrays = {
                    name: np.lib.format.read_array(archive.open(info), allow_pickle=False)
                    for name, info in zip(names, members)
                }
    except PayloadTooLarge:
        raise
    except Exception as exc:  # zipfile, numpy and OS errors for foreign or truncated data
        raise BadRequest(f"body is not a valid .npz archive: {exc}") from None
    if arrays is None:
        return _load_sparse(body)
    if not arrays:
        raise BadRequest(".npz archive holds no arrays")
    _limit_strings(list(arrays.values()))
    return next(iter(arrays.values())) if len(arrays) == 1 else arrays


def _load_sparse(body: bytes) -> Any:
    try:
        import scipy.sparse
    except ImportError:
        raise UnsupportedContentType("a sparse .npz needs scipy, which is not installed in this image") from None
    try:
        matrix = scipy.sparse.load_npz(io.BytesIO(body))
        # load_npz trusts a CSR/CSC/BSR's indices and indptr: one out of range and a model reading the
        # matrix reads (or crashes on) memory outside it. COO is checked as it is built.
        if hasattr(matrix, "check_format"):
            matrix.check_format(full_check=True)
        return matrix
    except Exception as exc:
        raise BadRequest(f"body is not a valid sparse .npz archive: {exc}") from None


def _decode_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"text body is not valid UTF-8: {exc}") from None


_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "application/json": _decode_json,
    "text/csv": _decode_csv,
    "application/jsonlines": _decode_jsonlines,
    "application/x-npy": _decode_npy,
    "application/x-npz": _decode_npz,
    "text/plain": _decode_text,
}
DECODABLE: tuple[str, ...] = tuple(_DECODERS)
_TEXT_MEDIA = frozenset({"application/json", "text/csv", "application/jsonlines", "text/plain"})


# ---------------------------------------------------------------------------------------- encoding


def _tensor_to_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):  # torch: drop autograd and leave the GPU before .numpy()
        value = value.detach().cpu()
    return value.numpy()


def _orjson_default(value: Any) -> Any:
    """Called by orjson for what it cannot write itself."""
    if isinstance(value, np.ndarray):  # non-contiguous, non-native byte order, object or str dtype
        return to_jsonable(value)
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "numpy"):
        return _tensor_to_numpy(value)
    raise TypeError


def to_jsonable(prediction: Any) -> Any:
    """Plain Python (lists, dicts, scalars) from numpy arrays and scalars, tuples and tensors."""
    if isinstance(prediction, np.ndarray):
        return to_jsonable(prediction.tolist()) if prediction.dtype.kind == "O" else prediction.tolist()
    if isinstance(prediction, dict):
        return {_plain_key(key): to_jsonable(value) for key, value in prediction.items()}
    if isinstance(prediction, (list, tuple)):
        return [to_jsonable(value) for value in prediction]
    if isinstance(prediction, np.generic):
        return prediction.item()
    if hasattr(prediction, "numpy"):
        return to_jsonable(_tensor_to_numpy(prediction))
    return prediction


def _plain_key(key: Any) -> Any:
    return key.item() if isinstance(key, np.generic) else key


def encode(prediction: Any, accept: str) -> bytes:
    """Serialize a prediction as the (already negotiated) Accept media type."""
    encoder = _ENCODERS.get(accept) or _ENCODERS.get(parse_media_type(accept) or "")
    if encoder is None:
        raise NotAcceptable(f"cannot encode as {accept!r}; supported: {', '.join(ENCODABLE)}")
    return encoder(prediction)


def encode_records(prediction: Any, accept: str) -> bytes:
    """Batch-transform form: exactly one output line per input record, in order (JSON becomes JSON Lines)."""
    media = parse_media_type(accept)
    if media in ("application/json", "application/jsonlines"):
        return encode(_per_record(prediction), "application/jsonlines")
    return encode(prediction, accept)


def _per_record(prediction: Any) -> Any:
    """Named outputs holding one value per record each (the same leading length) -> one
    ``{name: value}`` per record; anything else as it is."""
    if not isinstance(prediction, dict) or not prediction:
        return prediction
    outputs = {name: _as_array(value) for name, value in prediction.items()}
    lengths = {_leading_length(value) for value in outputs.values()}
    if len(lengths) != 1 or None in lengths:
        return prediction
    return [{name: value[i] for name, value in outputs.items()} for i in range(lengths.pop())]


def _leading_length(value: Any) -> int | None:
    if isinstance(value, (list, tuple)) or isinstance(value, np.ndarray) and value.ndim > 0:
        return len(value)
    return None


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_orjson_default, option=_JSON_OPTIONS)
    except orjson.JSONEncodeError:
        pass  # orjson refuses some things outright (numpy-scalar dict keys, big-endian arrays)
    try:
        return orjson.dumps(to_jsonable(value), option=_JSON_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise ModelFailure(f"prediction of type {type(value).__name__} cannot be encoded as JSON: {exc}") from None


def _single_output(prediction: Any, media: str) -> Any:
    """A dict with one output stands for that output; several cannot share one array format."""
    if not isinstance(prediction, dict):
        return prediction
    if len(prediction) == 1:
        return next(iter(prediction.values()))
    raise NotAcceptable(
        f"the prediction has {len(prediction)} named outputs ({', '.join(map(str, prediction))}), "
        f"which {media} cannot carry; ask for application/json"
    )


def _as_array(value: Any) -> Any:
    if isinstance(value, np.ndarray) or not hasattr(value, "numpy"):
        return value
    return _tensor_to_numpy(value)


def _encode_json(prediction: Any) -> bytes:
    return _dumps(prediction)


def _encode_jsonlines(prediction: Any) -> bytes:
    value = _as_array(prediction)
    if isinstance(value, np.ndarray) and value.ndim in (1, 2) and value.dtype.kind in _NUMERIC_KINDS:
        if len(value) == 0:
            return b""
        # Numeric JSON holds no brackets or commas inside values, so rows split exactly on them.
        text = _dumps(value)[1:-1]
        return (text.replace(b",", b"\n") if value.ndim == 1 else text.replace(b"],[", b"]\n[")) + b"\n"
    if isinstance(value, (list, tuple)) or isinstance(value, np.ndarray) and value.ndim > 0:
        records = value
    else:
        records = [value]
    return b"".join(_dumps(record) + b"\n" for record in records)


def _encode_csv(prediction: Any) -> bytes:
    value = _as_array(_single_output(prediction, "text/csv"))
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        if value.ndim > 2:
            raise NotAcceptable(f"a {value.ndim}-D prediction cannot be written as text/csv; ask for application/json")
        if len(np.atleast_1d(value)) == 0:
            return b""
        return _numeric_csv(value)
    return _generic_csv(to_jsonable(value))


def _numeric_csv(array: np.ndarray) -> bytes:
    """Rows of numbers in the same shortest round-trip form as the JSON answer (orjson writes them)."""
    text = _dumps(np.atleast_1d(array))
    text = text[1:-1].replace(b",", b"\n") if array.ndim < 2 else text[2:-2].replace(b"],[", b"\n")
    if array.dtype.kind == "f" and b"null" in text:  # JSON has no nan/inf; CSV readers expect these names
        names = [repr(float(x)).encode() for x in array[~np.isfinite(array)]]
        pieces = text.split(b"null")
        text = b"".join(piece + name for piece, name in zip(pieces, names)) + pieces[-1]
    return text + b"\n"


def _generic_csv(value: Any) -> bytes:
    rows = value if isinstance(value, list) else [value]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        cells = row if isinstance(row, list) else [row]
        if any(isinstance(cell, (list, dict)) for cell in cells):
            raise NotAcceptable("the prediction has nested values, which text/csv cannot carry; ask for application/json")
        writer.writerow(cells)
    return buffer.getvalue().encode()


def _encode_npy(prediction: Any) -> bytes:
    value = _as_array(_single_output(prediction, "application/x-npy"))
    try:
        array = np.asarray(value)
    except ValueError:
        array = None  # ragged lists
    if array is None or array.dtype.kind == "O":
        raise NotAcceptable(
            "the prediction is not a fixed-type array, which application/x-npy needs; ask for application/json"
        )
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "application/json": _encode_json,
    "text/csv": _encode_csv,
    "application/jsonlines": _encode_jsonlines,
    "application/x-npy": _encode_npy,
}
ENCODABLE: tuple[str, ...] = tuple(_ENCODERS)


# ------------------------------------------------------------------------------------- negotiation


def negotiate(accept_header: str | None, default: str) -> str:
    """Pick the response media type from an Accept header (q-values, wildcards); 406 when none fits."""
    if accept_header is not None and accept_header in _ENCODERS:
        return accept_header
    if not accept_header or not accept_header.strip():
        return _negotiated_default(default)
    ranges = []
    for position, item in enumerate(accept_header.split(",")):
        media, _, params = item.partition(";")
        media = parse_media_type(media)
        if media:
            ranges.append((-_quality(params), position, media))
    refused = {media for quality, _, media in ranges if quality == 0}
    for quality, _, media in sorted(ranges):
        if quality == 0:
            break
        for candidate in _candidates(media, default):
            if candidate not in refused:
                return candidate
    raise NotAcceptable(f"cannot answer Accept {accept_header!r}; supported: {', '.join(ENCODABLE)}")


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value)
            except ValueError:
                return 1.0
            return quality if 0.0 <= quality <= 1.0 else 1.0  # lenient: a malformed q counts as 1
    return 1.0


def _candidates(media_range: str, default: str) -> list[str]:
    """Encodable types matching one Accept range, the default first when it matches."""
    preferred = parse_media_type(default)
    if media_range in ("*/*", "*"):  # a bare '*' is sent by some HTTP clients (Java's default Accept)
        matches = list(ENCODABLE)
    elif media_range.endswith("/*"):
        matches = [media for media in ENCODABLE if media.startswith(media_range[:-1])]
    else:
        return [media_range] if media_range in _ENCODERS else []
    if preferred in matches:
        matches.remove(preferred)
        matches.insert(0, preferred)
    return matches


def _negotiated_default(default: str) -> str:
    media = parse_media_type(default)
    if media is None or media not in _ENCODERS:
        raise NotAcceptable(f"the default Accept {default!r} is not supported; supported: {', '.join(ENCODABLE)}")
    return media
